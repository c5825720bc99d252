#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler (nvcc + ptxas + headers) from PyPI into a private
# virtual environment, for building with `--features cuda` on a machine without a
# CUDA toolkit. Prints the nvcc path on its last line; build.rs finds it there
# without any environment variable.
#
# The pins matter: unpinned, pip pulls nvvm 13.5, whose PTX (.version 9.5) the
# 13.0 ptxas and the GPU machines' 13.0 driver reject (docs/ARCHITECTURE.md,
# "CUDA toolchain").
#
#   bash tools/install_nvcc.sh            # installs (≈300 MB, about a minute) or reuses
#   SIMCLR_NVCC_HOME=/opt/nvcc bash tools/install_nvcc.sh
set -euo pipefail

home="${SIMCLR_NVCC_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/simclr/nvcc-13.0}"
pins="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"

find_nvcc() { ls "$home"/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1; }

nvcc="$(find_nvcc || true)"
if [ -z "$nvcc" ] || ! "$nvcc" --version >/dev/null 2>&1; then
    # shellcheck source=tools/python_venv.sh
    source "$(dirname "$0")/python_venv.sh"
    echo "installing the CUDA 13.0 compiler into $home (pip, ≈300 MB)..." >&2
    rm -rf "$home/venv"
    mkdir -p "$home"
    python3 -m venv "$home/venv"
    # shellcheck disable=SC2086
    "$home/venv/bin/pip" install --quiet --disable-pip-version-check $pins
    nvcc="$(find_nvcc)"
fi
"$nvcc" --version | tail -n 2 >&2
echo "$nvcc"
