#!/usr/bin/env bash
# Step 2 of a GPU session, on the GPU machine (carried there in .gpu/ by tools/gpu/prepare.sh).
# Runs, in order, logging each step under $OUT (the device tool brings $OUT back):
#   1. the GPU facts (nvidia-smi, driver, compute-sanitizer availability);
#   2. the CUDA parity tests on the real GPU (the #[ignore]d `gpu` tests) and then the
#      emulated ones too, so a GPU-only failure is told apart from a kernel bug;
#   3. compute-sanitizer memcheck over the GPU parity tests;
#   4. nccl: the NCCL communicator at world size 1 (tests/nccl.rs);
#   5. bench / conv / attention: the PyTorch reference timings (tools/gpu/torch_*.py ->
#      $OUT/torch_*.json) and our benchmarks, which print ratios against them;
#   6. torch_reference (only when named; ~5 min): the PyTorch reference of a whole SimCLR training
#      step (tools/torch_reference/bench_step.py) on bouncing-ball shards made by our simclr-data:
#      --check, then eager and torch.compile runs of resnet18 and vivit_small at batch 256,
#      20 frames, 128x128 -> $OUT/torch_reference.jsonl (one JSON line per run) and .txt (log).
#      TORCH_REF_MODELS / TORCH_REF_MODES / TORCH_REF_STEPS / TORCH_REF_WARMUP override its defaults;
#   7. allreduce: the per-step cost of the bucketed gradient all-reduce, after and overlapped
#      with backward (benches/allreduce_buckets.rs: 2 thread ranks on the CPU, then NCCL at
#      world size 1; ~1 min);
#   8. ops: every tensor op on CUDA tensors vs the CPU through autograd (tests/cuda_ops --ignored);
#   9. train (after torch_reference, only when named): benches/gpu_train_step.rs, our whole training
#      step on the GPU, with clips/s ratios against $OUT/torch_reference.jsonl.
# Every step runs with the CUDA 13 libraries of the machine's python on the library path (pip
# wheels: site-packages/nvidia/cu13/lib for cuBLAS/cuBLASLt, nvidia/nccl/lib for NCCL; cudarc opens
# them by name only, and no system toolkit registers them); SIMCLR_CUDA_LIB_DIRS (colon-separated)
# replaces that search. `facts` says which of libcuda, libcublas, libcublasLt and libnccl were found
# and where.
# The device lends 15 minutes a session: name the steps that matter most first, e.g.
#   bash .gpu/tools/run.sh facts parity conv attention
# Usage: bash .gpu/tools/run.sh [steps...]
#   (steps: facts parity ops sanitizer nccl bench conv attention allreduce torch_reference train;
#    default all but torch_reference and train)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/simclr-gpu-out}"
mkdir -p "$OUT"
steps="${*:-facts parity ops sanitizer nccl bench conv attention allreduce}"
status=0
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
# The library folders of the pip-installed NVIDIA wheels (nvidia/*/lib) of python3.
cuda_lib_dirs() {
    if [ -n "${SIMCLR_CUDA_LIB_DIRS:-}" ]; then echo "$SIMCLR_CUDA_LIB_DIRS"; return; fi
    python3 -c '
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = sorted({d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "lib"))})
print(":".join(dirs))' 2>/dev/null || true
}
# pip's NCCL ships libnccl.so.2 only, and cudarc looks for libnccl.so: a link in a folder of ours.
nccl_link_dir=/tmp/simclr-nccl-lib
mkdir -p "$nccl_link_dir"
lib_dirs="$(cuda_lib_dirs)"
for dir in ${lib_dirs//:/ }; do
    if [ -e "$dir/libnccl.so.2" ]; then ln -sf "$dir/libnccl.so.2" "$nccl_link_dir/libnccl.so"; fi
done
export LD_LIBRARY_PATH="$nccl_link_dir${lib_dirs:+:$lib_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Where the dynamic loader would find a library: the first LD_LIBRARY_PATH folder that has it, else
# the loader cache.
find_library() {
    local name="$1" dir
    for dir in ${LD_LIBRARY_PATH//:/ }; do
        for f in "$dir/$name" "$dir/$name".*; do
            if [ -L "$f" ]; then echo "$f -> $(readlink -f "$f")"; return 0; fi
            if [ -e "$f" ]; then echo "$f"; return 0; fi
        done
    done
    ldconfig -p 2>/dev/null | awk -v n="$name" '$1 ~ "^"n {print $NF; found=1; exit} END {exit !found}'
}
library_facts() {
    local lib where
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for lib in libcuda.so libcublas.so libcublasLt.so libnccl.so; do
        if where="$(find_library "$lib")"; then echo "library $lib: $where"; else echo "library $lib: NOT FOUND"; fi
    done
}

# prepare.sh packs the executables (the carry limit is 64 MiB); unpack them once.
if [ -f .gpu/executables.tar.xz ] && [ ! -d .gpu/tests ]; then
    python3 -c 'import tarfile; tarfile.open(".gpu/executables.tar.xz").extractall(".gpu")' || { echo "cannot unpack .gpu/executables.tar.xz"; exit 1; }
    chmod +x .gpu/bin/* .gpu/tests/* .gpu/benches/*
fi

for s in $steps; do
    case "$s" in
    facts)
        step facts
        { cat .gpu/commit; library_facts; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
          command -v compute-sanitizer; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; } 2>&1 | tee "$OUT/facts.txt"
        ;;
    parity)
        step "parity tests on the GPU"
        .gpu/tests/cuda_parity --ignored --test-threads 1 2>&1 | tee "$OUT/parity_gpu.txt" || status=1
        step "parity tests on the emulator (same machine)"
        .gpu/tests/cuda_parity --test-threads 4 2>&1 | tail -n 30 | tee "$OUT/parity_emulated.txt" || status=1
        ;;
    ops)
        step "tensor ops on the GPU vs the CPU, through autograd (tests/cuda_ops)"
        .gpu/tests/cuda_ops --ignored --test-threads 1 2>&1 | tee "$OUT/cuda_ops_gpu.txt" || status=1
        ;;
    train)
        step "training step: ours (benches/gpu_train_step.rs) vs the PyTorch reference in the same run"
        ref_steps="$OUT/torch_reference.jsonl"
        [ -s "$ref_steps" ] || echo "no $ref_steps: run the torch_reference step first for the ratios"
        SIMCLR_TORCH_REFERENCE_STEPS="$ref_steps" .gpu/benches/gpu_train_step 2>&1 | tee "$OUT/gpu_train_step.txt" || status=1
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
        .gpu/tests/nccl --ignored --test-threads 1 2>&1 | tee "$OUT/nccl.txt" || status=1
        ;;
    allreduce)
        step "bucketed all-reduce: after vs overlapped with backward (CPU threads, then NCCL world size 1)"
        .gpu/benches/allreduce_buckets 2>&1 | tee "$OUT/allreduce_buckets.txt" || status=1
        ;;
    torch_reference)
        step "PyTorch reference SimCLR training step (tools/torch_reference)"
        log="$OUT/torch_reference.txt"; results="$OUT/torch_reference.jsonl"; : > "$results"
        data_bin=.gpu/bin/simclr-data; [ -x "$data_bin" ] || data_bin=target/release/simclr-data
        data_dir=/tmp/simclr-torch-reference-shards
        # 256 clips x 20 frames x 128 px (252 MB, a few seconds): one batch of 256 distinct clips.
        "$data_bin" bouncing --out "$data_dir" --clips 256 --frames 20 --size 128 --seed 0 2>&1 | tail -n 2 | tee "$log"
        if [ ! -f "$data_dir/manifest.json" ]; then
            echo "no shards in $data_dir (is $data_bin there? run tools/gpu/prepare.sh)" | tee -a "$log"; status=1
        else
            ref=tools/torch_reference/bench_step.py
            # Every model once at tiny sizes on the GPU (bf16, SDPA kernels): finite, decreasing loss.
            PYTHONUNBUFFERED=1 timeout 300 python3 "$ref" --check --device cuda --processed_dir "$data_dir" \
                2>&1 | tee -a "$log" || status=1
            for model in ${TORCH_REF_MODELS:-resnet18 vivit_small}; do
                for mode in ${TORCH_REF_MODES:-eager compile}; do
                    echo "--- $model $mode ($(date -u +%H:%M:%S))" | tee -a "$log"
                    timeout 420 python3 "$ref" --processed_dir "$data_dir" --base_model "$model" \
                        --batch_size 256 --frames 20 --size 128 --steps "${TORCH_REF_STEPS:-5}" \
                        --warmup "${TORCH_REF_WARMUP:-2}" --mode "$mode" --device cuda \
                        > /tmp/simclr-torch-ref.out 2> /tmp/simclr-torch-ref.err
                    rc=$?
                    tee -a "$results" "$log" < /tmp/simclr-torch-ref.out
                    tail -n 40 /tmp/simclr-torch-ref.err | tee -a "$log"
                    if [ $rc -ne 0 ]; then
                        status=1
                        [ $rc -eq 124 ] && echo "{\"model\": \"$model\", \"mode\": \"$mode\", \"error\": \"timed out after 420 s\"}" | tee -a "$results" "$log"
                    fi
                done
            done
        fi
        ;;
    *) echo "unknown step $s (facts parity ops sanitizer nccl bench conv attention allreduce torch_reference train)"; status=2 ;;
    esac
done
echo; echo "run.sh finished with status $status; logs in $OUT"
exit $status
