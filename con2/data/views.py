"""Batched SimCLR view pipeline on tensors (METHOD section 3), on any device.

All 2KN views of a batch are produced by a handful of batched ops with independent
random parameters per view; there is no per-sample Python loop. The same code runs on
CPU tensors (tests, CPU training) and on the GPU.

Differences from torchvision's PIL pipeline, by design: colour jitter works on float
images (no uint8 rounding between its four steps) and the crop is resampled with
bilinear grid sampling (no antialiasing when a large crop is shrunk).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contexts import ContextSet

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class ViewConfig:
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    mean: float = 0.5
    std: float = 0.5


@dataclass
class ViewParams:
    """Per-view random parameters; boxes are (top, left, height, width) in pixels."""

    boxes: torch.Tensor  # [M, 4] float
    hflip: torch.Tensor  # [M] bool
    factors: torch.Tensor  # [M, 4] brightness, contrast, saturation, hue (identity = 1,1,1,0)
    order: torch.Tensor  # [M, 4] permutation of the four jitter ops
    gray: torch.Tensor  # [M] bool


def _uniform(lo, hi, shape, g, device):
    return torch.rand(shape, generator=g, device=device) * (hi - lo) + lo


def sample_crop_boxes(m: int, height: int, width: int, cfg: ViewConfig, g, device, tries: int = 10):
    """torchvision RandomResizedCrop.get_params, vectorised: first of `tries` valid draws."""
    area = height * width
    target = area * _uniform(cfg.scale[0], cfg.scale[1], (m, tries), g, device)
    log_ratio = _uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), (m, tries), g, device)
    ratio = log_ratio.exp()
    w = (target * ratio).sqrt().round()
    h = (target / ratio).sqrt().round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((m,), -1, device=device))
    # fallback as torchvision: centre crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        fw, fh = width, round(width / cfg.ratio[0])
    elif in_ratio > cfg.ratio[1]:
        fh, fw = height, round(height * cfg.ratio[1])
    else:
        fw, fh = width, height
    rows = torch.arange(m, device=device)
    pick = first.clamp(min=0)
    w_sel = torch.where(first >= 0, w[rows, pick], torch.full_like(w[:, 0], fw))
    h_sel = torch.where(first >= 0, h[rows, pick], torch.full_like(h[:, 0], fh))
    u = torch.rand((m, 2), generator=g, device=device)
    top = torch.where(first >= 0, (u[:, 0] * (height - h_sel + 1)).floor(), torch.full_like(h_sel, (height - fh) // 2))
    left = torch.where(first >= 0, (u[:, 1] * (width - w_sel + 1)).floor(), torch.full_like(w_sel, (width - fw) // 2))
    return torch.stack([top, left, h_sel, w_sel], dim=1)


def sample_view_params(m: int, height: int, width: int, cfg: ViewConfig, g, device) -> ViewParams:
    boxes = sample_crop_boxes(m, height, width, cfg, g, device)
    hflip = torch.rand(m, generator=g, device=device) < cfg.hflip_p
    b, c, s, h = cfg.jitter
    factors = torch.stack(
        [
            _uniform(max(0.0, 1 - b), 1 + b, (m,), g, device),
            _uniform(max(0.0, 1 - c), 1 + c, (m,), g, device),
            _uniform(max(0.0, 1 - s), 1 + s, (m,), g, device),
            _uniform(-h, h, (m,), g, device),
        ],
        dim=1,
    )
    apply_jitter = torch.rand(m, generator=g, device=device) < cfg.jitter_p
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    factors = torch.where(apply_jitter[:, None], factors, identity)
    order = torch.rand((m, 4), generator=g, device=device).argsort(dim=1)
    gray = torch.rand(m, generator=g, device=device) < cfg.gray_p
    return ViewParams(boxes, hflip, factors, order, gray)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, hflip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (top, left, h, w) out of float images x [M,C,H,W], resize to size, flip."""
    m, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    # affine map from output [-1,1] coords to input [-1,1] coords (align_corners=False)
    sx = w / width
    sy = h / height
    cx = (2 * left + w) / width - 1
    cy = (2 * top + h) / height - 1
    sx = torch.where(hflip, -sx, sx)
    zeros = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zeros, cx], 1), torch.stack([zeros, sy, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [m, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(a, b, ratio):
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def adjust_brightness(x, f):
    return (x * f).clamp(0, 1)


def adjust_contrast(x, f):
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x, f):
    if x.shape[1] == 1:
        return x
    return _blend(x, _gray(x), f)


def adjust_hue(x, f):
    """torchvision's _rgb2hsv -> shift hue -> _hsv2rgb, batched with per-row factors."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + f.view(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    fr = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * fr)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - fr))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)  # [M, 3, 6, H, W]
    return torch.einsum("...ijk,...xijk->...xjk", mask.to(x.dtype), a4)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The four jitter ops in a per-view random order. At each of the 4 steps every
    op runs with the identity factor except on the views whose turn it is."""
    for step in range(4):
        for op_id, op in enumerate(_JITTER_OPS):
            turn = order[:, step] == op_id
            f = torch.where(turn, factors[:, op_id], torch.full_like(factors[:, op_id], _IDENTITY[op_id]))
            if op_id == 3 and not bool(((f != 0) & turn).any()):
                continue  # hue is the costly one; skip it when no view shifts hue now
            view_shape = (-1, 1, 1, 1) if op_id < 3 else (-1,)
            x = op(x, f.view(view_shape))
    return x


def random_grayscale(x: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def apply_views(x_u8: torch.Tensor, params: ViewParams, cfg: ViewConfig, dtype=torch.float32) -> torch.Tensor:
    """uint8 [M,C,H,W] + per-view params -> normalised float views [M,C,size,size]."""
    x = x_u8.float().div_(255.0)
    x = resized_crop(x, params.boxes, params.hflip, cfg.size)
    x = color_jitter(x, params.factors, params.order)
    x = random_grayscale(x, params.gray)
    x = (x - cfg.mean) / cfg.std
    return x.to(dtype)


class TensorViewPipeline:
    """uint8 samples [N,C,H,W] -> 2KN views in the con2 layout (see con2.losses.view_labels).

    With `contexts=None` (SimCLR) only the original context is used: 2N views.
    """

    def __init__(self, contexts: ContextSet | None, cfg: ViewConfig, dtype=torch.float32, channels_last=False):
        self.contexts = contexts
        self.cfg = cfg
        self.dtype = dtype
        self.channels_last = channels_last

    @property
    def n_contexts(self) -> int:
        return len(self.contexts) if self.contexts is not None else 1

    def context_images(self, x_u8: torch.Tensor) -> torch.Tensor:
        """[K*N, C, H, W] uint8, context-major."""
        if self.contexts is None:
            return x_u8
        return torch.cat(self.contexts.apply_all(x_u8))

    def __call__(self, x_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x_u8.dtype != torch.uint8 or x_u8.dim() != 4:
            raise ValueError(f"expected uint8 [N,C,H,W] images, got {x_u8.dtype} {tuple(x_u8.shape)}")
        n = x_u8.shape[0]
        per_context = self.context_images(x_u8).view(self.n_contexts, 1, n, *x_u8.shape[1:])
        both = per_context.expand(-1, 2, -1, -1, -1, -1).reshape(-1, *x_u8.shape[1:])
        params = sample_view_params(both.shape[0], x_u8.shape[2], x_u8.shape[3], self.cfg, generator, x_u8.device)
        views = apply_views(both, params, self.cfg, self.dtype)
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        return views


def normalize_only(x_u8: torch.Tensor, cfg: ViewConfig, dtype=torch.float32) -> torch.Tensor:
    """Deterministic eval view: resize to cfg.size if needed, normalise."""
    x = x_u8.float().div_(255.0)
    if x.shape[-1] != cfg.size or x.shape[-2] != cfg.size:
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - cfg.mean) / cfg.std).to(dtype)
