#!/usr/bin/env bash
# Runs the training-step benchmark and saves its raw output under benches/results/
# with the machine, date and commit (the benchmark prints them in its header).
# Takes about 1–3 minutes on a 2-core machine; run it when nothing else is.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benches/results/train_step-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD).txt"
cargo bench --bench train_step 2>/dev/null | tee "$out"
echo "saved $out"
