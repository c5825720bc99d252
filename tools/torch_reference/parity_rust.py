#!/usr/bin/env python3
"""Checks that the PyTorch models (models.py) compute what our Rust models compute.

Loads a model file written by `simclr-train` (safetensors; the names match models.py's
`state_dict_rust_names`) into the PyTorch SimClr, encodes a dataset's clips exactly as
`simclr-eval --export-embeddings` does (evaluation mode; the evenly spaced frames; the whole
frame resized with the antialiased filter, no crop, flip or colour change; ImageNet
normalisation), in f32 on the CPU, and compares with the features our binary exported.

  simclr-train --processed_dir D --base_model vivit_tiny --num_frames 2 --image_size 32 \\
      --epochs 1 --batch_size 8 --device cpu --out RUN
  simclr-eval --checkpoint RUN/final_model.safetensors --processed_dir D --export-embeddings RUN/emb.npy
  python3 tools/torch_reference/parity_rust.py --checkpoint RUN/final_model.safetensors \\
      --processed_dir D --embeddings RUN/emb.npy
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import augment as aug  # noqa: E402
from models import SimClr  # noqa: E402
from shards import ShardDataset, evenly_spaced_frames  # noqa: E402

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "BF16": None, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        if DTYPES.get(info["dtype"]) is None:
            raise SystemExit(f"{path}: {name} has dtype {info['dtype']}, not handled here")
        arr = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return meta, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--processed_dir", required=True)
    ap.add_argument("--embeddings", required=True, help="FILE.npy from simclr-eval --export-embeddings")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |difference| / max |feature|")
    args = ap.parse_args()

    meta, weights = read_safetensors(args.checkpoint)
    spec = json.loads(meta["model"])
    model = SimClr(spec["base_model"], spec["num_frames"], spec["image_size"], spec["projection_dim"],
                   spec["temperature"], spec["width"], spec["small_stem"])
    ours = model.state_dict_rust_names()
    missing, extra = sorted(set(ours) - set(weights)), sorted(set(weights) - set(ours))
    if missing or extra:
        raise SystemExit(f"name mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(weights[k.replace("encoder.net.", "encoder.")].reshape(v.shape).to(v.dtype))
    model.eval()

    ds = ShardDataset(args.processed_dir)
    want = np.load(args.embeddings)
    ids = np.load(args.embeddings[:-len(".npy")] + ".ids.npy") if args.embeddings.endswith(".npy") else None
    ids = np.arange(len(want)) if ids is None else ids
    t, s = spec["num_frames"], spec["image_size"]
    clips = torch.from_numpy(ds.clips(ids, evenly_spaced_frames(ds.frames, t)))
    x = aug.to_planar(clips)
    n = len(ids)
    p = torch.zeros(n, aug.NCOLS, dtype=torch.float64)  # whole frame, nothing else
    p[:, aug.CH], p[:, aug.CW] = ds.height, ds.width
    views = aug.crop_resize_flip(x, p, s)
    mean = torch.tensor(aug.MEAN)[:, None, None]
    std = torch.tensor(aug.STD)[:, None, None]
    views = (views - mean) / std
    with torch.no_grad():
        got = model.encoder(views).numpy()
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    ok = err <= args.tolerance * max(scale, 1e-6)
    print(json.dumps({"parity": spec["base_model"], "clips": n, "dim": int(want.shape[1]), "max_abs_diff": err,
                      "max_abs_feature": scale, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
