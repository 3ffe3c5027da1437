"""The CUDA kernels (csrc/cuda/*.cuh: the fused Con2 loss, the SimCLR views), run on the CPU.

There is no GPU here (CI has none either), so the very device code that nvcc compiles is
built as plain C++ against a small CUDA emulator (csrc/emu/cuda_emu.h: threads, barriers,
warp shuffles, dynamic shared memory, tf32 wmma with CUDA's alignment rules) and checked
against the PyTorch references. Loss: values, gradients, both heads, padding of M and D, bf16 /
fp16 inputs, the NaN-free edge cases; views: the tensor pipeline on the same parameters, with the
kernel built twice: with the exact torch-op arithmetic and with the GPU's (CON2_GPU_MATH: the
bit-trick byte conversions, the packed-pixel byte permute, saturate, one reciprocal for hue). On a
GPU the same checks run against the real kernels (tests/test_native_ops.py `fused=True`,
tests/test_views.py, marked gpu).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from con2.ops import reference

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")


def _fma_flags() -> list[str]:
    """nvcc fuses a * b + c into one FMA by default (--fmad=true); GCC does so too with -mfma, where
    this CPU has it, so the emulated kernels meet the GPU's rounding (a logit fused into exp's argument)."""
    try:
        cpu_flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("flags")), [])
    except OSError:
        cpu_flags = []
    return ["-mfma", "-ffp-contract=fast"] if "fma" in cpu_flags else []


@pytest.fixture(scope="module")
def emu():
    from torch.utils import cpp_extension

    build = Path(os.environ.get("CON2_EMU_BUILD_DIR", ROOT / "build" / "cuda_emu"))
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="con2_cuda_emu",
        sources=[str(ROOT / "csrc/emu/kernels_emu.cpp"), str(ROOT / "csrc/emu/emu_self_check.cpp")],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=["-O2"] + _fma_flags(),
        build_directory=str(build),
        is_python_module=False,
    )
    return torch.ops.con2_emu


@pytest.fixture(scope="module")
def emu_gpu_math():
    """The view kernel with its GPU arithmetic (CON2_GPU_MATH) instead of the exact torch-op floats."""
    from torch.utils import cpp_extension

    build = Path(os.environ.get("CON2_EMU_BUILD_DIR", ROOT / "build" / "cuda_emu")) / "gpu_math"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="con2_cuda_emu_gpu_math",
        sources=[str(ROOT / "csrc/emu/views_gpu_math_emu.cpp")],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=["-O2"],
        build_directory=str(build),
        is_python_module=False,
    )
    return torch.ops.con2_emu_gpu_math


@pytest.fixture(params=["exact", "gpu_math"])
def views_emu(request):
    """Both builds of the view kernel: the exact torch-op arithmetic and the GPU's."""
    return request.getfixturevalue("emu" if request.param == "exact" else "emu_gpu_math")


# The two CUDA loss drivers: the fused tiled kernels and the two-head blocked path (the default).
LOSS_KERNELS = ("con2_fwd_bwd", "con2_two_head")


