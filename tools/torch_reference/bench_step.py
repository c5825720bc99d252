#!/usr/bin/env python3
"""PyTorch reference of one SimCLR training step, the same as `simclr-train`'s (src/train.rs).

One step: B clips from the memory-mapped shards -> two clip-consistent augmented views on the
GPU -> both views through the encoder as one batch of 2B clips (bf16 autocast) -> projection head
-> NT-Xent (tau 0.5, f32) -> backward -> global gradient norm (train.rs checks it every step) ->
Adam step (our default: `adam`, L2 weight decay 1e-6, lr 3e-4 on the warm-up + cosine
schedule; `--optimizer adamw` for decoupled decay). Models, augmentations and data are
described in models.py, augment.py and shards.py.

Prints one JSON line per run (see README.md for the fields). Timing: each phase boundary is a
CUDA event recorded on the stream (no synchronisation between phases, one at the end of each
step), so a phase's time is the GPU-timeline span between its events: the work it queued plus
any time the GPU waited for the host to queue it. Warm-up steps (cuDNN autotuning,
torch.compile) are not timed; the step time is host wall-clock from the start of the step to
its final synchronisation; medians over --steps steps.

  python3 tools/torch_reference/bench_step.py --processed_dir D --base_model resnet18 \\
      --batch_size 256 --frames 20 --size 128 --steps 10 --warmup 3 --mode eager
  python3 tools/torch_reference/bench_step.py --check            # CPU, tiny, every model
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import augment as aug  # noqa: E402
from models import MODELS, SimClr, nt_xent, warmup_cosine  # noqa: E402
from shards import ShardDataset, ShardError, evenly_spaced_frames, write_random_dataset  # noqa: E402

PHASES = ["data", "augment", "forward", "backward", "optimizer"]


class UsageError(Exception):
    pass


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processed_dir", help="shard directory (manifest.json + shard-*.bin); optional with --check")
    ap.add_argument("--base_model", default="resnet18", choices=MODELS)
    ap.add_argument("--batch_size", type=int, help="clips per step (2 views each) [256; --check: 4]")
    ap.add_argument("--frames", type=int, help="frames per clip fed to the encoder [20; --check: 2]")
    ap.add_argument("--size", type=int, help="side of the augmented views [128; --check: 32]")
    ap.add_argument("--steps", type=int, help="timed steps [10; --check: 3]")
    ap.add_argument("--warmup", type=int, help="untimed steps first [3; --check: 0]")
    ap.add_argument("--mode", default="eager", choices=["eager", "compile"])
    ap.add_argument("--device", help="cuda or cpu [cuda; --check: cpu]")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight_decay", type=float, default=1e-6)
    ap.add_argument("--optimizer", default="adam", choices=["adam", "adamw"],
                    help="adam: L2 decay in the gradient (simclr-train's default); adamw: decoupled")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--projection_dim", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier (as simclr-train)")
    ap.add_argument("--small_stem", action="store_true", help="ResNet 3x3 stride-1 stem, no max-pool")
    ap.add_argument("--no_amp", action="store_true", help="f32 instead of bf16 autocast")
    ap.add_argument("--no_channels_last", action="store_true", help="NCHW instead of channels_last (ResNets)")
    ap.add_argument("--data", default="auto", choices=["auto", "device", "host"],
                    help="device: the dataset's clips are copied to the GPU once and batches gathered there; "
                         "host: each batch is gathered from the memory maps into pinned memory and copied "
                         "(timed as `data`); auto: device if the clips fit in --device_cache_gb")
    ap.add_argument("--device_cache_gb", type=float, default=8.0)
    ap.add_argument("--compile_mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true",
                    help="validate the script: tiny sizes, every model, finite loss and gradients, loss decreasing")
    ap.add_argument("--models", help="comma-separated models for --check [all]")
    args = ap.parse_args(argv)
    tiny = args.check
    for name, full, small in [("batch_size", 256, 4), ("frames", 20, 2), ("size", 128, 32), ("steps", 10, 3),
                              ("warmup", 3, 0), ("device", "cuda", "cpu")]:
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if not tiny and not args.processed_dir:
        ap.error("--processed_dir is required (make one with `simclr-data bouncing --out DIR`)")
    if args.batch_size < 2:
        ap.error("--batch_size must be at least 2 (NT-Xent needs other clips as negatives)")
    if args.steps < 1 or args.warmup < 0 or args.frames < 1 or args.size < 8:
        ap.error("--steps must be >= 1, --warmup >= 0, --frames >= 1, --size >= 8")
    return args


# ---------------------------------------------------------------- setup


def pick_device(name):
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device (use --device cpu)")
    return dev


class Batches:
    """Random batches of B clips (a fresh permutation per epoch), as u8 [B, T, H, W, 3] on the device."""

    def __init__(self, ds, batch, frames, device, where, cache_gb, seed):
        if frames > ds.frames:
            raise UsageError(f"{ds.dir}: clips have {ds.frames} frames, cannot take --frames {frames}")
        if len(ds) < batch:
            raise UsageError(f"{ds.dir}: {len(ds)} clips, fewer than --batch_size {batch}")
        self.ds, self.batch, self.device = ds, batch, device
        self.frame_idx = None if frames == ds.frames else evenly_spaced_frames(ds.frames, frames)
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(ds)), 0
        clip_bytes = frames * ds.height * ds.width * 3
        if where == "auto":
            where = "device" if len(ds) * clip_bytes <= cache_gb * 2**30 else "host"
        if where == "device" and len(ds) * clip_bytes > cache_gb * 2**30:
            raise UsageError(f"{len(ds)} clips need {len(ds) * clip_bytes / 2**30:.1f} GiB, over "
                             f"--device_cache_gb {cache_gb}; use --data host")
        self.where = where
        if where == "device":
            chunks = [torch.from_numpy(ds.clips(range(i, min(i + 64, len(ds))), self.frame_idx)).to(device)
                      for i in range(0, len(ds), 64)]
            self.cache = torch.cat(chunks)
        else:
            pin = device.type == "cuda"
            self.pinned = torch.empty((batch, frames, ds.height, ds.width, 3), dtype=torch.uint8, pin_memory=pin)

    def next_indices(self):
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.ds)), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx

    def fetch(self, idx):
        if self.where == "device":
            return self.cache.index_select(0, torch.from_numpy(idx).to(self.device, non_blocking=True))
        self.ds.clips(idx, self.frame_idx, out=self.pinned.numpy())
        return self.pinned.to(self.device, non_blocking=True)


class Marks:
    """Phase boundaries: CUDA events on the current stream, or host clocks on the CPU."""

    def __init__(self, device, n):
        self.cuda = device.type == "cuda"
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(n)] if self.cuda else [0.0] * n

    def record(self, i):
        if self.cuda:
            self.events[i].record()
        else:
            self.events[i] = time.perf_counter()

    def spans_ms(self):
        if self.cuda:
            return [a.elapsed_time(b) for a, b in zip(self.events, self.events[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.events, self.events[1:])]

    def synchronize(self):
        if self.cuda:
            self.events[-1].synchronize()


def grad_norm(params):
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class Trainer:
    """Everything one step needs; `step()` runs one and returns its phase times."""

    def __init__(self, args, ds, model_name, device):
        self.args, self.device, self.model_name = args, device, model_name
        torch.manual_seed(args.seed)
        self.batches = Batches(ds, args.batch_size, args.frames, device, args.data, args.device_cache_gb, args.seed)
        if args.size > ds.height or args.size > ds.width:
            raise UsageError(f"{ds.dir}: frames are {ds.height}x{ds.width}, smaller than the {args.size}x{args.size} "
                             "crop output; use a smaller --size or regenerate the data with a larger --size")
        self.height, self.width = ds.height, ds.width
        self.cfg = aug.AugmentConfig(args.size)
        self.aug_rng = np.random.default_rng(args.seed + 1)
        try:
            model = SimClr(model_name, args.frames, args.size, args.projection_dim, args.temperature,
                           args.width, args.small_stem)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.channels_last = model.encoder.is_resnet and not args.no_channels_last and device.type == "cuda"
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            model.encoder.channels_last = True
        model.train()
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        fused = {"fused": True} if device.type == "cuda" else {}
        opt_cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
        self.opt = opt_cls(self.params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=args.weight_decay, **fused)
        self.amp = not args.no_amp
        self.total_steps = args.warmup + args.steps
        self.global_step = 0

        def forward_loss(x):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.amp):
                z = self.model(x)
            return nt_xent(z, args.temperature)

        def augment_fused(x, p):
            return aug.augment(x, p, args.size, None)

        if args.mode == "compile":
            self.forward_loss = torch.compile(forward_loss, mode=args.compile_mode)
            self.augment = torch.compile(augment_fused, mode=args.compile_mode, dynamic=False)
        else:
            self.forward_loss = forward_loss
            self.augment = None  # eager: hue on host-chosen subsets
        self.marks = Marks(device, len(PHASES) + 1)

    def step(self, fixed=None):
        """One training step. `fixed` = (clips, params, subsets) repeats a batch (for --check)."""
        m, dev, b = self.marks, self.device, self.args.batch_size
        t0 = time.perf_counter()
        m.record(0)
        if fixed is None:
            clips = self.batches.fetch(self.batches.next_indices())
            p_host = aug.sample_params(2 * b, self.height, self.width, self.cfg, self.aug_rng)
            params = torch.from_numpy(p_host).to(dev, non_blocking=True)
            subsets = None
            if self.augment is None:
                perm, slices = aug.hue_subsets(p_host)
                subsets = (torch.from_numpy(perm).to(dev, non_blocking=True), slices)
        else:
            clips, params, subsets = fixed
        m.record(1)
        if self.augment is None:
            views = aug.augment(clips, params, self.args.size, subsets)
        else:
            views = self.augment(clips, params)
        m.record(2)
        lr = warmup_cosine(self.global_step, self.total_steps, round(self.total_steps * 0.1), self.args.lr)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.forward_loss(views)
        m.record(3)
        loss.backward()
        norm = grad_norm(self.params)
        m.record(4)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        m.record(5)
        m.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
        self.global_step += 1
        return {"wall_ms": wall_ms, "phases": m.spans_ms(), "loss": loss.item(), "grad_norm": norm.item()}


def gpu_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def run_bench(args, ds, model_name, device):
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tr = Trainer(args, ds, model_name, device)
    t = time.perf_counter()
    first = [tr.step() for _ in range(args.warmup)]
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    steps = [tr.step() for _ in range(args.steps)]
    med = statistics.median(s["wall_ms"] for s in steps)
    phases = {name: statistics.median(s["phases"][i] for s in steps) for i, name in enumerate(PHASES)}
    losses = [s["loss"] for s in first + steps]
    out = {
        "model": model_name, "mode": args.mode, "batch": args.batch_size, "frames": args.frames, "size": args.size,
        "clips_per_s": args.batch_size / (med / 1e3),
        "step_ms": med,
        "step_ms_mean": statistics.fmean(s["wall_ms"] for s in steps),
        "step_ms_min": min(s["wall_ms"] for s in steps),
        "data_ms": phases["data"], "augment_ms": phases["augment"],
        "data_augment_ms": phases["data"] + phases["augment"],
        "forward_ms": phases["forward"], "backward_ms": phases["backward"], "optimizer_ms": phases["optimizer"],
        "timing": ("wall clock per step, synchronised at its end; phases from CUDA events at their boundaries "
                   "(no sync between phases), medians" if device.type == "cuda" else
                   "host clock (CPU ops are synchronous), medians"),
        "steps": args.steps, "warmup": args.warmup, "warmup_s": warmup_s,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "params": sum(p.numel() for p in tr.params),
        "loss_first": losses[0], "loss_last": losses[-1],
        "amp": "bf16" if tr.amp else "f32", "channels_last": tr.channels_last, "data": tr.batches.where,
        "optimizer": f"{args.optimizer} (fused)" if device.type == "cuda" else args.optimizer,
        "dataset": {"dir": ds.dir, "clips": len(ds), "frames": ds.frames, "height": ds.height, "width": ds.width},
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": device.type, "gpu": gpu_name(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out["peak_mem_bytes"] is not None:
        out["peak_mem_gib"] = out["peak_mem_bytes"] / 2**30
    bad = [s for s in first + steps if not (math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]))]
    if bad:
        out["warning"] = f"{len(bad)} steps had a non-finite loss or gradient norm"
    return out


# ---------------------------------------------------------------- --check


def _expect_shard_error(fn, words):
    try:
        fn()
    except ShardError as e:
        msg = str(e)
        assert all(w in msg for w in words), f"message {msg!r} lacks {words}"
        return
    raise AssertionError(f"expected a ShardError mentioning {words}")


def check_reader(tmp):
    good = os.path.join(tmp, "reader")
    write_random_dataset(good, clips=5, frames=3, size=8, seed=1, clips_per_shard=2)
    ds = ShardDataset(good)
    raw = np.fromfile(os.path.join(good, "shard-00001.bin"), dtype=np.uint8).reshape(2, 3, 8, 8, 3)
    got = ds.clips([3, 2], [0, 2])
    assert np.array_equal(got[0], raw[1][[0, 2]]) and np.array_equal(got[1], raw[0][[0, 2]]), "clip gather"
    with open(os.path.join(good, "manifest.json")) as f:
        manifest = json.load(f)

    def variant(name, change, truncate=False):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        m = json.loads(json.dumps(manifest))
        change(m)
        for s in manifest["shards"]:
            data = open(os.path.join(good, s["file"]), "rb").read()
            open(os.path.join(d, s["file"]), "wb").write(data[:-1] if truncate else data)
        json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
        return d

    _expect_shard_error(lambda: ShardDataset(variant("v2", lambda m: m.update(version=2))), ["version 2", "reads version 1"])
    _expect_shard_error(lambda: ShardDataset(variant("fmt", lambda m: m.update(format="x"))), ["format"])
    _expect_shard_error(lambda: ShardDataset(variant("trunc", lambda m: None, truncate=True)), ["truncated"])
    _expect_shard_error(lambda: ShardDataset(os.path.join(tmp, "nowhere")), ["simclr-data bouncing"])


def _taps_reference(start, length, out):
    """resize.rs Taps::new, line by line: (first, weights) per output pixel."""
    scale = length / out
    stretch = max(scale, 1.0)
    rows = []
    for i in range(out):
        centre = (i + 0.5) * scale
        lo = int(max(math.floor(centre - stretch), 0.0))
        hi = min(int(math.ceil(centre + stretch)), length)
        w = [max(1.0 - abs((j + 0.5 - centre) / stretch), 0.0) for j in range(lo, hi)]
        total = max(sum(w), sys.float_info.min)
        rows.append((start + lo, [x / total for x in w]))
    return rows


def _hsv_reference(r, g, b, shift):
    """augment.rs rgb_to_hsv, hue shift, hsv_to_rgb on one pixel."""
    maxc, minc = max(r, g, b), min(r, g, b)
    cr = maxc - minc
    s = cr / maxc if maxc > 0 else 0.0
    if cr == 0:
        h = 0.0
    elif maxc == r:
        h = (g - b) / cr
    elif maxc == g:
        h = 2.0 + (b - r) / cr
    else:
        h = 4.0 + (r - g) / cr
    h = ((h / 6.0) % 1.0 + shift) % 1.0
    h6 = h * 6.0
    i = math.floor(h6)
    f = h6 - i
    v = maxc
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][int(i) % 6]


def check_augment(device):
    rng = np.random.default_rng(3)
    # Resampling matrices against a port of resize.rs's Taps.
    for start, length, out, size in [(3, 20, 8, 32), (0, 32, 32, 32), (5, 6, 16, 24), (0, 40, 7, 40)]:
        m = aug.resample_matrix(torch.tensor([float(start)]), torch.tensor([float(length)]), out, size)[0]
        want = torch.zeros(out, size)
        for i, (first, w) in enumerate(_taps_reference(start, length, out)):
            want[i, first:first + len(w)] = torch.tensor(w)
        assert torch.allclose(m, want, atol=1e-6), f"resample matrix {start, length, out, size}"
    # Hue against the scalar formulas.
    px = torch.tensor(rng.random((6, 1, 3, 5, 1)), dtype=torch.float32)
    px[0, 0, :, 0, 0] = 0.5  # grey: no hue
    px[1, 0, :, 1, 0] = torch.tensor([0.9, 0.9, 0.1])  # ties
    shift = torch.tensor(rng.uniform(-0.5, 0.5, 6))
    got = aug.adjust_hue(px, shift)
    for n in range(6):
        for k in range(5):
            want = _hsv_reference(*px[n, 0, :, k, 0].double().tolist(), float(shift[n]))
            assert np.allclose(got[n, 0, :, k, 0].numpy(), want, atol=1e-5), f"hue {n},{k}"
    # Batched augmentation: shapes, clip consistency, both hue paths equal, views differ.
    b, t, h, w, s = 6, 3, 40, 36, 16
    clip = rng.integers(0, 256, size=(b, 1, h, w, 3), dtype=np.uint8)
    x = torch.from_numpy(np.repeat(clip, t, axis=1)).to(device)  # every frame the same
    cfg = aug.AugmentConfig(s)
    p_host = aug.sample_params(2 * b, h, w, cfg, rng)
    p = torch.from_numpy(p_host).to(device)
    perm, slices = aug.hue_subsets(p_host)
    eager = aug.augment(x, p, s, (torch.from_numpy(perm).to(device), slices))
    fused = aug.augment(x, p, s, None)
    assert eager.shape == (2 * b, t, 3, s, s) and eager.dtype == torch.float32
    assert torch.isfinite(eager).all()
    assert torch.allclose(eager, fused, atol=1e-5), "hue subsets and masked hue disagree"
    assert torch.allclose(eager[:, 0:1].expand_as(eager), eager), "frames of a clip got different transforms"
    assert not torch.allclose(eager[:b], eager[b:]), "the two views are identical"
    # Without jitter, flip or grayscale, a full-frame crop to the same size is the identity.
    sq = torch.from_numpy(rng.integers(0, 256, size=(b, t, 20, 20, 3), dtype=np.uint8)).to(device)
    q = aug.sample_params(2 * b, 20, 20, cfg, rng)
    q[:, [aug.TOP, aug.LEFT, aug.FLIP, aug.GRAY, aug.HUE_SHIFT]] = 0
    q[:, [aug.CH, aug.CW]] = 20
    q[:, aug.HUE_POS] = -1
    q[:, aug.ALPHA:aug.ALPHA + 4], q[:, aug.BETA:aug.BETA + 8] = 1, 0
    ident = aug.augment(sq, torch.from_numpy(q).to(device), 20, None)
    mean = torch.tensor(aug.MEAN, device=device)[:, None, None]
    std = torch.tensor(aug.STD, device=device)[:, None, None]
    ref = (sq.permute(0, 1, 4, 2, 3).float() / 255 - mean) / std
    assert torch.allclose(ident[:b], ref, atol=1e-4) and torch.allclose(ident[b:], ref, atol=1e-4), "identity"
    # Parameter ranges.
    big = aug.sample_params(4000, h, w, cfg, rng)
    assert (big[:, aug.CH] >= 1).all() and (big[:, aug.TOP] + big[:, aug.CH] <= h).all()
    assert (big[:, aug.CW] >= 1).all() and (big[:, aug.LEFT] + big[:, aug.CW] <= w).all()
    assert abs(big[:, aug.FLIP].mean() - 0.5) < 0.05 and abs(big[:, aug.GRAY].mean() - 0.2) < 0.05
    jit = (big[:, aug.HUE_POS] >= 0).mean()
    assert abs(jit - 0.8) < 0.05, jit
    assert (np.abs(big[:, aug.HUE_SHIFT]) <= 0.1).all()
    a = big[:, aug.ALPHA:aug.ALPHA + 4]
    assert a.min() >= 0.6 - 1e-12 and a.max() <= 1.4 + 1e-12


def run_check(args):
    device = pick_device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        check_reader(tmp)
        check_augment(device)
        print(json.dumps({"check": "shard reader and augmentations", "ok": True}), flush=True)
        directory = args.processed_dir
        if directory is None:
            directory = os.path.join(tmp, "clips")
            # More frames and larger frames than used: exercises frame selection and down-scaling.
            write_random_dataset(directory, clips=max(2 * args.batch_size, 8), frames=2 * args.frames,
                                 size=args.size + 8, seed=args.seed)
        ds = ShardDataset(directory)
        models = args.models.split(",") if args.models else MODELS
        for name in models:
            tr = Trainer(args, ds, name, device)
            # One fixed batch, repeated: the loss must go down.
            b = args.batch_size
            clips = tr.batches.fetch(tr.batches.next_indices())
            p_host = aug.sample_params(2 * b, ds.height, ds.width, tr.cfg, tr.aug_rng)
            perm, slices = aug.hue_subsets(p_host)
            fixed = (clips, torch.from_numpy(p_host).to(device), (torch.from_numpy(perm).to(device), slices))
            t = time.perf_counter()
            steps = [tr.step(fixed) for _ in range(args.steps)]
            losses = [s["loss"] for s in steps]
            norms = [s["grad_norm"] for s in steps]
            ok = all(map(math.isfinite, losses + norms)) and all(n > 0 for n in norms)
            decreased = len(losses) > 1 and losses[-1] < losses[0]
            grads_finite = all(torch.isfinite(p).all().item() for p in tr.params)
            rec = {"check": name, "mode": args.mode, "device": device.type, "batch": b, "frames": args.frames,
                   "size": args.size, "params": sum(p.numel() for p in tr.params), "losses": losses,
                   "grad_norms": norms, "finite": ok and grads_finite, "loss_decreased": decreased,
                   "seconds": round(time.perf_counter() - t, 2)}
            print(json.dumps(rec), flush=True)
            results.append(rec)
            del tr
    failed = [r["check"] for r in results if not r["finite"] or (args.steps > 1 and not r["loss_decreased"])]
    if failed:
        print(f"--check FAILED for {', '.join(failed)} (non-finite loss/gradients, or the loss did not decrease "
              "on a repeated batch)", file=sys.stderr)
        return 1
    print(json.dumps({"check": "all", "ok": True, "models": [r["check"] for r in results]}), flush=True)
    return 0


# ---------------------------------------------------------------- main


def _is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.check:
            return run_check(args)
        device = pick_device(args.device)
        ds = ShardDataset(args.processed_dir)
        print(json.dumps(run_bench(args, ds, args.base_model, device)), flush=True)
        return 0
    except (ShardError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - OOM can surface wrapped (torch.compile) or plain
        if not _is_oom(e):
            # Still one JSON line for the results file; the traceback's tail says where.
            what = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(json.dumps({"model": args.base_model, "mode": args.mode, "batch": args.batch_size,
                              "frames": args.frames, "size": args.size, "error": what[:500]}), flush=True)
            tail = traceback.format_exc().splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            print(f"error: {args.base_model} ({args.mode}) failed: {what[:500]}", file=sys.stderr)
            return 1
        dev = torch.device(args.device)
        total = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 0
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
        msg = (f"out of GPU memory: {args.base_model} ({args.mode}) at --batch_size {args.batch_size}, "
               f"--frames {args.frames}, --size {args.size} (peak {peak / 2**30:.1f} GiB allocated of "
               f"{total / 2**30:.1f} GiB); reduce --batch_size")
        print(json.dumps({"model": args.base_model, "mode": args.mode, "batch": args.batch_size,
                          "frames": args.frames, "size": args.size, "error": "out of memory",
                          "message": msg}), flush=True)
        print(f"error: {msg}", file=sys.stderr)
        print("".join(traceback.format_exception_only(type(e), e))[-500:], file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
