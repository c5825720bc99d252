"""Our SimCLR models in plain torch.nn (no torchvision), layer for layer as the Rust crate builds them.

Parameter names follow the Rust modules' `visit` names, so `state_dict()` keys match the
safetensors our checkpoints write (under `encoder.` and `projector.`):

- ResNet (src/nn/resnet.rs): torchvision's ResNet-18/34/50 (v1.5: stride on the bottleneck's
  3x3), conv weights ~ N(0, 2/fan_out), BN weight 1 / bias 0, no `fc`; optional width multiplier
  and small-image stem (3x3 stride-1 conv, no max-pool) like `--width` / `--small_stem`.
  The video encoder runs it on every frame of [B, T, 3, H, W] and averages the T frame
  features (src/nn/simclr.rs, `Encoder::ResNet`).
- ViViT (src/nn/vivit.rs): factorised encoder. Tubelets of 2 frames x 16x16 pixels, rows in
  Conv3d kernel order (channel, frame, y, x), embedded by one Linear [D, 3*2*16*16] (+ bias);
  spatial transformer (12 blocks) over each 2-frame slice's 64 patch tokens + a CLS token with
  learned positions; the slices' CLS outputs + a temporal CLS token with learned positions go
  through the temporal transformer (4 blocks); LayerNorm of its CLS output is the clip's
  representation. Blocks are pre-norm, nn.MultiheadAttention-style fused in_proj
  ([3D, D] + bias, xavier-uniform, zero biases), no dropout, MLP D -> 4D -> D with exact (erf)
  GELU, LayerNorm eps 1e-5. tiny 192-d/3 heads, small 384/6, base 768/12.
- Projection head (src/nn/simclr.rs): Linear(d, d) -> ReLU -> Linear(d, 128), d = 512 (R18),
  2048 (R50) or the ViViT width, named `projector.layers.0` / `projector.layers.1`.
- NT-Xent (src/ops/loss/nt_xent.rs): rows i and i + N of z are the positive pair, F.normalize
  (eps 1e-12), cosine similarities / tau, the diagonal excluded, mean cross-entropy over 2N rows,
  in f32.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = ["resnet18", "resnet34", "resnet50", "vivit_tiny", "vivit_small", "vivit_base"]


# ---------------------------------------------------------------- ResNet


def _conv(cin, cout, k, stride, pad):
    c = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)
    nn.init.normal_(c.weight, 0.0, math.sqrt(2.0 / (cout * k * k)))  # kaiming_normal, fan_out, ReLU
    return c


class Block(nn.Module):
    """BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        if bottleneck:
            specs = [(cin, planes, 1, 1, 0), (planes, planes, 3, stride, 1), (planes, planes * 4, 1, 1, 0)]
            out = planes * 4
        else:
            specs = [(cin, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
            out = planes
        self.n = len(specs)
        for i, s in enumerate(specs):
            self.add_module(f"conv{i + 1}", _conv(*s))
            self.add_module(f"bn{i + 1}", nn.BatchNorm2d(s[1]))  # eps 1e-5, momentum 0.1 as ours
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(_conv(cin, out, 1, stride, 0), nn.BatchNorm2d(out))
        self.out_channels = out

    def forward(self, x):
        h = x
        for i in range(1, self.n + 1):
            h = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h))
            if i < self.n:
                h = F.relu(h)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(h + identity)


