#!/usr/bin/env bash
# simclr-train under torchrun, e.g. two nodes of 8 GPUs. Run the same command on every node,
# changing only NODE_RANK. torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
# MASTER_PORT for each process; simclr-train reads them (its rank 0 listens on MASTER_PORT + 1,
# because torchrun's own store holds MASTER_PORT). --no-python runs our binary directly.
#
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 bash tools/cluster/torchrun.sh --processed_dir data/clevrer
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=1 bash tools/cluster/torchrun.sh --processed_dir data/clevrer
set -euo pipefail
cd "$(dirname "$0")/../.."
SIMCLR_TRAIN="${SIMCLR_TRAIN:-target/release/simclr-train}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi -L | grep -c '^GPU')}"

exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --no-python "$SIMCLR_TRAIN" --ddp --device cuda --base_model resnet18 --batch_size 256 --lr 3e-4 "$@"
