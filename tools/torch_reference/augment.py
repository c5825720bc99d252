"""Clip-consistent SimCLR augmentations on GPU tensors, batched, mirroring src/data/augment.rs.

Per clip and per view (the same draw for every frame of the clip, a fresh one per view):

1. random resized crop with torchvision's get_params (10 tries of area ~ U(0.08, 1) x frame
   area and log-uniform aspect ratio in (3/4, 4/3), then the centre-crop fallback), resized to
   S x S with the *antialiased* bilinear filter of src/data/resize.rs (a triangle filter
   stretched by the shrink factor, plain bilinear with align_corners=False when enlarging);
2. horizontal flip with p = 0.5;
3. with p = 0.8, colour jitter: brightness, contrast, saturation factors ~ U(0.6, 1.4), hue
   shift ~ U(-0.1, 0.1), in a random order per clip; contrast blends with the mean grey level
   of the whole clip (so every frame gets the same map), saturation with each pixel's grey,
   hue rotates H in HSV; values are clamped to [0, 1] after each operation;
4. grayscale with p = 0.2 (grey = 0.299 R + 0.587 G + 0.114 B);
5. ImageNet normalisation, output f32 [N, T, 3, S, S].

How it is batched (no loop over clips):
- parameters are drawn on the host with numpy (tiny arrays) and sent as one [N, 20] tensor;
- the crop + antialiased resize + flip of every clip is two batched matmuls with per-clip
  resampling matrices Wy [N, S, H] and Wx [N, S, W] (the filter is separable; each matrix row
  holds one output pixel's taps, exactly resize.rs's `Taps`), flipped rows for flipped clips;
- brightness, contrast and saturation are all `clamp(a*x + b*mean_grey(clip) + c*grey(pixel))`
  with per-clip (a, b, c), so each of the 4 jitter positions is one such map over the batch
  (identity coefficients for clips whose operation at that position is another one);
- hue, the only expensive operation, runs at each position either on the subset of clips that
  put it there (`hue_subsets`, index_select / index_copy with host-known indices: no sync), or,
  for torch.compile, on every clip with the result kept only where it applies (fusable, no
  data-dependent shapes).
"""
import math

import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GREY = (0.299, 0.587, 0.114)


class AugmentConfig:
    """src/data/augment.rs AugmentConfig::default (the simclr-train defaults)."""

    def __init__(self, out_size, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
                 brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2):
        self.out_size = out_size
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue


# Columns of the parameter matrix.
TOP, LEFT, CH, CW, FLIP, GRAY, HUE_POS = range(7)
ALPHA, BETA, GAMMA = 7, 11, 15  # 4 columns each, one per jitter position
HUE_SHIFT = 19
NCOLS = 20

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _round(x):
    """Rust's f64::round for the non-negative values here (half away from zero)."""
    return np.floor(x + 0.5)


def sample_params(n, height, width, cfg, rng):
    """Draws n views' transforms (numpy, on the host): float64 [n, NCOLS]."""
    p = np.zeros((n, NCOLS))
    # RandomResizedCrop.get_params, 10 tries per view, the first valid one wins.
    area = height * width
    target = area * rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1], size=(n, 10))
    ratio = np.exp(rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), size=(n, 10)))
    w = _round(np.sqrt(target * ratio))
    h = _round(np.sqrt(target / ratio))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    h, w, found = h[rows, first], w[rows, first], ok.any(axis=1)
    top = np.floor(rng.random(n) * (height - h + 1))
    left = np.floor(rng.random(n) * (width - w + 1))
    # Fallback: the largest centre crop whose ratio is within range.
    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        fh, fw = _round(width / cfg.crop_ratio[0]), width
    elif in_ratio > cfg.crop_ratio[1]:
        fh, fw = height, _round(height * cfg.crop_ratio[1])
    else:
        fh, fw = height, width
    p[:, TOP] = np.where(found, top, (height - fh) // 2)
    p[:, LEFT] = np.where(found, left, (width - fw) // 2)
    p[:, CH] = np.where(found, h, fh)
    p[:, CW] = np.where(found, w, fw)
    p[:, FLIP] = rng.random(n) < cfg.flip_p
    # Colour jitter: four factors, applied in a random order (identity where not drawn).
    jitter = rng.random(n) < cfg.jitter_p

    def factor(s):
        return rng.uniform(max(0.0, 1.0 - s), 1.0 + s, size=n)

    b, c, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    hue = rng.uniform(-cfg.hue, cfg.hue, size=n)
    order = np.argsort(rng.random((n, 4)), axis=1)  # order[i, k] = operation at position k
    p[:, ALPHA:ALPHA + 4] = 1.0
    p[:, HUE_POS] = -1
    for k in range(4):
        op = np.where(jitter, order[:, k], -1)
        p[:, ALPHA + k] = np.select([op == BRIGHTNESS, op == CONTRAST, op == SATURATION], [b, c, s], 1.0)
        p[:, BETA + k] = np.where(op == CONTRAST, 1.0 - c, 0.0)
        p[:, GAMMA + k] = np.where(op == SATURATION, 1.0 - s, 0.0)
        p[:, HUE_POS] = np.where(op == HUE, k, p[:, HUE_POS])
    p[:, HUE_SHIFT] = np.where(jitter, hue, 0.0)
    p[:, GRAY] = rng.random(n) < cfg.grayscale_p
    return p


def hue_subsets(params):
    """Host side of the eager hue path: clips sorted by hue position, and each position's slice."""
    pos = params[:, HUE_POS].astype(np.int64)
    perm = np.argsort(pos, kind="stable")
    counts = [int((pos == k).sum()) for k in range(4)]
    start = int((pos < 0).sum())
    slices = []
    for k in range(4):
        slices.append((start, counts[k]))
        start += counts[k]
    return perm, slices


def resample_matrix(start, length, out, size):
    """[n, out, size]: row i holds output pixel i's taps over the `size` source pixels
    (resize.rs `Taps::new(start, length, out)` written densely)."""
    dt = torch.float64
    scale = length / out  # [n]
    stretch = scale.clamp_min(1.0)
    centre = (torch.arange(out, device=start.device, dtype=dt) + 0.5)[None, :] * scale[:, None]  # [n, out]
    j = torch.arange(size, device=start.device, dtype=dt)[None, None, :] - start[:, None, None]  # crop coords
    w = (1.0 - (j + 0.5 - centre[:, :, None]).abs() / stretch[:, None, None]).clamp_min(0.0)
    w = torch.where((j >= 0) & (j < length[:, None, None]), w, torch.zeros_like(w))
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-300)).float()


