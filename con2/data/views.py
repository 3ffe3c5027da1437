"""Batched SimCLR view pipeline on tensors (METHOD section 3), on any device.

All 2KN views of a batch are produced by a handful of batched ops with independent
random parameters per view; there is no per-sample Python loop. The same code runs on
CPU tensors (tests, CPU training) and on the GPU.

Differences from torchvision's PIL pipeline, by design: colour jitter works on float
images (no uint8 rounding between its four steps) and the crop is resampled with
bilinear grid sampling (no antialiasing when a large crop is shrunk).

The ops here are also the reference of the native `simclr_views` kernel (csrc/), which makes
the same views from the same parameters in one pass per view; TensorViewPipeline uses it
where con2.ops.native_views allows.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
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

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"the view size must be >= 1 px, got {self.size}")


@dataclass
class ViewParams:
    """Per-view random parameters; boxes are (top, left, height, width) in pixels."""

    boxes: torch.Tensor  # [M, 4] float
    hflip: torch.Tensor  # [M] bool
    factors: torch.Tensor  # [M, 4] brightness, contrast, saturation, hue (identity = 1,1,1,0)
    order: torch.Tensor  # [M, 4] permutation of the four jitter ops
    gray: torch.Tensor  # [M] bool

    def __getitem__(self, rows: slice) -> "ViewParams":
        """The parameters of views `rows` (a chunk of the M views)."""
        return ViewParams(self.boxes[rows], self.hflip[rows], self.factors[rows], self.order[rows], self.gray[rows])


# Columns of the one uniform draw per view that every random parameter is derived from (one
# launch instead of ~15 on the GPU; the derivation is elementwise, so torch.compile fuses it).
CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params: first of 10 valid draws
_U_SCALE, _U_RATIO = slice(0, CROP_TRIES), slice(CROP_TRIES, 2 * CROP_TRIES)
_U_TOP, _U_LEFT, _U_HFLIP = 2 * CROP_TRIES, 2 * CROP_TRIES + 1, 2 * CROP_TRIES + 2
_U_FACTORS = slice(2 * CROP_TRIES + 3, 2 * CROP_TRIES + 7)
_U_JITTER = 2 * CROP_TRIES + 7
_U_ORDER = slice(2 * CROP_TRIES + 8, 2 * CROP_TRIES + 12)
_U_GRAY = 2 * CROP_TRIES + 12
N_UNIFORMS = 2 * CROP_TRIES + 13


def _between(u, lo, hi):
    return u * (hi - lo) + lo


def crop_boxes_from_uniforms(u: torch.Tensor, height: int, width: int, cfg: ViewConfig) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params, vectorised: the first of CROP_TRIES valid
    draws, else torchvision's fallback centre crop. u: the [M, N_UNIFORMS] draw."""
    area = height * width
    target = area * _between(u[:, _U_SCALE], cfg.scale[0], cfg.scale[1])
    ratio = _between(u[:, _U_RATIO], math.log(cfg.ratio[0]), math.log(cfg.ratio[1])).exp()
    w = (target * ratio).sqrt().round()
    h = (target / ratio).sqrt().round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    found = ok.any(1)
    pick = ok.to(torch.uint8).argmax(1, keepdim=True)  # first valid try (0 when none: unused)
    # fallback as torchvision: centre crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        fw, fh = width, round(width / cfg.ratio[0])
    elif in_ratio > cfg.ratio[1]:
        fh, fw = height, round(height * cfg.ratio[1])
    else:
        fw, fh = width, height
    w_sel = torch.where(found, w.gather(1, pick).squeeze(1), float(fw))
    h_sel = torch.where(found, h.gather(1, pick).squeeze(1), float(fh))
    top = torch.where(found, (u[:, _U_TOP] * (height - h_sel + 1)).floor(), float((height - fh) // 2))
    left = torch.where(found, (u[:, _U_LEFT] * (width - w_sel + 1)).floor(), float((width - fw) // 2))
    return torch.stack([top, left, h_sel, w_sel], dim=1)


def view_params_from_uniforms(u: torch.Tensor, height: int, width: int, cfg: ViewConfig):
    """(boxes, hflip, factors, order, gray) of ViewParams from the [M, N_UNIFORMS] draw."""
    boxes = crop_boxes_from_uniforms(u, height, width, cfg)
    hflip = u[:, _U_HFLIP] < cfg.hflip_p
    apply_jitter = u[:, _U_JITTER] < cfg.jitter_p
    uf = u[:, _U_FACTORS]
    columns = []
    for k, (spread, identity) in enumerate(zip(cfg.jitter, (1.0, 1.0, 1.0, 0.0))):
        lo, hi = (max(0.0, 1 - spread), 1 + spread) if k < 3 else (-spread, spread)
        columns.append(torch.where(apply_jitter, _between(uf[:, k], lo, hi), identity))
    factors = torch.stack(columns, dim=1)
    order = u[:, _U_ORDER].argsort(dim=1)  # a uniformly random permutation of the four ops
    gray = u[:, _U_GRAY] < cfg.gray_p
    return boxes, hflip, factors, order, gray


_COMPILED_PARAMS: dict = {}


def sample_view_params(m: int, height: int, width: int, cfg: ViewConfig, g, device,
                       compile: bool = False) -> ViewParams:
    """Independent random parameters for m views of height x width images. With compile=True
    (meant for CUDA) the derivation from the uniforms runs through torch.compile: a few fused
    kernels where the eager ops take ~50 launches, whose host time was a third of the native view
    pipeline's time at 224 px (docs/PERFORMANCE.md). Falls back to eager if compiling fails."""
    u = torch.rand((m, N_UNIFORMS), generator=g, device=device)
    if compile:
        key = (cfg, height, width)
        fn = _COMPILED_PARAMS.get(key)
        if fn is None:
            fn = _COMPILED_PARAMS[key] = torch.compile(
                lambda u: view_params_from_uniforms(u, height, width, cfg), dynamic=False, fullgraph=True)
        if fn is not False:
            try:
                return ViewParams(*fn(u))
            except Exception as e:  # noqa: BLE001 - any Inductor/Triton failure: stay correct, go eager
                warnings.warn(f"torch.compile of the view parameters failed ({type(e).__name__}: {e}); using eager")
                _COMPILED_PARAMS[key] = False
    return ViewParams(*view_params_from_uniforms(u, height, width, cfg))


def crop_grid(boxes: torch.Tensor, hflip: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """grid_sample grid [M, size, size, 2] for crop boxes (top, left, h, w) resized to size.

    Sample positions are those of torch's bilinear resize of the cropped image
    (align_corners=False: src = (dst + 0.5) * h / size - 0.5), clamped into the crop as resize
    clamps at the image edge, so the result equals crop-then-resize (antialias=False).
    """
    top, left, h, w = boxes.unbind(1)
    j = torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = left[:, None] + j * (w / size)[:, None] - 0.5
    ys = top[:, None] + j * (h / size)[:, None] - 0.5
    xs = torch.minimum(torch.maximum(xs, left[:, None]), (left + w - 1)[:, None])
    ys = torch.minimum(torch.maximum(ys, top[:, None]), (top + h - 1)[:, None])
    xs = torch.where(hflip[:, None], xs.flip(1), xs)  # horizontal flip after the resize
    # pixel -> normalised coordinates for grid_sample(align_corners=False)
    xs = (2 * xs + 1) / width - 1
    ys = (2 * ys + 1) / height - 1
    m = boxes.shape[0]
    return torch.stack([xs[:, None, :].expand(m, size, size), ys[:, :, None].expand(m, size, size)], dim=-1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, hflip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (top, left, h, w) out of float images x [M,C,H,W], resize to size (bilinear,
    no antialias), then flip the rows of `hflip` horizontally."""
    _, _, height, width = x.shape
    grid = crop_grid(boxes.to(torch.float32), hflip, size, height, width).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb->hsv, hue shift by per-row f [M], hsv->rgb, on float images in [0, 1].

    The hsv->rgb step uses the closed form c = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6
    (n = 5, 3, 1 for r, g, b), which equals torchvision's six-way select up to rounding and costs
    a few elementwise passes instead of a [M, 3, 6, H, W] select.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    cr = maxc - minc
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h6 = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h6 = torch.remainder(h6 + 6.0 * f.view(-1, 1, 1).to(x.dtype), 6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    w = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return maxc.unsqueeze(1) - cr.unsqueeze(1) * w


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _blend_step(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation are all clamp(f*x + (1-f)*y) with y = 0, the mean
    grey level or the grey image: one lerp covers the three, each row with its own op.
    Rows whose op is hue (or saturation on 1-channel images) get f = 1, i.e. stay as they are."""
    gray = _gray(x)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    op4 = op.view(-1, 1, 1, 1)
    y = torch.where(op4 == CONTRAST, mean, torch.where(op4 == SATURATION, gray, torch.zeros_like(mean)))
    keep = (op4 == HUE) | ((op4 == SATURATION) & (x.shape[1] == 1))
    fb = torch.where(keep, torch.ones_like(f.view(-1, 1, 1, 1)), f.view(-1, 1, 1, 1)).to(x.dtype)
    return torch.lerp(y.expand_as(x), x, fb).clamp_(0, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, dense_hue: bool = False) -> torch.Tensor:
    """ColorJitter with per-view factors [M, 4] (brightness, contrast, saturation, hue) applied
    in a per-view order [M, 4] (order[:, s] = op at step s), as torchvision's ColorJitter.

    Each of the 4 steps is one blend pass plus a hue pass on the rows whose turn it is. The hue
    rows are gathered (a data-dependent index, cheap on CPU); `dense_hue` instead computes hue for
    every row and selects, which keeps shapes static for torch.compile.
    """
    rows = torch.arange(x.shape[0], device=x.device)
    for step in range(4):
        op = order[:, step]
        f = factors[rows, op]
        x = _blend_step(x, op, f)
        if x.shape[1] == 1:
            continue
        hue_rows = (op == HUE) & (f != 0)
        if dense_hue:
            x = torch.where(hue_rows.view(-1, 1, 1, 1), adjust_hue(x, torch.where(hue_rows, f, 0.0)), x)
        else:
            idx = hue_rows.nonzero().squeeze(1)
            if idx.numel():
                # x is this function's own tensor here (made by _blend_step): update in place;
                # x[idx] rather than index_select, which is many times slower on CPU
                x.index_copy_(0, idx, adjust_hue(x[idx], f[idx]))
    return x


def random_grayscale(x: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def _views_float(x_u8: torch.Tensor, params: ViewParams, cfg: ViewConfig, dense_hue: bool) -> torch.Tensor:
    x = x_u8.float().div_(255.0)
    x = resized_crop(x, params.boxes, params.hflip, cfg.size)
    x = color_jitter(x, params.factors, params.order, dense_hue=dense_hue)
    x = random_grayscale(x, params.gray)
    return (x - cfg.mean) / cfg.std


# CPU: views are made in chunks whose float working set stays cache-sized; the eager path makes
# ~30 elementwise passes, which stream through DRAM when the whole batch is one tensor.
CPU_CHUNK_BYTES = 1 << 23


def apply_views(x_u8: torch.Tensor, params: ViewParams, cfg: ViewConfig, dtype=torch.float32,
                channels_last: bool = False) -> torch.Tensor:
    """uint8 [M,C,H,W] + per-view params -> normalised float views [M,C,size,size]."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m, c = x_u8.shape[:2]
    per_view = 4 * c * max(cfg.size * cfg.size, x_u8.shape[2] * x_u8.shape[3])
    chunk = m if x_u8.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // per_view)
    if chunk >= m:
        return _views_float(x_u8, params, cfg, dense_hue=False).to(dtype=dtype, memory_format=fmt)
    out = torch.empty((m, c, cfg.size, cfg.size), dtype=dtype, device=x_u8.device).contiguous(memory_format=fmt)
    for i in range(0, m, chunk):
        sl = slice(i, i + chunk)
        out[sl] = _views_float(x_u8[sl], params[sl], cfg, dense_hue=False)
    return out


_COMPILED: dict = {}


def _compiled_views(cfg: ViewConfig, dtype, channels_last: bool):
    """torch.compile of the whole view function (crop + jitter + grey + normalise + cast):
    Inductor fuses the ~60 elementwise passes of the eager path into a few kernels."""
    key = (cfg, dtype, channels_last)
    if key not in _COMPILED:
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def fn(x_u8, boxes, hflip, factors, order, gray):
            x = _views_float(x_u8, ViewParams(boxes, hflip, factors, order, gray), cfg, dense_hue=True)
            return x.to(dtype=dtype, memory_format=fmt)

        _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[key]


def apply_views_compiled(x_u8: torch.Tensor, params: ViewParams, cfg: ViewConfig, dtype=torch.float32,
                         channels_last: bool = False) -> torch.Tensor:
    """apply_views through torch.compile (meant for CUDA; same values up to float rounding)."""
    fn = _compiled_views(cfg, dtype, channels_last)
    return fn(x_u8, params.boxes, params.hflip, params.factors, params.order, params.gray)


def kernel_view_inputs(plan: list[tuple[int, int]], n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, context code) of every view for the native kernel. Views are context-major, as
    con2.losses.view_labels expects: view block 2k+v (context k, view v) of N rows reads sample i
    of image block b_k with the kernel applying code c_k, where (b_k, c_k) = plan[k] (the second
    part of ContextSet.kernel_plan); the images are the plan's blocks, block-major [B*N]."""
    block = torch.tensor([b for b, _ in plan], device=device).repeat_interleave(2 * n)
    code = torch.tensor([c for _, c in plan], device=device).repeat_interleave(2 * n)
    sample = torch.arange(2 * len(plan) * n, device=device) % n
    return block * n + sample, code


class TensorViewPipeline:
    """uint8 samples [N,C,H,W] -> 2KN views in the con2 layout (see con2.losses.view_labels).

    With `contexts=None` (SimCLR) only the original context is used: 2N views.
    `native`: None = the native simclr_views kernel where con2.ops.native_views says so (CPU
    with the extension built, CUDA too unless CON2_CUDA_VIEWS=compiled); True / False force it / the torch ops.
    `compile`: None = torch.compile, on CUDA inputs, the view function of the torch-ops path and
    the native path's derivation of the random parameters; eager elsewhere, and eager again if
    compiling fails. True/False force it.
    """

    def __init__(self, contexts: ContextSet | None, cfg: ViewConfig, dtype=torch.float32, channels_last=False,
                 compile: bool | None = None, native: bool | None = None):
        self.native = native
        self.contexts = contexts
        self.cfg = cfg
        self.dtype = dtype
        self.channels_last = channels_last
        self.compile = compile
        self._compile_failed = False
        self._sources: dict = {}
        # image blocks to materialise and (block, kernel code) per context: see ContextSet.kernel_plan
        self._blocks, self._plan = contexts.kernel_plan() if contexts is not None else ([()], [(0, 0)])

    @property
    def n_contexts(self) -> int:
        return len(self.contexts) if self.contexts is not None else 1

    def context_images(self, x_u8: torch.Tensor) -> torch.Tensor:
        """[K*N, C, H, W] uint8, context-major."""
        if self.contexts is None:
            return x_u8
        return torch.cat(self.contexts.apply_all(x_u8))

    def kernel_inputs(self, x_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, source, context code) for the native kernel: the image blocks of
        ContextSet.kernel_plan (just x_u8, no copy, unless a context equalizes) and per view its
        source row and the context transform the kernel applies while reading it."""
        n, device = x_u8.shape[0], x_u8.device
        blocks = self._blocks
        images = x_u8 if len(blocks) == 1 else torch.cat([ContextSet.apply_names(b, x_u8) for b in blocks])
        # the same few batch sizes every step: build each once (a few launches a step otherwise)
        key = (n, device)
        if key not in self._sources:
            if len(self._sources) >= 8:
                self._sources.clear()
            self._sources[key] = kernel_view_inputs(self._plan, n, device)
        return (images, *self._sources[key])

    def _use_native(self, device: torch.device) -> bool:
        if self.native is None:
            return ops.native_views(device)
        if self.native and not ops.native_views_kernel(device):
            raise RuntimeError(f"native=True but con2._C has no simclr_views kernel for {device.type}")
        return bool(self.native)

    def _use_compile(self, device: torch.device) -> bool:
        if self._compile_failed:
            return False
        if self.compile is None:
            return device.type == "cuda"
        return self.compile

    def __call__(self, x_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x_u8.dtype != torch.uint8 or x_u8.dim() != 4:
            raise ValueError(f"expected uint8 [N,C,H,W] images, got {x_u8.dtype} {tuple(x_u8.shape)}")
        if x_u8.shape[1] not in (1, 3) or x_u8.shape[2] < 1 or x_u8.shape[3] < 1:
            raise ValueError(f"expected uint8 [N,C,H,W] images with C in (1, 3) and H, W >= 1, "
                             f"got shape {tuple(x_u8.shape)}")
        n = x_u8.shape[0]
        if self._use_native(x_u8.device):
            # one kernel: each view reads its source image directly (no expanded copy), through
            # its context transform (no context images either, except for equalize)
            images, source, code = self.kernel_inputs(x_u8)
            params = sample_view_params(source.shape[0], x_u8.shape[2], x_u8.shape[3], self.cfg, generator,
                                        x_u8.device, compile=self._use_compile(x_u8.device))
            return ops.simclr_views(images, source, params, self.cfg.size, self.cfg.mean, self.cfg.std, self.dtype,
                                    self.channels_last, context=code)
        per_context = self.context_images(x_u8).view(self.n_contexts, 1, n, *x_u8.shape[1:])
        # block 2k+v = context k, view v (each sample's two views draw independent params)
        both = per_context.expand(-1, 2, -1, -1, -1, -1).reshape(-1, *x_u8.shape[1:])
        params = sample_view_params(both.shape[0], x_u8.shape[2], x_u8.shape[3], self.cfg, generator, x_u8.device)
        if self._use_compile(x_u8.device):
            try:
                return apply_views_compiled(both, params, self.cfg, self.dtype, self.channels_last)
            except Exception as e:  # noqa: BLE001 - any Inductor/Triton failure: stay correct, go eager
                warnings.warn(f"torch.compile of the view pipeline failed ({type(e).__name__}: {e}); using eager")
                self._compile_failed = True
        return apply_views(both, params, self.cfg, self.dtype, self.channels_last)


def normalize_only(x_u8: torch.Tensor, cfg: ViewConfig, dtype=torch.float32) -> torch.Tensor:
    """Deterministic eval view: resize to cfg.size if needed, normalise."""
    x = x_u8.float().div_(255.0)
    if x.shape[-1] != cfg.size or x.shape[-2] != cfg.size:
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - cfg.mean) / cfg.std).to(dtype)
