#!/usr/bin/env bash
# Runs the CLEVRER decode benchmark (needs the `video` feature and FFmpeg's
# development packages, see tools/test.sh) and saves its raw output under benches/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benches/results/clevrer_decode-$(date -u +%Y-%m-%d).txt"
cargo bench --features video --bench clevrer_decode 2>/dev/null | tee "$out"
echo "saved $out"
