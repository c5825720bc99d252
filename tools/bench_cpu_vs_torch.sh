#!/usr/bin/env bash
# Our CPU training step beside PyTorch's, same models, same shapes, same machine, one invocation:
# benches/train_step.rs and tools/torch_reference/bench_cpu_step.py (PyTorch eager f32, and
# torch.compile where it works), for the demo model, full-width resnet18 (20 x 64²) and
# vivit_tiny (8 x 64²). Each case runs ROUNDS times, ours and PyTorch's alternating, so a change
# in the machine's load hits both; the table gives medians over rounds and the spread.
# Where the CPU has AVX512-BF16 (or with BF16=1), also both under bf16 autocast: ours with
# SIMCLR_BENCH_PRECISION=bf16 (`--precision bf16`), PyTorch eager in torch.autocast("cpu").
# Installs PyTorch into ~/.cache/simclr/torch-venv first if it is missing (tools/install_torch.sh).
# Raw output: benches/results/cpu_vs_torch-<date>-<commit>.txt. About 10 minutes on 2 cores.
#
#   bash tools/bench_cpu_vs_torch.sh
#   CASES=demo ROUNDS=5 COMPILE=0 BF16=0 bash tools/bench_cpu_vs_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${CASES:-demo,resnet18,vivit_tiny}"
rounds="${ROUNDS:-3}"
compile="${COMPILE:-1}"
bf16="${BF16:-$(grep -q -m1 -w avx512_bf16 /proc/cpuinfo && echo 1 || echo 0)}"
venv_bin="$(bash tools/install_torch.sh | tail -n 1)"
out="benches/results/cpu_vs_torch-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD).txt"
raw="$(mktemp)"
trap 'rm -f "$raw"' EXIT

cargo bench --bench train_step --no-run 2>/dev/null
{
    echo "# CPU training step, simclr vs PyTorch, same machine, same shapes, $rounds rounds alternating"
    echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), nproc $(nproc)"
    echo "# flags: $(grep -m1 -o -w -E 'avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml || echo ' (uncommitted changes)')"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$raw"
for round in $(seq "$rounds"); do
    for case in ${cases//,/ }; do
        echo "## round $round, $case" | tee -a "$raw"
        SIMCLR_BENCH_CASES="$case" cargo bench --bench train_step 2>/dev/null | tee -a "$raw"
        "$venv_bin/python" -W ignore::UserWarning tools/torch_reference/bench_cpu_step.py --cases "$case" | tee -a "$raw"
        if [ "$compile" = 1 ]; then
            "$venv_bin/python" -W ignore::UserWarning tools/torch_reference/bench_cpu_step.py --cases "$case" --compile 2>&1 | tee -a "$raw"
        fi
        if [ "$bf16" = 1 ]; then
            SIMCLR_BENCH_PRECISION=bf16 SIMCLR_BENCH_CASES="$case" cargo bench --bench train_step 2>/dev/null | tee -a "$raw"
            "$venv_bin/python" -W ignore::UserWarning tools/torch_reference/bench_cpu_step.py --cases "$case" --bf16 | tee -a "$raw"
        fi
    done
done

# The table: per case and runner, medians over rounds of clips/s and the phase split, the
# spread of clips/s, and ours / torch.
"$venv_bin/python" - "$raw" <<'EOF' | tee -a "$raw"
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        _, runner, case, *v = line.split()
        rows[(case, runner)].append([float(x) for x in v])
print("\n## summary: medians over rounds (clips/s spread = min..max over rounds)")
print("# ours/this: our f32 step against this runner; bf16/this: our bf16-autocast step against it")
print(f"{'case':<11} {'runner':<17} {'clips/s':>9} {'spread':>15} {'fwd s':>8} {'bwd s':>8} {'opt s':>8} {'ours/this':>10} {'bf16/this':>10}")
cases = sorted({c for c, _ in rows}, key=["demo", "resnet18", "vivit_tiny"].index)
for case in cases:
    ours = statistics.median(r[0] for r in rows.get((case, "simclr"), [[float("nan")]]))
    ours_bf16 = statistics.median(r[0] for r in rows.get((case, "simclr-bf16"), [[float("nan")]]))
    for runner in ["simclr", "torch-eager", "torch-compile", "simclr-bf16", "torch-eager-bf16"]:
        runs = rows.get((case, runner))
        if not runs:
            continue
        med = [statistics.median(r[i] for r in runs) for i in range(4)]
        spread = f"{min(r[0] for r in runs):.2f}..{max(r[0] for r in runs):.2f}"
        ratio = "" if runner == "simclr" else f"{ours / med[0]:.2f}"
        ratio_bf16 = "" if runner == "simclr-bf16" or ours_bf16 != ours_bf16 else f"{ours_bf16 / med[0]:.2f}"
        print(f"{case:<11} {runner:<17} {med[0]:>9.2f} {spread:>15} {med[1]:>8.3f} {med[2]:>8.3f} {med[3]:>8.3f} {ratio:>10} {ratio_bf16:>10}")
EOF
cp "$raw" "$out"
echo "saved $out"
