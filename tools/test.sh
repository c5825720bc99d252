#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the build needs,
# then runs `cargo test --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust from https://rustup.rs (stable, 1.85 or newer) and re-run." >&2
    exit 1
fi
# The default features need no system libraries (no CUDA, no FFmpeg): a C
# compiler is all the dependency build scripts use.
if ! command -v cc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev
    else
        echo "error: no C compiler (cc) found; install gcc or clang." >&2
        exit 1
    fi
fi

cargo test --release "$@"
