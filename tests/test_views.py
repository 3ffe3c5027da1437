"""The tensor view pipeline against torchvision, its random parameters, and the batch sources."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from con2.data import views as V
from con2.data.contexts import ContextSet, equalize, invert, vflip
from con2.data.split import OneClassSplit
from con2.data.batches import epoch_permutation
from con2.data.sources import TensorBatchSource, make_batch_source
from con2.losses import view_labels


def _imgs(n=6, c=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


NO_AUG = V.ViewConfig(size=20, scale=(1.0, 1.0), ratio=(1.2, 1.2), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)


# --- deterministic parts, exact against torchvision --------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_context_transforms_match_torchvision(c):
    x = _imgs(c=c)
    assert torch.equal(invert(x), TF.invert(x))
    assert torch.equal(vflip(x), TF.vertical_flip(x))
    assert torch.equal(equalize(x), torch.stack([TF.equalize(xi) for xi in x]))  # batched == per image
    assert torch.equal(x.flip(-1), TF.horizontal_flip(x))


def test_equalize_rgb_per_channel():
    x = _imgs(n=2, c=3)
    per_channel = torch.cat([TF.equalize(x[:, i : i + 1]) for i in range(3)], dim=1)
    assert torch.equal(equalize(x), per_channel)


def test_grayscale_matches_torchvision():
    x = _imgs().float() / 255
    gray = torch.tensor([True, False, True, False, True, False])
    out = V.random_grayscale(x, gray)
    ref = TF.rgb_to_grayscale(x, num_output_channels=3)
    assert torch.allclose(out[gray], ref[gray], atol=1e-6)
    assert torch.equal(out[~gray], x[~gray])


@pytest.mark.parametrize("box,flip", [((0, 0, 20, 24), False), ((3, 5, 9, 7), False), ((2, 1, 17, 13), True),
                                      ((4, 6, 8, 8), True), ((0, 0, 1, 1), False)])
@pytest.mark.parametrize("size", [16, 32])
def test_resized_crop_matches_torchvision(box, flip, size):
    x = _imgs(n=1).float() / 255
    out = V.resized_crop(x, torch.tensor([box], dtype=torch.float32), torch.tensor([flip]), size)
    ref = TF.resized_crop(x, *box, size=[size, size], antialias=False)
    if flip:
        ref = TF.horizontal_flip(ref)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_resized_crop_batched_per_row_boxes():
    x = _imgs(n=4).float() / 255
    boxes = torch.tensor([[0, 0, 20, 24], [1, 2, 10, 12], [5, 5, 15, 3], [0, 10, 7, 14]], dtype=torch.float32)
    flip = torch.tensor([False, True, False, True])
    out = V.resized_crop(x, boxes, flip, 12)
    for i in range(4):
        ref = TF.resized_crop(x[i], *[int(b) for b in boxes[i]], size=[12, 12], antialias=False)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        assert torch.allclose(out[i], ref, atol=1e-5)


@pytest.mark.parametrize("c", [1, 3])
def test_adjust_hue_matches_torchvision(c):
    x = _imgs(n=5, c=c).float() / 255
    hue = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1])
    # one factor per row, in one call
    ref = torch.cat([TF.adjust_hue(x[i : i + 1], hue[i].item()) for i in range(5)])
    torch.testing.assert_close(V.adjust_hue(x, hue), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dense", [False, True])
def test_color_jitter_per_view_order_matches_torchvision(dense, c):
    x = _imgs(n=8, c=c).float() / 255
    g = torch.Generator().manual_seed(3)
    factors = torch.stack([torch.rand(8, generator=g) * 0.8 + 0.6 for _ in range(3)]
                          + [torch.rand(8, generator=g) * 0.2 - 0.1], 1)
    factors[5] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # a view without jitter
    order = torch.rand(8, 4, generator=g).argsort(1)
    out = V.color_jitter(x, factors, order, dense_hue=dense)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(8):
        ref = x[i]
        for op in order[i].tolist():
            ref = fns[op](ref, factors[i, op].item())
        torch.testing.assert_close(out[i], ref, atol=5e-5, rtol=0)


# --- random parameters ----------------------------------------------------------------------

def test_view_param_ranges_and_rates():
    cfg = V.ViewConfig(size=32)
    m, h, w = 20000, 64, 48
    p = V.sample_view_params(m, h, w, cfg, torch.Generator().manual_seed(0), "cpu")
    top, left, bh, bw = p.boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    # same distribution as torchvision's get_params (rejection of boxes that do not fit included)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = torch.tensor([RandomResizedCrop.get_params(img, cfg.scale, cfg.ratio) for _ in range(3000)], dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / (h * w)
    assert area.mean() == pytest.approx(ref_area.mean().item(), abs=0.02)
    assert area.std() == pytest.approx(ref_area.std().item(), abs=0.02)
    assert (bw / bh).log().mean() == pytest.approx((ref[:, 3] / ref[:, 2]).log().mean().item(), abs=0.02)
    ratio = bw / bh
    inner = (area > 0.2)  # small boxes have coarse rounded ratios
    assert ratio[inner].min() >= 0.75 * 0.9 and ratio[inner].max() <= 4 / 3 * 1.1
    assert p.hflip.float().mean() == pytest.approx(0.5, abs=0.02)
    jittered = (p.factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert jittered.float().mean() == pytest.approx(0.8, abs=0.02)
    f = p.factors[jittered]
    assert f[:, :3].min() >= 0.6 and f[:, :3].max() <= 1.4 and f[:, 3].abs().max() <= 0.1
    assert p.gray.float().mean() == pytest.approx(0.2, abs=0.02)
    # each op is equally likely at each step, orders are permutations
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(m, 4))
    assert torch.allclose(torch.bincount(p.order[:, 0], minlength=4).float() / m, torch.full((4,), 0.25), atol=0.02)
    # per-view independence: flip and grey draws are uncorrelated
    corr = torch.corrcoef(torch.stack([p.hflip.float(), p.gray.float(), area]))
    assert corr[0, 1].abs() < 0.03 and corr[0, 2].abs() < 0.03


def test_crop_fallback_and_boxes_inside_small_images():
    cfg = V.ViewConfig(size=8, scale=(0.9, 1.0), ratio=(3.0, 4.0))  # impossible on a square: fallback
    p = V.sample_view_params(50, 10, 10, cfg, torch.Generator().manual_seed(0), "cpu")
    # every view: the centre crop, its ratio clamped to 3 (no box of the asked ratio fits the square)
    assert torch.equal(p.boxes, torch.tensor([[3.0, 0.0, 3.0, 10.0]]).expand(50, 4))
    for h, w in ((10, 10), (5, 13), (31, 7)):  # the default SimCLR crops on small, odd-shaped images
        top, left, bh, bw = V.sample_view_params(500, h, w, V.ViewConfig(size=8), torch.Generator().manual_seed(h),
                                                 "cpu").boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
        assert (top + bh <= h).all() and (left + bw <= w).all()
        assert (bh < h).any() and (bw < w).any()  # real crops among them, not only the fallback


# --- the pipeline and its layout --------------------------------------------------------------

CONTEXT_SETS = ["invert", "flip", "equalize", "invert,flip", "invert,equalize", "equalize,flip", "flip,equalize,invert"]


@pytest.mark.parametrize("names", CONTEXT_SETS)
def test_kernel_plan_makes_every_context(names):
    # the native kernel's contexts: a materialised block, then the code's invert / flip while reading
    ctx = ContextSet(names)
    x = _imgs(n=4, c=3, h=12, w=10)
    blocks, per_context = ctx.kernel_plan()
    assert blocks[0] == () and len(per_context) == len(ctx)
    for k, (b, code) in enumerate(per_context):
        y = ContextSet.apply_names(blocks[b], x)
        y = 255 - y if code & 1 else y
        y = y.flip(-2) if code & 2 else y
        assert torch.equal(y, ctx.apply(k, x)), (names, ctx.compositions[k], blocks[b], code)
    # only equalizing contexts are made, once per distinct part without the flip
    with_equalize = {tuple(n for n in c if n != "flip") for c in ctx.compositions if "equalize" in c}
    assert sorted(blocks[1:]) == sorted(with_equalize)


@pytest.mark.parametrize("native", [False, None])
@pytest.mark.parametrize("names", CONTEXT_SETS)
def test_each_block_is_its_context(names, native):
    ctx = ContextSet(names)
    x = _imgs(n=5, c=3, h=20, w=20)
    cfg = V.ViewConfig(size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)
    out = V.TensorViewPipeline(ctx, cfg, native=native)(x, torch.Generator().manual_seed(0))
    assert out.shape == (2 * len(ctx) * 5, 3, 20, 20)
    blocks = out.view(2 * len(ctx), 5, 3, 20, 20)
    context_labels, sample_ids = view_labels(5, len(ctx))
    for b in range(2 * len(ctx)):
        k = b // 2
        ref = (ctx.apply(k, x).float() / 255 - 0.5) / 0.5
        torch.testing.assert_close(blocks[b], ref, atol=1e-5, rtol=0)
        assert (context_labels.view(-1, 5)[b] == k).all() and torch.equal(sample_ids.view(-1, 5)[b], torch.arange(5))


def test_views_differ_and_randomness_is_per_sample():
    x = _imgs(n=1, h=32, w=32).expand(8, -1, -1, -1).contiguous()  # one image 8 times
    out = V.TensorViewPipeline(ContextSet("invert"), V.ViewConfig(size=16))(x, torch.Generator().manual_seed(1))
    blocks = out.view(4, 8, -1)
    assert not torch.allclose(blocks[0], blocks[1])  # the two views of a sample differ
    # same image, different sample slots -> different views
    d = torch.cdist(blocks[0], blocks[0])
    assert (d + torch.eye(8) * 1e9).min() > 1e-3


@pytest.mark.parametrize("dtype,cl", [(torch.float32, False), (torch.bfloat16, True)])
def test_output_dtype_and_layout(dtype, cl):
    x = _imgs(n=4, h=16, w=16)
    out = V.TensorViewPipeline(ContextSet("flip"), V.ViewConfig(size=8), dtype=dtype, channels_last=cl)(x)
    assert out.dtype == dtype and out.shape == (16, 3, 8, 8)
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert out.float().min() >= -1.0 and out.float().max() <= 1.0


def test_cpu_chunking_does_not_change_views(monkeypatch):
    x = _imgs(n=6, h=16, w=16)
    p = V.TensorViewPipeline(ContextSet("invert"), V.ViewConfig(size=16), native=False)
    a = p(x, torch.Generator().manual_seed(5))
    monkeypatch.setattr(V, "CPU_CHUNK_BYTES", 1)  # one view per chunk
    b = p(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_single_channel_pipeline():
    x = _imgs(n=3, c=1, h=16, w=16)
    out = V.TensorViewPipeline(ContextSet("equalize"), V.ViewConfig(size=12))(x, torch.Generator().manual_seed(0))
    assert out.shape == (12, 1, 12, 12) and torch.isfinite(out).all()


# --- the native simclr_views kernel against the torch ops ----------------------------------------

def _native_or_skip(device="cpu"):
    from con2 import ops

    if not ops.native_views(device):
        pytest.skip(f"no native simclr_views kernel for {device}")


@pytest.mark.parametrize("names,c,h,w,size,dtype,cl", [
    ("invert", 3, 20, 24, 16, torch.float32, False),
    ("equalize", 1, 28, 28, 28, torch.float32, False),
    ("invert,flip", 3, 13, 9, 32, torch.bfloat16, True),   # upsampling, non-square, K = 4
    ("flip", 3, 64, 64, 24, torch.float16, False),
    ("invert,flip", 1, 17, 23, 20, torch.float32, True),
    ("flip,equalize,invert", 3, 16, 16, 12, torch.float32, False),  # K = 8, half of them materialised
])
def test_native_views_match_torch_ops(names, c, h, w, size, dtype, cl):
    _native_or_skip()
    x = _imgs(n=7, c=c, h=h, w=w, seed=size)
    make = lambda native: V.TensorViewPipeline(ContextSet(names), V.ViewConfig(size=size), dtype=dtype,  # noqa: E731
                                               channels_last=cl, native=native)
    got = make(None)(x, torch.Generator().manual_seed(3))
    want = make(False)(x, torch.Generator().manual_seed(3))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    tol = dict(rtol=0, atol=5e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    # both compute in float32 and round once: in 16 bits only values near a rounding tie differ, by one step
    assert (got.float() - want.float()).abs().mean() < 1e-5


def test_native_views_opcheck_and_errors():
    _native_or_skip()
    x = _imgs(n=3, h=12, w=12)
    cfg = V.ViewConfig(size=8)
    p = V.sample_view_params(5, 12, 12, cfg, torch.Generator().manual_seed(0), "cpu")
    src = torch.tensor([0, 1, 2, 2, 0])
    args = (x, src, p.boxes, p.hflip, p.factors, p.order, p.gray, 8, 0.5, 0.5)
    torch.library.opcheck(torch.ops.con2.simclr_views.default, args + (torch.float32, False))
    torch.library.opcheck(torch.ops.con2.simclr_views.default, args + (torch.bfloat16, True))
    with pytest.raises(RuntimeError, match=r"source indices must be in \[0, 3\)"):
        torch.ops.con2.simclr_views(x, src + 1, *args[2:], torch.float32, False)
    with pytest.raises(RuntimeError, match="uint8"):
        torch.ops.con2.simclr_views(x.float(), *args[1:], torch.float32, False)
    with pytest.raises(RuntimeError, match=r"\[M, 4\]"):
        torch.ops.con2.simclr_views(x, src[:4], *args[2:], torch.float32, False)
    with pytest.raises(RuntimeError, match="empty image batch"):
        torch.ops.con2.simclr_views(x[:0], *args[1:], torch.float32, False)
    code = torch.tensor([0, 1, 2, 3, 1])
    torch.library.opcheck(torch.ops.con2.simclr_views.default, args + (torch.float32, True, code))
    with pytest.raises(RuntimeError, match=r"context codes must be in \[0, 3\]"):
        torch.ops.con2.simclr_views(x, *args[1:], torch.float32, False, code + 1)
    with pytest.raises(RuntimeError, match="context must be an integer \\[M\\] tensor"):
        torch.ops.con2.simclr_views(x, *args[1:], torch.float32, False, code[:3])
    with pytest.raises(RuntimeError, match="context must be an integer"):
        torch.ops.con2.simclr_views(x, *args[1:], torch.float32, False, code.float())


@pytest.mark.parametrize("c", [1, 3])
def test_native_context_codes_match_context_images(c):
    # the op's context code = the context image made first: exact, as the kernel reads the same bytes
    _native_or_skip()
    x = _imgs(n=4, c=c, h=15, w=11, seed=c)
    cfg = V.ViewConfig(size=13)
    src = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    code = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])
    p = V.sample_view_params(8, 15, 11, cfg, torch.Generator().manual_seed(c), "cpu")
    made = torch.stack([(lambda y: y.flip(-2) if k & 2 else y)(255 - x[i] if k & 1 else x[i])
                        for i, k in zip(src.tolist(), code.tolist())])
    got = torch.ops.con2.simclr_views(x, src, p.boxes, p.hflip, p.factors, p.order, p.gray, 13, 0.5, 0.5,
                                      torch.float32, False, code)
    want = torch.ops.con2.simclr_views(made, torch.arange(8), p.boxes, p.hflip, p.factors, p.order, p.gray, 13, 0.5,
                                       0.5, torch.float32, False)
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bad, message", [("src[3] = 3", "source index is outside"),
                                          ("order[2, 1] = 7", "op index outside")])
def test_native_views_cuda_bad_source_index_or_order_is_a_device_error(bad, message):
    # no host sync per batch on CUDA: a kernel checks the source indices and jitter orders and stops
    # with a message (a fresh process: a device-side assertion ends the CUDA context)
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from con2.data import views as V\n"
        "x = torch.zeros(3, 3, 12, 12, dtype=torch.uint8, device='cuda')\n"
        "p = V.sample_view_params(5, 12, 12, V.ViewConfig(size=8), None, 'cuda')\n"
        "src, order = torch.tensor([0, 1, 2, 0, 0], device='cuda'), p.order.clone()\n"
        f"{bad}\n"
        "torch.ops.con2.simclr_views(x, src, p.boxes, p.hflip, p.factors, order, p.gray, 8, 0.5, 0.5,"
        " torch.float32, False)\n"
        "torch.cuda.synchronize()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert message in said or "device-side assert" in said, said[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_view_params_match_eager():
    cfg = V.ViewConfig(size=32)
    got = V.sample_view_params(4096, 64, 48, cfg, torch.Generator("cuda").manual_seed(3), "cuda", compile=True)
    want = V.sample_view_params(4096, 64, 48, cfg, torch.Generator("cuda").manual_seed(3), "cuda", compile=False)
    # same uniforms; exp / sqrt may round differently in the fused kernel, which can move a
    # rounded box side by one pixel in a rare view
    assert (got.boxes != want.boxes).any(1).float().mean() < 1e-3
    assert torch.equal(got.hflip, want.hflip) and torch.equal(got.gray, want.gray)
    assert torch.equal(got.order, want.order)
    torch.testing.assert_close(got.factors, want.factors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 224)])
def test_native_views_cuda_match_torch_ops(c, size):
    from con2 import ops

    if ops._native is None or not ops._native.has_kernels("cuda", "simclr_views"):
        pytest.skip("no CUDA simclr_views kernel")
    x = _imgs(n=64, c=c, h=size, w=size + 3).cuda()
    cfg = V.ViewConfig(size=size)
    p = V.sample_view_params(128, size, size + 3, cfg, None, "cuda")
    src = torch.arange(128, device="cuda") % 64
    code = torch.arange(128, device="cuda") // 32  # every context code: none, invert, flip, both
    got = torch.ops.con2.simclr_views(x, src, p.boxes, p.hflip, p.factors, p.order, p.gray, size, 0.5, 0.5,
                                      torch.float32, True, code)
    made = x[src]
    made = torch.where((code & 1).bool().view(-1, 1, 1, 1), 255 - made, made)
    made = torch.where((code & 2).bool().view(-1, 1, 1, 1), made.flip(-2), made)
    want = V.apply_views(made, p, cfg)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-4)
    # the pipeline (invert fused into the kernel) against the torch ops on the same draws
    for names in ("invert", "flip,equalize"):
        # eager parameters in both: the compiled derivation may round a box side differently
        make = lambda native: V.TensorViewPipeline(ContextSet(names), cfg, compile=False, native=native)  # noqa: E731
        got = make(True)(x, torch.Generator("cuda").manual_seed(5))
        want = make(False)(x, torch.Generator("cuda").manual_seed(5))
        torch.testing.assert_close(got, want, rtol=0, atol=5e-4)


# --- batch sources ----------------------------------------------------------------------------

def _split(n=12, size=16, c=3):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (n, size, size, c), dtype=np.uint8)
    return OneClassSplit("t", tr, tr[:4], np.zeros(4, np.int64), tr[:0])


def test_tensor_source_determinism_and_ddp_slices():
    sp, ctx, cfg = _split(), ContextSet("invert"), V.ViewConfig(size=8)
    src = TensorBatchSource(sp.train, ctx, cfg, 6, seed=3, device="cpu")
    a = dict(src.batches_from(1))
    b = dict(src.batches_from(1, start_step=1))
    assert torch.equal(a[1], b[1])  # resume mid-epoch gives the same views
    assert not torch.equal(a[0], dict(src.batches_from(2))[0])
    ranks = [dict(TensorBatchSource(sp.train, ctx, cfg, 6, 3, "cpu", rank=r, world=2).batches_from(1)) for r in (0, 1)]
    for step in a:
        full = a[step].view(4, 6, -1)
        local = torch.cat([ranks[r][step].view(4, 3, -1) for r in (0, 1)], dim=1)
        assert torch.equal(full, local)


def test_worker_view_seeds_never_repeat_across_epochs_of_a_large_set():
    from con2.data.workers import sample_seed

    # a stride of 100,003 gave epoch 0's position 100,003 the seed (and views) of epoch 1's position 0
    n = 300_000  # a folder of this many images goes through the workers pipeline
    for seed in (0, 7, 2**62):
        edges = [(e, p) for e in range(3) for p in (0, 1, 100_002, 100_003, 100_004, n - 1)]
        seeds = [sample_seed(seed, e, p) for e, p in edges]
        assert len(set(seeds)) == len(edges) and all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(7, 0, 2**32 - 1) != sample_seed(7, 1, 0) and sample_seed(7, 0, 5) != sample_seed(8, 0, 5)


def test_worker_source_shapes_and_determinism():
    sp = _split(n=8)
    src = make_batch_source("workers", sp, ContextSet("invert"), V.ViewConfig(size=8), 4, 1, "cpu")
    src.num_workers = 0
    a = dict(src.batches_from(0))
    assert len(a) == 2 and a[0].shape == (16, 3, 8, 8) and a[0].dtype == torch.float32
    assert a[0].min() >= -1 and a[0].max() <= 1
    src.num_workers = 2  # worker processes and assignment do not change the views
    b = dict(src.batches_from(0))
    assert all(torch.equal(a[s], b[s]) for s in a)
    assert torch.equal(dict(src.batches_from(0, start_step=1))[1], a[1])


def test_worker_source_contexts_without_augmentation():
    sp = _split(n=4)
    cfg = V.ViewConfig(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)
    ctx = ContextSet("invert,flip")
    src = make_batch_source("workers", sp, ctx, cfg, 4, 0, "cpu")
    src.num_workers = 0
    views = next(src.batches_from(0))[1].view(8, 4, 3, 16, 16)
    perm = epoch_permutation(4, 0, 0)
    x = torch.from_numpy(sp.train).permute(0, 3, 1, 2)[perm]
    for b in range(8):
        ref = (ctx.apply(b // 2, x).float() / 255 - 0.5) / 0.5
        torch.testing.assert_close(views[b], ref, atol=1e-6, rtol=0)


# --- DALI (CPU pipelines here) ---------------------------------------------------------------

def _folder_split(tmp_path, n=6, size=24, c=3):
    from PIL import Image

    rng = np.random.default_rng(1)
    arrs, files = [], []
    for i in range(n):
        a = rng.integers(0, 256, (size, size, c), dtype=np.uint8)
        a[: size // 2] //= 2  # some structure so vflip is visible
        ext = "png"  # lossless: context correctness is checked exactly
        p = tmp_path / f"img{i}.{ext}"
        Image.fromarray(a[..., 0] if c == 1 else a).save(p)
        arrs.append(a)
    tr = np.stack(arrs)
    files = [str(tmp_path / f"img{i}.png") for i in range(n)]
    return OneClassSplit("f", tr, tr[:2], np.zeros(2, np.int64), tr[:0], train_files=files)


@pytest.fixture
def dali():
    from con2.data import dali as d

    if not d.available():
        pytest.skip("nvidia-dali not installed")
    return d


@pytest.mark.parametrize("c", [3, 1])
def test_dali_shapes_ranges_and_contexts(dali, tmp_path, c):
    sp = _folder_split(tmp_path, c=c)
    cfg = V.ViewConfig(size=24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)
    ctx = ContextSet("invert,flip")
    src = dali.DaliBatchSource(sp, ctx, cfg, 3, 0, "cpu")
    steps = dict(src.batches_from(0))
    assert len(steps) == 2
    v = steps[0]
    assert v.shape == (8 * 3, c, 24, 24) and v.dtype == torch.float32 and v.device.type == "cpu"
    blocks = v.view(8, 3, c, 24, 24)
    perm = src.epoch_order(0)
    x = torch.from_numpy(sp.train).permute(0, 3, 1, 2)[perm[:3]]
    for b in range(8):
        ref = (ctx.apply(b // 2, x).float() / 255 - 0.5) / 0.5
        torch.testing.assert_close(blocks[b], ref, atol=1e-5, rtol=0)
    # and with the full augmentation: ranges, views differ, deterministic per (seed, epoch)
    src = dali.DaliBatchSource(sp, ctx, V.ViewConfig(size=16), 3, 0, "cpu", dtype=torch.bfloat16, channels_last=True)
    a = dict(src.batches_from(1))
    b = dict(src.batches_from(1))
    assert a[0].dtype == torch.bfloat16 and a[0].shape == (24, c, 16, 16)
    assert a[0].is_contiguous(memory_format=torch.channels_last)
    assert a[0].float().min() >= -1.0 and a[0].float().max() <= 1.0
    assert torch.equal(a[0], b[0])
    blocks = a[0].float().reshape(8, 3, -1)
    assert not torch.allclose(blocks[0], blocks[1])


def test_dali_names_a_file_whose_pixels_are_damaged(dali, tmp_path):
    from con2.data import DataError

    sp = _folder_split(tmp_path)
    damaged = sp.train_files[3]
    raw = Path(damaged).read_bytes()
    Path(damaged).write_bytes(raw[: len(raw) // 2])  # the header intact (the loader's scan passes), pixels cut
    cfg = V.ViewConfig(size=24)
    with pytest.raises(DataError, match=f"cannot read image {re.escape(damaged)}: .*the DALI pipeline"):
        for _ in dali.DaliBatchSource(sp, ContextSet("invert"), cfg, 3, 0, "cpu").batches_from(0):
            pass


def _cropped_folder_split(tmp_path, pipeline="dali", image_size=32):
    """A real image folder loaded the paper's way (resize, then centred crop); with pipeline dali its
    parts are FolderImages (decoded from the files on access), with tensor decoded in memory."""
    from PIL import Image

    from con2.config import TrainConfig
    from con2.data import load_split

    rng = np.random.default_rng(2)
    if not (tmp_path / "good").exists():
        for cls in ("good", "bad"):
            (tmp_path / cls).mkdir()
            for i in range(6):
                a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                a[:4] = 0  # a dark border that the crop removes (40 -> 32 px: rows 0-3; the crop starts at 4)
                Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    sp = load_split(TrainConfig(dataset="folder", data_root=str(tmp_path), normal_class=["good"],
                                image_size=image_size, center_crop=24, n_train=4, pipeline=pipeline))
    assert sp.meta["pre_crop_size"] == [image_size, image_size] and sp.meta["center_crop"] == 24
    assert sp.in_memory == (pipeline == "tensor")
    return sp


IDENTITY_24 = V.ViewConfig(size=24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)


def _source_pixels(src, sp):
    views = next(iter(dict(src.batches_from(0)).values()))  # [8 * n, 3, 24, 24], block 2k + v
    n = views.shape[0] // 8

    perm = epoch_permutation(len(sp.train), 0, 0)[:n]  # both sources' epoch order (seed 0, epoch 0)
    got = views.view(8, n, 3, 24, 24)[0] * 0.5 + 0.5  # context 0, view 0, back to [0, 1]
    want = torch.from_numpy(np.asarray(sp.train)).permute(0, 3, 1, 2)[perm].float() / 255
    return got, want


def test_file_reading_sources_resize_then_crop_like_the_split(dali, tmp_path):
    sp = _cropped_folder_split(tmp_path)
    np.testing.assert_array_equal(np.asarray(sp.train), _cropped_folder_split(tmp_path, "tensor").train)
    ctx = ContextSet("invert")
    got, want = _source_pixels(dali.DaliBatchSource(sp, ctx, IDENTITY_24, 4, 0, "cpu"), sp)
    # DALI's cubic resize is not Pillow's bicubic: a few grey levels, not the dark border of an uncropped image
    assert (got - want).abs().mean() < 0.03 and got[:, :, :2].mean() > 0.2
    src = make_batch_source("workers", sp, ctx, IDENTITY_24, 4, 0, "cpu")
    src.num_workers = 0
    got, want = _source_pixels(src, sp)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # the loader's own decode and crop


def test_available_pipelines_say_what_makes_the_views_here(monkeypatch):
    from con2 import ops
    from con2.data import dali
    from con2.data.pipeline_info import available_pipelines

    info = available_pipelines()
    assert set(info) == {"tensor", "workers", "dali"}
    cpu_views = "native simclr_views kernel" if ops.native_views("cpu") else "eager torch ops, chunked"
    assert info["tensor"].startswith(f"views made on the training device: CPU {cpu_views}")
    assert info["dali"].startswith("nvidia-dali " if dali.available() else "not available (")
    assert info["workers"].startswith("torchvision ")
    monkeypatch.setattr(ops, "native_views", lambda device: False)  # without the kernel: said so
    assert "CPU eager torch ops, chunked" in available_pipelines()["tensor"]


def test_file_reading_sources_decode_as_the_loader_and_dali_refuses_gifs(dali, tmp_path):
    """The worker source reads 16-bit files as the folder loader does (scaled, not clipped to 255);
    DALI, which cannot decode GIF, names such a file instead of failing inside its pipeline."""
    from PIL import Image

    from con2.data.decode import decode_image
    from con2.data.images import FolderImages

    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = FolderImages([tmp_path / "deep.png"], (16, 16), 1)
    np.testing.assert_array_equal(deep[0], decode_image(tmp_path / "deep.png", None))
    assert deep[0].max() == 255 and FolderImages(deep.files, (16, 16), 3)[0].shape == (16, 16, 3)
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "anim.gif")
    tr = np.zeros((1, 16, 16, 1), np.uint8)
    sp = OneClassSplit("g", tr, tr, np.zeros(1, np.int64), tr[:0], train_files=[str(tmp_path / "anim.gif")])
    with pytest.raises(ValueError, match="DALI cannot decode GIF files such as .*anim.gif"):
        dali.DaliBatchSource(sp, ContextSet("invert"), IDENTITY_24, 1, 0, "cpu")


def test_dali_colour_jitter_applies_without_brightness_or_contrast_jitter(dali, tmp_path):
    # saturation / hue jitter alone once dropped out of the DALI graph with brightness / contrast
    sp = _folder_split(tmp_path, c=3)
    still = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, gray_p=0.0, jitter_p=1.0)
    plain = dali.DaliBatchSource(sp, None, V.ViewConfig(size=24, jitter=(0, 0, 0, 0), **still), 3, 0, "cpu")
    for jitter in ((0, 0, 0.8, 0), (0, 0, 0, 0.4)):
        colour = dali.DaliBatchSource(sp, None, V.ViewConfig(size=24, jitter=jitter, **still), 3, 0, "cpu")
        a, b = dict(plain.batches_from(0))[0], dict(colour.batches_from(0))[0]
        assert a.shape == b.shape and (a - b).abs().mean() > 0.01, jitter


# --- review regressions -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**31 - 1, 10**12])
def test_large_seeds_train_views(seed):
    # the derived generator seeds once overflowed torch's signed 64-bit manual_seed for any
    # --seed >= ~1.9e8 (ValueError "Overflow when unpacking long long" at the first step)
    perm = epoch_permutation(10, seed, 3)
    assert sorted(perm.tolist()) == list(range(10))
    src = TensorBatchSource(_split().train, ContextSet("invert"), V.ViewConfig(size=8), 6, seed, "cpu")
    a, b = dict(src.batches_from(2)), dict(src.batches_from(2, start_step=1))
    assert len(a) == 2 and torch.equal(a[1], b[1])
    # seeds that fitted keep their values (runs made before the fix continue unchanged)
    assert torch.equal(epoch_permutation(10, 3, 1), torch.randperm(10, generator=torch.Generator().manual_seed(300_010)))


@pytest.mark.parametrize("native", [False, None])
@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (2, 4, 8, 8), (2, 3, 0, 8)])
def test_pipeline_names_images_it_cannot_view(native, shape):
    # 2- or 4-channel images once failed deep inside the torch ops ("not enough values to unpack")
    pipe = V.TensorViewPipeline(ContextSet("invert"), V.ViewConfig(size=8), native=native)
    with pytest.raises(ValueError, match=r"C in \(1, 3\) and H, W >= 1, got shape"):
        pipe(torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(ValueError, match="view size must be >= 1"):
        V.ViewConfig(size=0)


def test_dali_centre_crops_at_the_loaders_anchors(dali, tmp_path):
    """--image-size 29 --center-crop 24: the crop starts at round(2.5) = 2 as the loader's (and
    torchvision's) does; fn.crop started at 3, so DALI trained on images a pixel off those scored."""
    sp = _cropped_folder_split(tmp_path, image_size=29)
    np.testing.assert_array_equal(np.asarray(sp.train), _cropped_folder_split(tmp_path, "tensor", 29).train)
    got, want = _source_pixels(dali.DaliBatchSource(sp, ContextSet("invert"), IDENTITY_24, 4, 0, "cpu"), sp)
    assert (got - want).abs().mean() < 0.03


