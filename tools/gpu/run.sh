#!/usr/bin/env bash
# Step 2 of a GPU session, on the GPU machine (carried there in .gpu/ by tools/gpu/prepare.sh).
# Runs, in order, logging each step under $OUT (the device tool brings $OUT back):
#   1. the GPU facts (nvidia-smi, driver, compute-sanitizer availability);
#   2. the CUDA parity tests on the real GPU (the #[ignore]d `gpu` tests) and then the
#      emulated ones too, so a GPU-only failure is told apart from a kernel bug;
#   3. compute-sanitizer memcheck over the GPU parity tests;
#   4. nccl: the NCCL communicator at world size 1 (tests/nccl.rs);
#   5. bench / conv / attention: the PyTorch reference timings (tools/gpu/torch_*.py ->
#      $OUT/torch_*.json) and our benchmarks, which print ratios against them.
# The device lends 15 minutes a session: name the steps that matter most first, e.g.
#   bash .gpu/tools/run.sh facts parity conv attention
# Usage: bash .gpu/tools/run.sh [steps...]   (steps: facts parity sanitizer nccl bench conv attention; default all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/simclr-gpu-out}"
mkdir -p "$OUT"
steps="${*:-facts parity sanitizer nccl bench conv attention}"
status=0
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

# prepare.sh packs the executables (the carry limit is 64 MiB); unpack them once.
if [ -f .gpu/executables.tar.xz ] && [ ! -d .gpu/tests ]; then
    python3 -c 'import tarfile; tarfile.open(".gpu/executables.tar.xz").extractall(".gpu")' || { echo "cannot unpack .gpu/executables.tar.xz"; exit 1; }
    chmod +x .gpu/bin/* .gpu/tests/* .gpu/benches/*
fi

for s in $steps; do
    case "$s" in
    facts)
        step facts
        { cat .gpu/commit; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
          command -v compute-sanitizer; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; } 2>&1 | tee "$OUT/facts.txt"
        ;;
    parity)
        step "parity tests on the GPU"
        .gpu/tests/cuda_parity --ignored --test-threads 1 2>&1 | tee "$OUT/parity_gpu.txt" || status=1
        step "parity tests on the emulator (same machine)"
        .gpu/tests/cuda_parity --test-threads 4 2>&1 | tail -n 30 | tee "$OUT/parity_emulated.txt" || status=1
        ;;
    sanitizer)
        step "compute-sanitizer memcheck over the GPU parity tests"
        compute-sanitizer --tool memcheck --error-exitcode 3 .gpu/tests/cuda_parity --ignored --test-threads 1 \
            2>&1 | tail -n 60 | tee "$OUT/memcheck.txt" || status=1
        ;;
    bench)
        step "PyTorch reference timings"
        PYTHONUNBUFFERED=1 python3 .gpu/tools/torch_kernels.py --out "$OUT/torch_kernels.json" 2>&1 | tee "$OUT/torch_kernels.txt" || status=1
        step "CUDA kernel benchmark"
        SIMCLR_TORCH_REFERENCE="$OUT/torch_kernels.json" .gpu/benches/cuda_kernels 2>&1 | tee "$OUT/cuda_kernels.txt" || status=1
        ;;
    conv)
        step "PyTorch conv reference timings (cuDNN, channels_last, bf16)"
        PYTHONUNBUFFERED=1 python3 .gpu/tools/torch_conv.py --out "$OUT/torch_conv.json" 2>&1 | tee "$OUT/torch_conv.txt" || status=1
        step "conv kernel benchmark"
        SIMCLR_TORCH_REFERENCE="$OUT/torch_conv.json" .gpu/benches/conv_kernels 2>&1 | tee "$OUT/conv_kernels.txt" || status=1
        ;;
    attention)
        step "PyTorch flash-attention reference"
        PYTHONUNBUFFERED=1 python3 .gpu/tools/torch_attention.py --out "$OUT/torch_attention.json" 2>&1 | tee "$OUT/torch_attention.txt" || status=1
        step "flash-attention benchmark"
        SIMCLR_TORCH_REFERENCE="$OUT/torch_attention.json" .gpu/benches/attention_kernels 2>&1 | tee "$OUT/attention_kernels.txt" || status=1
        ;;
    nccl)
        step "NCCL at world size 1 (collectives + a training run through the same code)"
        # pip's NCCL (PyTorch's dependency) ships libnccl.so.2 only; cudarc looks for libnccl.so.
        nccl_dir="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)"
        mkdir -p /tmp/simclr-nccl-lib
        if [ -n "$nccl_dir" ] && [ -e "$nccl_dir/libnccl.so.2" ]; then ln -sf "$nccl_dir/libnccl.so.2" /tmp/simclr-nccl-lib/libnccl.so; fi
        LD_LIBRARY_PATH="/tmp/simclr-nccl-lib:${nccl_dir}:${LD_LIBRARY_PATH:-}" .gpu/tests/nccl --ignored --test-threads 1 2>&1 | tee "$OUT/nccl.txt" || status=1
        ;;
    *) echo "unknown step $s (facts parity sanitizer nccl bench conv attention)"; status=2 ;;
    esac
done
echo; echo "run.sh finished with status $status; logs in $OUT"
exit $status