def to_planar(x_u8):
    """u8 [n, T, H, W, 3] -> f32 [n, T, 3, H, W] in [0, 1]."""
    return x_u8.permute(0, 1, 4, 2, 3).float().mul_(1.0 / 255.0).contiguous()


def crop_resize_flip(x, p, out_size):
    """Clips f32 [n, T, 3, H, W] and their views' parameters [n, NCOLS] -> f32 [n, T, 3, S, S]."""
    n, t, _, h, w = x.shape
    s = out_size
    wy = resample_matrix(p[:, TOP], p[:, CH], s, h)  # [n, S, H]
    wx = resample_matrix(p[:, LEFT], p[:, CW], s, w)  # [n, S, W]
    wx = torch.where(p[:, FLIP, None, None] > 0.5, wx.flip(1), wx)
    cols = torch.bmm(x.reshape(n, t * 3 * h, w), wx.transpose(1, 2))  # [n, T*3*H, S]
    cols = cols.view(n, t * 3, h, s).transpose(1, 2).reshape(n, h, t * 3 * s)  # [n, H, T*3*S]
    out = torch.bmm(wy, cols)  # [n, S_y, T*3*S_x]
    return out.view(n, s, t, 3, s).permute(0, 2, 3, 1, 4).contiguous()


def _grey(x):
    return x[:, :, 0:1] * GREY[0] + x[:, :, 1:2] * GREY[1] + x[:, :, 2:3] * GREY[2]


def _col(p, c):
    return p[:, c].to(torch.float32)[:, None, None, None, None]


def rgb_to_hsv(x):
    """augment.rs rgb_to_hsv over [n, T, 3, ...]: (h in [0, 1), s, v), each [n, T, ...]."""
    r, g, b = x.unbind(2)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    s = cr / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    h = torch.where(maxc == r, (g - b) / crd, torch.where(maxc == g, 2.0 + (b - r) / crd, 4.0 + (r - g) / crd))
    h = torch.where(cr == 0, torch.zeros_like(h), h)
    return torch.remainder(h / 6.0, 1.0), s, maxc


# hsv_to_rgb: for sector i = floor(6h), which of (v, q, p, t) each of R, G, B takes.
_SECTOR = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))


def hsv_to_rgb(h, s, v):
    h6 = torch.remainder(h, 1.0) * 6.0
    i = h6.floor()
    f = h6 - i
    cand = torch.stack([v, v * (1.0 - s * f), v * (1.0 - s), v * (1.0 - s * (1.0 - f))], dim=2)  # v, q, p, t
    table = torch.tensor(_SECTOR, device=h.device)  # [3, 6]
    index = table[:, i.long() % 6].movedim(0, 2)  # [n, T, 3, ...]
    return torch.gather(cand, 2, index)


def adjust_hue(x, shift):
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb(h + shift.to(torch.float32)[:, None, None, None], s, v)


def colour_and_normalise(x, p, subsets=None):
    """Colour jitter (4 positions), grayscale and normalisation of [n, T, 3, S, S] in [0, 1]."""
    for k in range(4):
        grey = _grey(x)
        mean = grey.mean(dim=(1, 2, 3, 4), keepdim=True)  # the clip's mean grey (contrast)
        bias = _col(p, GAMMA + k) * grey + _col(p, BETA + k) * mean
        x = torch.addcmul(bias, _col(p, ALPHA + k), x).clamp_(0.0, 1.0)
        if subsets is None:  # every clip, kept where hue sits at position k (fusable)
            here = (p[:, HUE_POS] == k)[:, None, None, None, None]
            x = torch.where(here, adjust_hue(x, p[:, HUE_SHIFT]), x)
        else:  # only the clips with hue at position k (indices known on the host)
            perm, slices = subsets
            start, count = slices[k]
            if count:
                idx = perm[start:start + count]
                sub = x.index_select(0, idx)
                x.index_copy_(0, idx, adjust_hue(sub, p.index_select(0, idx)[:, HUE_SHIFT]))
    grey = _grey(x)
    x = torch.where(_col(p, GRAY) > 0.5, grey.expand_as(x), x)
    mean = torch.tensor(MEAN, device=x.device)[None, None, :, None, None]
    inv_std = 1.0 / torch.tensor(STD, device=x.device)[None, None, :, None, None]
    return (x - mean) * inv_std


def augment(x_u8, p, out_size, subsets=None):
    """Both views at once: u8 clips [B, T, H, W, 3], parameters [2B, NCOLS] (rows 0..B view 1,
    B..2B view 2) -> f32 [2B, T, 3, S, S], rows i and i + B the two views of clip i."""
    b = x_u8.shape[0]
    x = to_planar(x_u8)
    views = [crop_resize_flip(x, p[v * b:(v + 1) * b], out_size) for v in range(2)]
    return colour_and_normalise(torch.cat(views, 0), p, subsets)
