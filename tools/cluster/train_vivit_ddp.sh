#!/usr/bin/env bash
# Data-parallel ViViT-small training on every GPU of this machine (the baseline's
# train_vivit_ddp.sh): batch 128 global, lr 1e-4 per GPU scaled with their number.
#
#   PROCESSED_DIR=data/clevrer bash tools/cluster/train_vivit_ddp.sh
#   bash tools/cluster/train_vivit_ddp.sh --base_model vivit_tiny --epochs 20
#
# Environment: as tools/cluster/train_ddp.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/cluster/common.sh

exec "$SIMCLR_TRAIN" --ddp --device "$DEVICE" --num_gpus "$NUM_GPUS" \
    --processed_dir "${PROCESSED_DIR:-data/processed}" \
    --base_model vivit_small --batch_size 128 --epochs 100 --lr 1e-4 --out runs/vivit_small_ddp "$@"
