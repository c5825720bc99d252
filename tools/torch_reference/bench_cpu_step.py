#!/usr/bin/env python3
"""PyTorch side of tools/bench_cpu_vs_torch.sh: benches/train_step.rs's training step, the same
models and shapes, f32 on the CPU, eager (and torch.compile with --compile); with --bf16, eager
under torch.autocast("cpu", dtype=torch.bfloat16), beside our --precision bf16.

One step as ours: zero_grad -> both views through the model as one batch of 2B clips (models.py,
the same architecture and initialisation rules as src/nn) -> NT-Xent -> backward -> Adam (L2
weight decay 1e-6, simclr-train's default). The views are random [B, T, 3, S, S] tensors, as in
our benchmark. One untimed warm-up step (two for torch.compile), then medians over the timed
steps; each model ends with a line

  RESULT torch-<mode> <case> <clips/s> <forward s> <backward s> <optimiser s> <step s> <min s> <max s>

  python3 tools/torch_reference/bench_cpu_step.py --cases demo,resnet18,vivit_tiny [--compile | --bf16]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import SimClr, nt_xent  # noqa: E402

# benches/train_step.rs's cases: model, width, frames, side, batch, lr, temperature, timed steps.
CASES = {
    "demo": ("resnet18", 0.25, 4, 32, 128, 3e-3, 0.2, 5),
    "resnet18": ("resnet18", 1.0, 20, 64, 8, 3e-4, 0.5, 3),
    "vivit_tiny": ("vivit_tiny", 1.0, 8, 64, 8, 3e-4, 0.5, 3),
}


def bench(key, mode):
    name, width, frames, size, batch, lr, tau, steps = CASES[key]
    torch.manual_seed(0)
    model = SimClr(name, frames, size, 128, tau, width, small_stem=False)
    model.train()
    forward = torch.compile(model) if mode == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
    views = torch.randn(2 * batch, frames, 3, size, size)
    warmup = 2 if mode == "compile" else 1
    fwd, bwd, optim, total = [], [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "eager-bf16"):
            loss = nt_xent(forward(views), tau)
        loss_value = loss.item()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            optim.append(t3 - t2)
            total.append(t3 - t0)
    if not torch.isfinite(torch.tensor(loss_value)):
        raise SystemExit(f"{key}: non-finite loss {loss_value}")
    step = statistics.median(total)
    print(f"# torch {torch.__version__} {mode} {key}: {name} width {width}, {frames} frames x {size}x{size}, "
          f"batch {batch}; {torch.get_num_threads()} threads; loss {loss_value:.4f}")
    print(f"RESULT torch-{mode} {key} {batch / step:.4f} {statistics.median(fwd):.5f} {statistics.median(bwd):.5f} "
          f"{statistics.median(optim):.5f} {step:.5f} {min(total):.5f} {max(total):.5f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--compile", action="store_true", help="torch.compile instead of eager")
    ap.add_argument("--bf16", action="store_true", help="eager under bf16 autocast instead of f32")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads [all cores, as ours]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for key in args.cases.split(","):
        if key not in CASES:
            ap.error(f"unknown case {key!r} (choose from {', '.join(CASES)})")
        try:
            bench(key, "compile" if args.compile else "eager-bf16" if args.bf16 else "eager")
        except Exception as e:  # torch.compile needs a C++ compiler and may fail on a bare machine
            if not args.compile:
                raise
            print(f"# torch.compile {key}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)


if __name__ == "__main__":
    main()
