#!/usr/bin/env python3
"""PyTorch reference timings for the flash-attention benchmark (benches/attention_kernels.rs).

Runs on the GPU machine, before the Rust benchmark in the same call, and writes
{case name: {"fwd_ms": ..., "ms": forward + backward, "bwd_ms": ..., TFLOP/s}} to --out. The
Rust benchmark reads the file and prints its throughput as a ratio to these. The cases are
ViViT's spatial attention at batch 256: 256 clips x 10 temporal slices (20 frames, tubelets of
2 frames x 16x16 pixels), (H/16)^2 + 1 tokens, 3/6/12 heads of 64 dims for tiny/small/base;
case names must match the benchmark's (same list, kept in both files).

torch.nn.functional.scaled_dot_product_attention in bf16, with the flash backend forced via
torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION) (it fails rather than silently falling
back). Timing: CUDA events around each repetition after warm-up, the median of the repetitions.
The backward is torch.autograd.grad (no .grad accumulation), timed together with its forward.
FLOPs as FlashAttention counts them: forward 4*BH*L*S*D, backward 2.5x the forward.
"""
import argparse
import json

import torch

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_timing import median_ms  # beside this script, in tools/gpu/

BATCH, FRAMES, TUBELET_FRAMES, PATCH, HEAD_DIM = 256, 20, 2, 16, 64
MODELS = [("vivit_tiny", 3), ("vivit_small", 6), ("vivit_base", 12)]
IMAGES = [128, 224]



def attention_case(heads, image):
    sequences = BATCH * (FRAMES // TUBELET_FRAMES)
    tokens = (image // PATCH) ** 2 + 1
    shape = (sequences, heads, tokens, HEAD_DIM)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    def fwd_bwd():
        out = F.scaled_dot_product_attention(q, k, v)
        torch.autograd.grad(out, (q, k, v), grad_out)

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fwd_ms = median_ms(fwd)
        ms = median_ms(fwd_bwd)
    fwd_flops = 4.0 * sequences * heads * tokens * tokens * HEAD_DIM
    return {
        "fwd_ms": fwd_ms,
        "ms": ms,
        "bwd_ms": ms - fwd_ms,
        "batch_heads": sequences * heads,
        "tokens": tokens,
        "head_dim": HEAD_DIM,
        "fwd_tflops": fwd_flops / fwd_ms / 1e9,
        "fwd_bwd_tflops": 3.5 * fwd_flops / ms / 1e9,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for model, heads in MODELS:
        for image in IMAGES:
            name = f"attention/bf16/{model}/{FRAMES}x{image}x{image}"
            results[name] = attention_case(heads, image)
            print(name, results[name], flush=True)
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
