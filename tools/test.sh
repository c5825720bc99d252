#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the build needs,
# then runs `cargo test --release --features video,cuda,nccl`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust from https://rustup.rs (stable, 1.89 or newer: the AVX-512 kernels need it) and re-run." >&2
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
# The `video` feature (CLEVRER preprocessing, tests/clevrer.rs) links the system
# FFmpeg through ffmpeg-next, whose build needs FFmpeg's headers, pkg-config and
# libclang (bindgen).
video_packages="libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev clang libclang-dev pkg-config"
have_video_deps() {
    command -v pkg-config >/dev/null 2>&1 &&
        pkg-config --exists libavcodec libavformat libavutil libswscale libavfilter libavdevice libswresample &&
        { ldconfig -p 2>/dev/null | grep 'libclang[-.0-9]*\.so' >/dev/null; }
}
if ! have_video_deps; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $video_packages
    else
        echo "error: the video feature needs FFmpeg's development files; install: $video_packages" >&2
        echo "       (or run \`cargo test --release\` to test without CLEVRER preprocessing)" >&2
        exit 1
    fi
fi

# The `cuda` feature: build.rs compiles kernels/*.cu with nvcc (a pip-packaged CUDA 13.0
# compiler; no GPU or CUDA toolkit needed) and, for the kernel emulator the parity tests run
# here, with the C++ compiler. The GPU halves of those tests are #[ignore]d (tools/gpu/).
if ! command -v c++ >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends g++
    else
        echo "error: no C++ compiler (c++) found; install g++ (the CUDA kernel emulator needs C++20)." >&2
        exit 1
    fi
fi
NVCC="$(bash tools/install_nvcc.sh)"
export NVCC

# The README's other command, `cargo run --release`, builds with the default features (no CUDA,
# no FFmpeg): build that configuration too, so a change that only breaks it cannot pass.
cargo build --release --bins
cargo test --release --features video,cuda,nccl "$@"
