#!/usr/bin/env bash
# Data-parallel SimCLR training on every GPU of this machine (the baseline's train_ddp.sh):
# ResNet-18 at the baseline's defaults, batch 256 global (split over the GPUs), lr 3e-4 per GPU
# scaled linearly with their number. simclr-train --ddp starts one process per GPU itself.
#
#   PROCESSED_DIR=data/bouncing bash tools/cluster/train_ddp.sh
#   bash tools/cluster/train_ddp.sh --epochs 10 --out runs/short       # any flag overrides
#   bash tools/cluster/train_ddp.sh --device cpu --num_gpus 2          # CPU processes instead
#
# Environment: PROCESSED_DIR (default data/processed), NUM_GPUS (default: all visible GPUs),
# SIMCLR_TRAIN (the binary; default target/release/simclr-train, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/cluster/common.sh

exec "$SIMCLR_TRAIN" --ddp --device "$DEVICE" --num_gpus "$NUM_GPUS" \
    --processed_dir "${PROCESSED_DIR:-data/processed}" \
    --base_model resnet18 --batch_size 256 --epochs 100 --lr 3e-4 --out runs/resnet18_ddp "$@"
