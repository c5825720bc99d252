#!/usr/bin/env python3
"""PyTorch (cuDNN) reference timings for benches/conv_kernels.rs.

Every distinct conv layer shape of ResNet-18 and ResNet-50 at 128x128 and 224x224, batch 640
(32 clips x 20 frames; see the bench's doc), bf16, channels_last, torch.backends.cudnn.benchmark
= True. Forward (F.conv2d), input gradient and weight gradient
(torch.ops.aten.convolution_backward with output_mask [True, False, False] / [False, True, False])
are timed separately: CUDA events, median of 20 after 3 warm-up calls (which also let cuDNN's
autotuner pick its algorithm). Case names match the bench's: conv/{h}x{w}x{c}->{k}/{r}x{s}s{stride}/n{n}.
Note: cuDNN's weight gradient is written in bf16; ours in f32 (the master weights' type).

Usage: python3 tools/gpu/torch_conv.py --out torch_conv.json [--batch 640]
"""
import argparse
import json

import torch

import torch.nn.functional as F
from torch_timing import median_ms  # beside this script, in tools/gpu/


def resnet_layers(depth, size, batch):
    """(n, h, c, k, r, stride, pad) of each distinct conv layer, as benches/conv_kernels.rs lists them."""
    blocks, bottleneck = ([2, 2, 2, 2], False) if depth == 18 else ([3, 4, 6, 3], True)
    layers = []

    def add(h, c, k, r, stride, pad):
        shape = (batch, h, c, k, r, stride, pad)
        if shape not in layers:
            layers.append(shape)
        return (h + 2 * pad - r) // stride + 1

    stem = add(size, 3, 64, 7, 2, 3)
    h = (stem + 2 - 3) // 2 + 1
    cin = 64
    for stage, n_blocks in enumerate(blocks):
        planes = 64 << stage
        for b in range(n_blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                add(h, cin, planes, 1, 1, 0)
                o = add(h, planes, planes, 3, stride, 1)
                add(o, planes, 4 * planes, 1, 1, 0)
                cout = 4 * planes
            else:
                o = add(h, cin, planes, 3, stride, 1)
                add(o, planes, planes, 3, 1, 1)
                cout = planes
            if stride != 1 or cin != cout:
                add(h, cin, cout, 1, stride, 0)
            h, cin = o, cout
    return layers


def case_name(n, h, c, k, r, stride):
    return f"conv/{h}x{h}x{c}->{k}/{r}x{r}s{stride}/n{n}"



def time_case(n, h, c, k, r, stride, pad):
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(n, c, h, h, device=dev, dtype=dt).to(memory_format=torch.channels_last)
    w = torch.randn(k, c, r, r, device=dev, dtype=dt).to(memory_format=torch.channels_last)
    y = F.conv2d(x, w, stride=stride, padding=pad)
    dy = torch.randn_like(y).contiguous(memory_format=torch.channels_last)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, mask
        )

    with torch.no_grad():
        fwd = median_ms(lambda: F.conv2d(x, w, stride=stride, padding=pad))
        dgrad = median_ms(lambda: backward([True, False, False]))
        wgrad = median_ms(lambda: backward([False, True, False]))
    return fwd, dgrad, wgrad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--batch", type=int, default=640, help="images per launch (32 clips x 20 frames)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    results = {}
    for size in (128, 224):
        for depth in (18, 50):
            for n, h, c, k, r, stride, pad in resnet_layers(depth, size, args.batch):
                name = case_name(n, h, c, k, r, stride)
                if name in results:
                    continue
                fwd, dgrad, wgrad = time_case(n, h, c, k, r, stride, pad)
                flops = 2.0 * n * ((h + 2 * pad - r) // stride + 1) ** 2 * k * r * r * c
                results[name] = {"fwd_ms": fwd, "dgrad_ms": dgrad, "wgrad_ms": wgrad}
                tf = [flops / t / 1e9 for t in (fwd, dgrad, wgrad)]
                print(f"{name:<42} fwd {fwd:7.3f} ms {tf[0]:6.1f} TF/s  dgrad {dgrad:7.3f} ms {tf[1]:6.1f} TF/s  "
                      f"wgrad {wgrad:7.3f} ms {tf[2]:6.1f} TF/s", flush=True)
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {len(results)} cases to {args.out}")


if __name__ == "__main__":
    main()