def test_dali_decodes_a_shorter_side_resize_like_the_loader(dali, tmp_path):
    """--resize shorter-side on tall images: DALI keeps the aspect and the centred square as the
    loader does (its cubic filter is not Pillow's: grey levels differ a little, not the framing)."""
    from PIL import Image

    from con2.config import TrainConfig
    from con2.data import load_split

    rng = np.random.default_rng(4)
    for cls in ("good", "bad"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            # 30 wide, 37 high: the shorter side to 24 makes 24 x int(29.6) = 29, whose centred rows
            # start at round(2.5) = 2
            a = rng.integers(0, 120, (37, 30, 3), dtype=np.uint8)
            a[:4] = 255  # a bright band, framed differently by a stretch
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    kw = dict(dataset="folder", data_root=str(tmp_path), normal_class=["good"], image_size=24,
              resize="shorter-side", n_train=4)
    sp = load_split(TrainConfig(**kw, pipeline="dali"))
    np.testing.assert_array_equal(np.asarray(sp.train), load_split(TrainConfig(**kw, pipeline="tensor")).train)
    got, want = _source_pixels(dali.DaliBatchSource(sp, ContextSet("invert"), IDENTITY_24, 4, 0, "cpu"), sp)
    # the framing and size exactly the loader's (fn.resize's resize_shorter rounded the longer side,
    # fn.crop its anchor: 0.076 apart); DALI's cubic filter is not Pillow's (grey levels)
    assert (got - want).abs().mean() < 0.01


def test_view_defaults_are_methods_simclr_set_and_reach_its_bounds():
    """METHOD section 3's augmentations: the factors were only checked to stay inside their ranges,
    so a weaker jitter passed (mutation QA)."""
    cfg = V.ViewConfig(size=32)
    assert cfg.scale == (0.08, 1.0) and cfg.ratio == (3 / 4, 4 / 3) and cfg.hflip_p == 0.5
    assert cfg.jitter == (0.4, 0.4, 0.4, 0.1) and cfg.jitter_p == 0.8 and cfg.gray_p == 0.2
    assert cfg.mean == 0.5 and cfg.std == 0.5
    p = V.sample_view_params(20000, 32, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    jittered = p.factors[(p.factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)]
    torch.testing.assert_close(jittered.min(0).values, torch.tensor([0.6, 0.6, 0.6, -0.1]), atol=2e-3, rtol=0)
    torch.testing.assert_close(jittered.max(0).values, torch.tensor([1.4, 1.4, 1.4, 0.1]), atol=2e-3, rtol=0)


def test_crops_reach_every_edge_as_torchvisions():
    """torchvision draws a crop's top from 0..H-h inclusive: a draw from 0..H-h-1 never touched the
    bottom or right edge and passed (mutation QA)."""
    p = V.sample_view_params(20000, 20, 20, V.ViewConfig(size=8), torch.Generator().manual_seed(0), "cpu")
    top, left, h, w = p.boxes.unbind(1)
    assert ((top + h == 20) & (h < 20)).any() and ((left + w == 20) & (w < 20)).any()
    assert (top == 0).any() and (left == 0).any()


def test_the_plain_view_resize_is_torchvisions_antialiased_one():
    """--views 0's one view of an image of another size (mutation QA: no antialiasing passed)."""
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    want = (TF.resize(x.float() / 255, [12, 12], antialias=True) - 0.5) / 0.5
    torch.testing.assert_close(V.normalize_only(x, V.ViewConfig(size=12)), want, atol=1e-5, rtol=0)
