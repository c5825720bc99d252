#!/usr/bin/env python3
"""PyTorch reference timings for the CUDA kernel benchmark (benches/cuda_kernels.rs).

Runs on the GPU machine, before the Rust benchmark in the same call (tools/gpu/run.sh), and
writes {case name: {"ms": median milliseconds, ...}} to --out. The Rust benchmark reads the
file and prints its own time as a ratio to these. Case names carry the shape and must match
the benchmark's (same list, same order, kept in both files).

Timing: CUDA events around each repetition after warm-up, the median of the repetitions;
inputs are random (never zeros), rotated across several copies when they fit in L2.
"""
import argparse
import json

import torch

import torch.nn.functional as F
from torch_timing import median_ms  # beside this script, in tools/gpu/



def copy_bandwidth():
    n = 1 << 28  # 1 GiB of f32: far beyond L2
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return {"ms": ms, "bytes": 2 * 4 * n, "gbps": 2 * 4 * n / ms / 1e6}


LAYER_NORM_SHAPES = [(65536, 192), (32768, 384), (16384, 768), (8192, 1000)]


def layer_norm(rows, cols, dtype):
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    w = torch.randn(cols, device="cuda", dtype=dtype)
    b = torch.randn(cols, device="cuda", dtype=dtype)
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [cols], w, b, 1e-5)
    fwd = median_ms(lambda: torch.ops.aten.native_layer_norm(x, [cols], w, b, 1e-5))
    bwd = median_ms(
        lambda: torch.ops.aten.native_layer_norm_backward(dy, x, [cols], mean, rstd, w, b, [True, True, True])
    )
    return {"fwd_ms": fwd, "bwd_ms": bwd, "ms": fwd + bwd}


def nt_xent_composition(z, tau):
    """The baseline's loss: normalise, similarity matrix, mask the diagonal, cross-entropy."""
    n2 = z.shape[0]
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.t() / tau
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    targets = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(sim, targets)


NT_XENT_ROWS = [512, 2048, 8192]


def nt_xent(rows, dim=128, tau=0.5):
    z = torch.randn(rows, dim, device="cuda", requires_grad=True)

    def step():
        z.grad = None
        nt_xent_composition(z, tau).backward()

    out = {"ms": median_ms(step)}
    compiled = torch.compile(nt_xent_composition)

    def step_compiled():
        z.grad = None
        compiled(z, tau).backward()

    try:
        out["compiled_ms"] = median_ms(step_compiled, warmup=10)
    except Exception as e:  # torch.compile needs a working Triton; report rather than fail
        out["compiled_error"] = str(e)[:200]
    return out


SOFTMAX_SHAPES = [(16384, 1024), (65536, 197)]


def softmax(rows, cols, dtype):
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    y = torch.softmax(x, -1)
    fwd = median_ms(lambda: torch.softmax(x, -1))
    bwd = median_ms(lambda: torch.ops.aten._softmax_backward_data(dy, y, -1, dtype))
    return {"fwd_ms": fwd, "bwd_ms": bwd, "ms": fwd + bwd}


BATCH_NORM_SHAPES = [(256, 64, 32, 32), (256, 256, 8, 8)]


def batch_norm(n, c, h, w):
    x = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
    bn = torch.nn.BatchNorm2d(c).cuda()
    dy = torch.randn_like(x)

    def step():
        x.grad = None
        bn(x).backward(dy)

    return {"ms": median_ms(step)}


def adamw_resnet18():
    import torchvision

    params = [p for p in torchvision.models.resnet18().cuda().parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {"numel": sum(p.numel() for p in params), "tensors": len(params)}
    for name, kw in [("foreach", {"foreach": True}), ("fused", {"fused": True})]:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **kw)
        out[f"{name}_ms"] = median_ms(opt.step)
    out["ms"] = out["fused_ms"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["copy"] = copy_bandwidth()
    for dtype, tag in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        for rows, cols in LAYER_NORM_SHAPES:
            results[f"layer_norm/{tag}/{rows}x{cols}"] = layer_norm(rows, cols, dtype)
        for rows, cols in SOFTMAX_SHAPES:
            results[f"softmax/{tag}/{rows}x{cols}"] = softmax(rows, cols, dtype)
    for rows in NT_XENT_ROWS:
        results[f"nt_xent/f32/{rows}x128"] = nt_xent(rows)
    for shape in BATCH_NORM_SHAPES:
        results["batch_norm/f32/" + "x".join(map(str, shape))] = batch_norm(*shape)
    results["adamw/f32/resnet18"] = adamw_resnet18()
    for k, v in results.items():
        print(k, v)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
