#!/usr/bin/env bash
# Installs PyTorch from PyPI into a private virtual environment for the tools and tests that
# compare with it (tools/torch_reference, the torchrun test). Prints the venv's bin directory on
# its last line. Never part of the test command: the Linux wheel pulls the CUDA libraries
# (≈3 GB; it still runs on the CPU).
#
#   bash tools/install_torch.sh           # installs (a few minutes) or reuses
#   SIMCLR_TORCH_HOME=/opt/torch bash tools/install_torch.sh
set -euo pipefail

home="${SIMCLR_TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/simclr/torch-venv}"
if ! "$home/bin/python" -c 'import torch' >/dev/null 2>&1; then
    # shellcheck source=tools/python_venv.sh
    source "$(dirname "$0")/python_venv.sh"
    echo "installing PyTorch into $home (pip, ≈3 GB)..." >&2
    rm -rf "$home"
    python3 -m venv "$home"
    "$home/bin/pip" install --quiet --disable-pip-version-check torch
fi
"$home/bin/python" -c 'import torch; print("torch", torch.__version__)' >&2
echo "$home/bin"
