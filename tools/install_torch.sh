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
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
        else
            echo "error: python3's venv module is missing; install python3-venv" >&2
            exit 1
        fi
    fi
    echo "installing PyTorch into $home (pip, ≈3 GB)..." >&2
    rm -rf "$home"
    python3 -m venv "$home"
    "$home/bin/pip" install --quiet --disable-pip-version-check torch
fi
"$home/bin/python" -c 'import torch; print("torch", torch.__version__)' >&2
echo "$home/bin"
