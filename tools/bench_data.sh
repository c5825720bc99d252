#!/usr/bin/env bash
# Runs the data loader benchmark and saves its raw output under benches/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benches/results/data_loader-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD).txt"
cargo bench --bench data_loader 2>/dev/null | tee "$out"
echo "saved $out"
