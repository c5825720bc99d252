# Shared by the launch scripts in tools/cluster/ (sourced, from the repository root): counts the
# GPUs, picks the device, and finds (or builds) simclr-train.

# The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists.
count_gpus() {
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

NUM_GPUS="${NUM_GPUS:-$(count_gpus)}"
DEVICE=cuda
if [ "$NUM_GPUS" = 0 ]; then
    # No GPU: CPU processes, but only if the caller says how many (their flags come after ours and win).
    case " $* " in
    *" --num_gpus "*) DEVICE=cpu; NUM_GPUS=1 ;;
    *)
        echo "error: no GPU found (nvidia-smi lists none). For data-parallel CPU processes, pass" >&2
        echo "       --device cpu --num_gpus N" >&2
        exit 2
        ;;
    esac
fi

SIMCLR_TRAIN="${SIMCLR_TRAIN:-target/release/simclr-train}"
if [ ! -x "$SIMCLR_TRAIN" ]; then
    if [ "$DEVICE" = cuda ]; then
        echo "building simclr-train with the CUDA backend..." >&2
        NVCC="$(bash tools/install_nvcc.sh)" cargo build --release --features cuda --bin simclr-train >&2
    else
        echo "building simclr-train..." >&2
        cargo build --release --bin simclr-train >&2
    fi
fi