def _heads(m, d0, d1, n_samples, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z0 = F.normalize(torch.randn(m, d0, generator=g, dtype=torch.float64), dim=1).to(dtype)
    z1 = F.normalize(torch.randn(m, d1, generator=g, dtype=torch.float64), dim=1).to(dtype)
    context = torch.randint(0, 2, (m,), generator=g)
    samples = torch.randint(0, n_samples, (m,), generator=g)
    return z0, z1, context, samples


def _reference(z, labels, temperature):
    x = z.float().clone().requires_grad_(True)
    loss = reference.supcon_loss(x, labels, temperature)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize(
    "m,d0,d1,n_samples,dtype",
    [
        (37, 16, 16, 5, torch.float32),      # M and D below one tile
        (130, 128, 128, 33, torch.float32),  # the training shape, M not a multiple of 32 / 64
        (65, 200, 96, 3, torch.float32),     # D padded to 256 and 128 in one call
        (96, 128, 128, 24, torch.bfloat16),  # exact-in-tf32 inputs skip the split
        (33, 7, 9, 2, torch.float16),
    ],
)
@pytest.mark.parametrize("kernel", LOSS_KERNELS)
def test_loss_kernels_match_reference(emu, kernel, m, d0, d1, n_samples, dtype):
    if kernel == "con2_two_head" and d0 != d1:
        pytest.skip("heads of different widths take the per-head path (tested on the GPU)")
    z0, z1, context, samples = _heads(m, d0, d1, n_samples, dtype, seed=m)
    losses, dz0, dz1 = getattr(emu, kernel)(z0, z1, context, samples, 0.07)
    for i, (z, labels, dz) in enumerate(((z0, context, dz0), (z1, samples, dz1))):
        loss, grad = _reference(z, labels, 0.07)
        torch.testing.assert_close(losses[i], loss, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(dz, grad, rtol=1e-4, atol=2e-6 * grad.abs().max().item())


@pytest.mark.parametrize("m", [16, 130])  # one tile / several, merged (the fused kernel's merge_lse)
@pytest.mark.parametrize("kernel", LOSS_KERNELS)
def test_loss_kernels_stay_finite_for_rows_far_from_unit_length(emu, kernel, m):
    """Logits |s| / tau ~ 1e11: with s * inv_tau fused into exp's argument (an FMA) the largest
    logit's rounding error (thousands) made every exp underflow, and the loss was -inf. (On a CPU
    without FMA the emulator cannot contract, and this checks the values only.)"""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(m, 8, generator=g) * 300
    labels = torch.arange(m) % 4
    losses, dz0, _ = getattr(emu, kernel)(z, z, labels, labels, 1e-6)
    loss, grad = _reference(z, labels, 1e-6)
    assert losses.isfinite().all() and dz0.isfinite().all()
    torch.testing.assert_close(losses[0], loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(dz0, grad, rtol=1e-3, atol=1e-5 * grad.abs().max().item())


@pytest.mark.parametrize("kernel", LOSS_KERNELS)
def test_loss_kernels_let_an_overflow_show(emu, kernel):
    """|z|^2 overflows float32, or a row is NaN: the fused kernel turned a NaN sum into lse = 0 and
    its max (fmaxf) dropped NaN columns, leaving a finite loss; a clamp of exp's argument must keep
    NaN too. The CPU kernel and the reference give NaN."""
    z = torch.tensor([[1e20, 0.0], [1e20, 0.0], [1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    losses, dz0, _ = getattr(emu, kernel)(z, z, labels, labels, 1.0)
    assert not losses[0].isfinite() and not dz0.isfinite().all()
    z = F.normalize(torch.randn(65, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    z[64] = float("nan")  # alone in the last tile of 64 columns, with a label of its own
    labels = torch.cat([torch.arange(64) % 4, torch.tensor([9])])
    losses, dz0, _ = getattr(emu, kernel)(z, z, labels, labels, 0.1)
    assert not losses[0].isfinite() and not dz0.isfinite().all()


@pytest.mark.parametrize("kernel", LOSS_KERNELS)
def test_loss_kernels_edge_cases(emu, kernel):
    run = getattr(emu, kernel)
    # M = 1 (no other row at all), a pair, rows without positives, duplicate rows, tau = 1
    for m, labels in [(1, [0]), (2, [0, 1]), (2, [3, 3]), (5, [0, 1, 2, 3, 4])]:
        z = F.normalize(torch.randn(m, 8), dim=1)
        lab = torch.tensor(labels)
        losses, dz0, dz1 = run(z, z, lab, lab, 1.0)
        loss, grad = _reference(z, lab, 1.0)
        assert torch.isfinite(losses).all() and torch.isfinite(dz0).all()
        torch.testing.assert_close(losses, torch.stack([loss, loss]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dz0, grad, rtol=1e-5, atol=1e-6)
    z = F.normalize(torch.randn(3, 8), dim=1).repeat(24, 1)  # 72 rows, three distinct
    lab = torch.arange(72) % 2
    losses, dz0, _ = run(z, z, lab, lab, 0.05)
    loss, grad = _reference(z, lab, 0.05)
    torch.testing.assert_close(losses[0], loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dz0, grad, rtol=1e-4, atol=1e-6)


def test_two_head_kernel_applies_only_where_it_should(emu):
    # where it does not apply, the CUDA op takes the per-head path
    lab = torch.zeros(3000, dtype=torch.long)
    z = torch.zeros(3000, 4)  # 2 x 3000^2 floats > 64 MB
    with pytest.raises(RuntimeError, match="does not apply"):
        emu.con2_two_head(z, z, lab, lab, 0.1)
    with pytest.raises(RuntimeError, match="does not apply"):  # heads of different widths
        emu.con2_two_head(torch.zeros(8, 4), torch.zeros(8, 5), lab[:8], lab[:8], 0.1)


def test_emulator_computes_wmma_and_shuffles(emu):
    a, b = torch.randn(16, 8), torch.randn(8, 16)
    out = emu.self_check(a, b, 0)
    tf32 = lambda t: (t.view(torch.int32) + 0x1000 & ~0x1FFF).view(torch.float32)  # noqa: E731
    torch.testing.assert_close(out[:256].view(16, 16), tf32(a) @ tf32(b), rtol=1e-6, atol=1e-6)
    assert out[256:].tolist() == [float(sum(range(32)))] * 32 + [float(sum(range(32, 64)))] * 32


@pytest.mark.parametrize(
    "mode,message",
    [(1, "not 32-byte aligned"), (2, "not rounded to tf32"), (3, "thread 5 failed"), (4, "grid dimensions")],
)
def test_emulator_reports_faults(emu, mode, message):
    with pytest.raises(RuntimeError, match=message):
        emu.self_check(torch.rand(16, 8) + 0.1, torch.rand(8, 16), mode)


# ------------------------------------------------------------------ SimCLR views kernel
@pytest.mark.parametrize(
    "c,h,size,dtype,channels_last",
    [(1, 28, 28, torch.float32, False), (3, 17, 24, torch.float32, True), (3, 32, 16, torch.bfloat16, True)],
)
def test_views_kernel_matches_tensor_pipeline(views_emu, c, h, size, dtype, channels_last):
    from con2.data.views import ViewConfig, apply_views, sample_view_params

    g = torch.Generator().manual_seed(c * h)
    images = torch.randint(0, 256, (6, c, h, h + 3), dtype=torch.uint8, generator=g)
    source = torch.tensor([0, 1, 2, 3, 4, 5, 5, 0, 2, 1])
    cfg = ViewConfig(size=size)
    params = sample_view_params(len(source), h, h + 3, cfg, g, "cpu")
    params.factors[0] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # one view without jitter
    code = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 1])  # context transforms read by the kernel
    made = images[source]
    made = torch.where((code & 1).bool().view(-1, 1, 1, 1), 255 - made, made)
    made = torch.where((code & 2).bool().view(-1, 1, 1, 1), made.flip(-2), made)
    want = apply_views(made, params, cfg, dtype, channels_last)
    got = views_emu.simclr_views(images, source, params.boxes, params.hflip, params.factors, params.order,
                                 params.gray, size, cfg.mean, cfg.std, dtype, channels_last, code)
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    tol = dict(rtol=0, atol=5e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.parametrize("c,h,size", [(3, 17, 24), (1, 40, 16), (3, 40, 16)])
def test_views_kernel_contrast_first_sums_source_rows(views_emu, c, h, size):
    # contrast as the first jitter step: its mean grey comes from per-source-row sums (when the
    # rows span < 2 x size; else, as for large crops of the 40 px images, the per-pixel pass)
    from con2.data.views import CONTRAST, ViewConfig, apply_views, sample_view_params

    g = torch.Generator().manual_seed(h + c)
    images = torch.randint(0, 256, (4, c, h, h + 5), dtype=torch.uint8, generator=g)
    source = torch.arange(16) % 4
    cfg = ViewConfig(size=size)
    params = sample_view_params(16, h, h + 5, cfg, g, "cpu")
    order = params.order.clone()
    rest = order[order != CONTRAST].view(16, 3)
    params.order = torch.cat([torch.full((16, 1), CONTRAST), rest], 1)
    params.factors[:, CONTRAST] = torch.linspace(0.3, 1.8, 16)  # strong, and never 1
    code = torch.arange(16) % 4
    made = images[source]
    made = torch.where((code & 1).bool().view(-1, 1, 1, 1), 255 - made, made)
    made = torch.where((code & 2).bool().view(-1, 1, 1, 1), made.flip(-2), made)
    want = apply_views(made, params, cfg)
    got = views_emu.simclr_views(images, source, params.boxes, params.hflip, params.factors, params.order,
                                 params.gray, size, cfg.mean, cfg.std, torch.float32, False, code)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-4)


# ------------------------------------------------------------------ one-pass Mahalanobis kernel
@pytest.mark.parametrize("q,d,k,dtype", [(70, 40, 33, torch.float32), (65, 96, 130, torch.float32),
                                         (3, 512, 16, torch.float32), (50, 64, 64, torch.bfloat16)])
def test_mahalanobis_kernel_matches_reference(emu, q, d, k, dtype):
    g = torch.Generator().manual_seed(q + d + k)
    x = torch.randn(q, d, generator=g).to(dtype)
    mean = torch.randn(d, generator=g)
    w = torch.randn(d, k, generator=g) / d**0.5
    got = emu.mahalanobis_sq(x, mean, w)
    want = ((x.double() - mean.double()) @ w.double()).pow(2).sum(1)
    assert got.dtype == torch.float32 and got.shape == (q,)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-6)