class ResNet(nn.Module):
    PLANS = {"resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False), "resnet50": ([3, 4, 6, 3], True)}

    def __init__(self, name, width=1.0, small_stem=False):
        super().__init__()
        blocks, bottleneck = self.PLANS[name]
        base = max(1, int(math.floor(64 * width + 0.5)))
        self.small_stem = small_stem
        self.conv1 = _conv(3, base, 3, 1, 1) if small_stem else _conv(3, base, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(base)
        cin = base
        for s, n in enumerate(blocks):
            stage = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(Block(cin, base << s, stride, bottleneck))
                cin = stage[-1].out_channels
            self.add_module(f"layer{s + 1}", nn.Sequential(*stage))
        self.feature_dim = cin

    def forward(self, x):
        """Images [N, 3, H, W] -> pooled features [N, feature_dim]."""
        h = F.relu(self.bn1(self.conv1(x)))
        if not self.small_stem:
            h = F.max_pool2d(h, 3, 2, 1)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return h.mean(dim=(2, 3))


# ---------------------------------------------------------------- ViViT


def _fan_in_linear(cin, cout, bias=True):
    """Our Linear init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    lin = nn.Linear(cin, cout, bias=bias)
    bound = 1.0 / math.sqrt(cin)
    nn.init.uniform_(lin.weight, -bound, bound)
    if bias:
        nn.init.uniform_(lin.bias, -bound, bound)
    return lin


class Mlp(nn.Module):
    """Linear -> activation -> ... -> Linear, layers named `layers.0`, `layers.1`, ... (src/nn/mlp.rs)."""

    def __init__(self, sizes, activation):
        super().__init__()
        self.layers = nn.ModuleList(_fan_in_linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = activation

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x) if self.activation == "relu" else F.gelu(x)  # exact (erf) GELU
        return x


class MultiHeadAttention(nn.Module):
    """src/nn/attention.rs: fused q/k/v projection, scaled dot-product attention, out_proj."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim).uniform_(-bound, bound))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = _fan_in_linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        b, l, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, Dh]; flash/cuDNN/efficient kernels on CUDA
        return self.out_proj(o.transpose(1, 2).reshape(b, l, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp([dim, 4 * dim, dim], "gelu")

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


VIVIT_SIZES = {"vivit_tiny": (192, 3), "vivit_small": (384, 6), "vivit_base": (768, 12)}


class Vivit(nn.Module):
    def __init__(self, name, frames, image, spatial_depth=12, temporal_depth=4, tubelet_frames=2, patch=16):
        super().__init__()
        dim, heads = VIVIT_SIZES[name]
        if frames % tubelet_frames or image % patch or frames < tubelet_frames or image < patch:
            raise ValueError(
                f"{name}: {frames} frames of {image}px must split into tubelets of {tubelet_frames} frames x "
                f"{patch}px (use --frames a multiple of {tubelet_frames} and --size a multiple of {patch})"
            )
        self.dim, self.t, self.p, self.frames, self.image = dim, tubelet_frames, patch, frames, image
        self.slices, self.grid = frames // tubelet_frames, image // patch
        fan_in = 3 * tubelet_frames * patch * patch
        self.tubelet_embed = _fan_in_linear(fan_in, dim)
        self.spatial_cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.spatial_pos = nn.Parameter(torch.randn(1, self.grid**2 + 1, dim) * 0.02)
        self.spatial = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(spatial_depth))
        self.temporal_cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.temporal_pos = nn.Parameter(torch.randn(1, self.slices + 1, dim) * 0.02)
        self.temporal = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(temporal_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.feature_dim = dim

    def tubelets(self, x):
        """[B, T, 3, H, W] -> [B*T', g*g, 3*t*p*p], rows in Conv3d kernel order (channel, frame, y, x)."""
        b, ts, t, g, p = x.shape[0], self.slices, self.t, self.grid, self.p
        x = x.reshape(b, ts, t, 3, g, p, g, p).permute(0, 1, 4, 6, 3, 2, 5, 7)
        return x.reshape(b * ts, g * g, 3 * t * p * p)

    @staticmethod
    def with_cls(x, cls, pos):
        return torch.cat([cls.expand(x.shape[0], 1, x.shape[2]).to(x.dtype), x], dim=1) + pos

    def forward(self, x):
        """Clips [B, T, 3, H, W] -> representations [B, D]."""
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.frames, 3, self.image, self.image):
            raise ValueError(f"ViViT: expected clips [B, {self.frames}, 3, {self.image}, {self.image}], got {tuple(x.shape)}")
        b = x.shape[0]
        h = self.with_cls(self.tubelet_embed(self.tubelets(x)), self.spatial_cls, self.spatial_pos)
        for blk in self.spatial:
            h = blk(h)
        z = self.with_cls(h[:, 0].reshape(b, self.slices, self.dim), self.temporal_cls, self.temporal_pos)
        for blk in self.temporal:
            z = blk(z)
        return self.norm(z[:, 0])


# ---------------------------------------------------------------- SimCLR


class Encoder(nn.Module):
    """Clips [B, T, 3, H, W] -> h [B, feature_dim]: per-frame ResNet + temporal mean, or ViViT."""

    def __init__(self, name, frames, image, width=1.0, small_stem=False):
        super().__init__()
        self.is_resnet = name.startswith("resnet")
        if self.is_resnet:
            self.net = ResNet(name, width, small_stem)
        elif name in VIVIT_SIZES:
            self.net = Vivit(name, frames, image)
        else:
            raise ValueError(f"unknown model `{name}` ({', '.join(MODELS)})")
        self.feature_dim = self.net.feature_dim
        self.channels_last = False

    def forward(self, x):
        if not self.is_resnet:
            return self.net(x)
        b, t = x.shape[:2]
        frames = x.reshape(b * t, *x.shape[2:])
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.net(frames).reshape(b, t, -1).mean(dim=1)


class SimClr(nn.Module):
    def __init__(self, name, frames, image, projection_dim=128, temperature=0.5, width=1.0, small_stem=False):
        super().__init__()
        self.encoder = Encoder(name, frames, image, width, small_stem)
        d = self.encoder.feature_dim
        self.projector = Mlp([d, d, projection_dim], "relu")
        self.temperature = temperature

    def forward(self, x):
        """Clips -> projections z."""
        return self.projector(self.encoder(x))

    def state_dict_rust_names(self):
        """state_dict keys as our safetensors name them (the ResNet/ViViT sits directly under `encoder.`)."""
        return {k.replace("encoder.net.", "encoder."): v for k, v in self.state_dict().items()}


def nt_xent(z, temperature):
    """Mean NT-Xent over the 2N rows of z (rows i and i + N are the positive pair), in f32."""
    z = F.normalize(z.float(), dim=1, eps=1e-12)
    n2 = z.shape[0]
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    targets = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(sim, targets)


def warmup_cosine(step, total, warmup, base_lr, final_lr=0.0):
    """src/optim/schedule.rs: linear warm-up over `warmup` steps, then cosine decay to `final_lr`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))
