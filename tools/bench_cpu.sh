#!/usr/bin/env bash
# Runs the CPU kernel benchmark and saves its raw output under benches/results/
# with the machine, date and commit (the benchmark prints them in its header).
set -euo pipefail
cd "$(dirname "$0")/.."
out="benches/results/cpu_kernels-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD).txt"
cargo bench --bench cpu_kernels 2>/dev/null | tee "$out"
echo "saved $out"
