#!/usr/bin/env python3
"""Load a simclr-train model file into torchvision's ResNet with strict=True.

    python3 tools/load_in_torchvision.py runs/final_model.safetensors
    python3 tools/load_in_torchvision.py runs/final_model.safetensors --check DATA_DIR EMB.npy

With `--check`, the features simclr-eval exported for DATA_DIR
(`simclr-eval --checkpoint M --processed_dir DATA_DIR --export-embeddings EMB.npy`)
are recomputed by torchvision from the same shards and compared: the same
numbers from both frameworks show the layouts match, not only the names.
(The check needs frames stored at the model's image size, so no resize.)

The encoder's tensors are stored under `encoder.` with torchvision's names
(`encoder.conv1.weight`, `encoder.layer1.0.bn1.running_mean`, ...); the
projection head under `projector.`. SimCLR drops the classifier, so the
script replaces `fc` with Identity (no parameters) before the strict load,
then runs a forward pass to show the features come out.

Needs PyTorch and torchvision (no `safetensors` package: the format is a
little-endian u64 header length, a JSON header, then raw tensor bytes).
Only full-width ResNets with the standard stem match torchvision's layout
(`--width 1.0`, no `--small_stem`).
"""

import json
import struct
import sys

import torch
import torchvision

DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "U8": torch.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = bytearray(data[base + start:base + end])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[info["dtype"]])
        tensors[name] = t.reshape(info["shape"])
    return tensors, meta


def check_features(model, spec, data_dir, emb_path):
    """Recompute simclr-eval's features with torchvision and compare."""
    import numpy as np

    with open(f"{data_dir}/manifest.json") as f:
        manifest = json.load(f)
    t, h, w = manifest["frames"], manifest["height"], manifest["width"]
    size, n = spec["image_size"], spec["num_frames"]
    if (h, w) != (size, size):
        sys.exit(f"--check needs frames stored at the model's {size}x{size} (these are {h}x{w})")
    clips = np.concatenate([np.fromfile(f"{data_dir}/{s['file']}", dtype=np.uint8) for s in manifest["shards"]])
    clips = clips.reshape(manifest["clips"], t, h, w, 3)
    ids = np.load(emb_path[:-len(".npy")] + ".ids.npy")
    expected = np.load(emb_path)
    frames = [k * t // n for k in range(n)]  # evenly spaced, as the Rust loader picks them
    x = torch.from_numpy(clips[ids][:, frames].astype(np.float32) / 255.0)  # [B, n, H, W, 3]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((x - mean) / std).permute(0, 1, 4, 2, 3).reshape(-1, 3, h, w)
    with torch.no_grad():
        got = model(x).reshape(len(ids), n, -1).mean(dim=1).numpy()  # per frame, then the mean over time
    err = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12)
    print(f"features of {len(ids)} clips: max |torchvision - simclr| / max |simclr| = {err:.2e}")
    if err > 1e-4:
        sys.exit("MISMATCH: the weights load but compute something else")


def main():
    if len(sys.argv) not in (2, 5) or (len(sys.argv) == 5 and sys.argv[2] != "--check"):
        sys.exit(__doc__)
    tensors, meta = read_safetensors(sys.argv[1])
    spec = json.loads(meta.get("model", "{}"))
    arch = spec.get("base_model", "")
    if not arch.startswith("resnet"):
        sys.exit(f"{sys.argv[1]}: a {arch or 'unknown'} model; only ResNet encoders map onto torchvision")
    if spec.get("width", 1.0) != 1.0 or spec.get("small_stem", False):
        sys.exit(f"{sys.argv[1]}: width {spec.get('width')} / small_stem {spec.get('small_stem')} differ from "
                 "torchvision's layout; train with --width 1.0 and without --small_stem")
    encoder = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Identity()
    model.load_state_dict(encoder, strict=True)
    model.eval()
    size = spec.get("image_size", 128)
    with torch.no_grad():
        h = model(torch.randn(2, 3, size, size))
    print(f"loaded {len(encoder)} tensors into torchvision.models.{arch} (strict=True); "
          f"features of a [2, 3, {size}, {size}] batch: {tuple(h.shape)}")
    if len(sys.argv) == 5:
        check_features(model, spec, sys.argv[3], sys.argv[4])


if __name__ == "__main__":
    main()
