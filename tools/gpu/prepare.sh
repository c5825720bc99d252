#!/usr/bin/env bash
# Step 1 of a GPU session, on the development machine (no GPU, no CUDA toolkit needed):
# builds everything with --features cuda,nccl and copies what the GPU machine runs into .gpu/
# (ignored by git), which the device tool carries:
#
#   .gpu/executables.tar.xz   stripped, packed:
#       bin/          release binaries (simclr-train, simclr-eval, simclr-data)
#       tests/        the test executables that need a GPU (cuda_parity, cuda_ops, nccl)
#       benches/      the CUDA benchmark executables and allreduce_buckets (NCCL at world size 1)
#   .gpu/tools/       the scripts and PyTorch references run there
#   .gpu/commit       the commit (and whether the tree was dirty) the binaries come from
#
# Then call the device tool with carry [".gpu"] and the command `bash .gpu/tools/run.sh`
# (tools/gpu/run.sh); it writes its logs under $OUT. Default features only besides
# `cuda`: nothing carried links FFmpeg (the GPU machine has no FFmpeg libraries).
set -euo pipefail
cd "$(dirname "$0")/../.."

grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/bin .gpu/tests .gpu/benches .gpu/tools

cargo build --release --features cuda,nccl --bins
cp target/release/simclr-train target/release/simclr-eval target/release/simclr-data .gpu/bin/

# Test and bench executables: their paths come from cargo's JSON messages. (`cargo bench`
# builds optimised already and refuses --release.)
executables() {
    cargo "$@" --features cuda,nccl --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        print(m["target"]["name"], m["executable"])
'
}
# Only the tests that need the GPU machine: the rest run in CI here.
executables test --release --test cuda_parity --test cuda_ops --test nccl | while read -r name path; do cp "$path" ".gpu/tests/$name"; done
for bench in cuda_kernels conv_kernels attention_kernels allreduce_buckets gpu_train_step; do
    executables bench --bench "$bench" | while read -r name path; do cp "$path" ".gpu/benches/$name"; done
done

for exe in .gpu/bin/* .gpu/tests/* .gpu/benches/*; do
    if ldd "$exe" | grep -q -E 'libav|libsw'; then
        echo "error: $exe links FFmpeg; build the GPU binaries without --features video" >&2
        exit 1
    fi
done
# The device tool carries at most 64 MiB: strip the debug info and pack the executables
# (≈145 MB stripped, ≈20 MB as .tar.xz); run.sh unpacks them there.
strip .gpu/bin/* .gpu/tests/* .gpu/benches/*
tar -C .gpu -cf - bin tests benches | xz -T0 -6 > .gpu/executables.tar.xz
rm -rf .gpu/bin .gpu/tests .gpu/benches
cp tools/gpu/run.sh tools/gpu/torch_timing.py tools/gpu/torch_kernels.py tools/gpu/torch_conv.py tools/gpu/torch_attention.py .gpu/tools/
{ git rev-parse --short HEAD; git status --porcelain | grep -q . && echo "(uncommitted changes)" || true; } > .gpu/commit
du -sh .gpu
echo "ready: device run with carry [\".gpu\"] and command: bash .gpu/tools/run.sh"
