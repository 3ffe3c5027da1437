"""Tests of the native ops (con2._C) against the pure-PyTorch references.

Parametrised over devices (cpu; cuda marked `gpu`, skipped without a GPU or without
CUDA kernels) and dtypes. Skipped entirely when the extension is not built.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import con2.ops as ops
from con2.ops import reference

try:
    from con2.ops import native
except Exception as exc:  # extension not built / built against another torch
    pytest.skip(f"con2._C not available: {exc}", allow_module_level=True)


def _cuda_ok() -> bool:
    return torch.cuda.is_available() and native.has_kernels("cuda")


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")],
    ),
]
LOSS_DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype != torch.float64 else dict(rtol=1e-9, atol=1e-10)


def _batch(m, d, n_classes, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1).to(dtype).to(device)
    labels = torch.randint(0, n_classes, (m,), generator=g).to(device)
    return z, labels


def _assert_top1_equal(vals, idx, v_ref, i_ref):
    """Indices equal to the float32 reference, except at near-ties (|dv| <= 2e-6) where
    a different float32 summation order may legitimately pick the other row."""
    vals, idx = vals.cpu(), idx.cpu()
    v_ref, i_ref = v_ref.cpu(), i_ref.cpu()
    same = idx == i_ref
    near_tie = (vals - v_ref).abs() <= 2e-6
    assert bool((same | near_tie).all()), f"{int((~same).sum())} index mismatches"
    assert same.float().mean() >= 0.99


def _loss_and_grad(fn, z, labels, temperature=0.07):
    z = z.detach().clone().requires_grad_(True)
    loss = fn(z, labels, temperature)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


# ------------------------------------------------------------------ loss values / grads
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOSS_DTYPES, ids=str)
@pytest.mark.parametrize("m,d,n_classes", [(1, 8, 1), (2, 8, 1), (37, 16, 5), (300, 64, 4), (257, 128, 200)])
def test_supcon_matches_reference(device, dtype, m, d, n_classes):
    z, labels = _batch(m, d, n_classes, device, dtype)
    with torch.no_grad():  # forward-only op
        torch.testing.assert_close(native.supcon_loss(z, labels), reference.supcon_loss(z, labels), **_tol(dtype))
    l_nat, g_nat = _loss_and_grad(native.supcon_loss, z, labels)
    l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z, labels)
    assert l_nat.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert g_nat.dtype == dtype and g_nat.shape == z.shape
    assert torch.isfinite(l_nat) and torch.isfinite(g_nat.float()).all()
    torch.testing.assert_close(l_nat, l_ref, **_tol(dtype))
    if dtype == torch.bfloat16:  # both gradients are rounded to bf16 at the end
        torch.testing.assert_close(g_nat.float(), g_ref.float(), rtol=1e-2, atol=1e-4)
    else:
        torch.testing.assert_close(g_nat, g_ref, **_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_con2_loss_matches_reference(device):
    zc, cl = _batch(96, 32, 4, device, seed=1)
    zs, _ = _batch(96, 32, 4, device, seed=2)
    sid = torch.arange(96, device=device) // 4
    for alpha in (0.0, 0.3, 1.0):
        a = [t.clone().requires_grad_() for t in (zc, zs)]
        b = [t.clone().requires_grad_() for t in (zc, zs)]
        ln = ops.con2_loss(a[0], a[1], cl, sid, alpha, 0.1)
        lr = reference.con2_loss(b[0], b[1], cl, sid, alpha, 0.1)
        torch.testing.assert_close(ln, lr, rtol=1e-5, atol=1e-6)
        gn = torch.autograd.grad(ln, a, allow_unused=True)
        gr = torch.autograd.grad(lr, b)
        for x, y in zip(gn, gr):
            torch.testing.assert_close(torch.zeros_like(y) if x is None else x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_dispatcher_uses_native(device):
    if ops._native is None:
        pytest.skip(f"dispatcher uses the references: {ops.NATIVE_IMPORT_ERROR}")
    assert ops.native_available(device)
    z, labels = _batch(20, 8, 3, device)
    torch.testing.assert_close(ops.supcon_loss(z, labels), reference.supcon_loss(z, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    z, labels = _batch(10, 5, 3, device, torch.float64, seed=3)
    labels[-1] = 99  # one anchor without positives
    z.requires_grad_(True)
    for op in (torch.ops.con2.supcon_fwd, torch.ops.con2.supcon_fwd_bwd):  # separate / fused backward
        fn = lambda x: op(x, labels, 0.5)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)
    zs = torch.randn(10, 3, dtype=torch.float64, device=device, requires_grad=True)
    sid = torch.arange(10, device=device) // 2
    both = lambda a, b: torch.ops.con2.con2_fwd_bwd(a, b, labels, sid, 0.5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(both, (z, zs), eps=1e-6, atol=1e-6)
    # unnormalised rows and a small temperature as well
    z2 = (torch.randn(9, 4, dtype=torch.float64, device=device) * 0.5).requires_grad_(True)
    lab2 = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0], device=device)
    assert torch.autograd.gradcheck(lambda x: torch.ops.con2.supcon_fwd(x, lab2, 0.1)[0], (z2,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_second_derivative_through_the_native_loss_is_refused(device):
    """The native backwards are not differentiable: under create_graph=True (a gradient penalty) the
    second derivative silently lacked the loss's own term. It is an error naming the way out, and
    the first derivative through the same call is unchanged."""
    x = torch.randn(10, 6, dtype=torch.float64, device=device)
    labels = torch.randint(0, 3, (10,), device=device)
    sid = torch.arange(10, device=device) // 2
    losses = {"supcon": lambda z: native.supcon_loss(z, labels, 0.2),
              "con2": lambda z: native.con2_loss(z, z.flip(1), labels, sid, 0.5, 0.2),
              "supcon_fwd": lambda z: torch.ops.con2.supcon_fwd(z, labels, 0.2)[0]}
    for name, loss in losses.items():
        w = torch.eye(6, dtype=torch.float64, device=device, requires_grad=True)
        with pytest.raises(RuntimeError, match="no second derivative.*CON2_DISABLE_EXT"):
            torch.autograd.grad(loss(F.normalize(x @ w, dim=1)), w, create_graph=True)
        (g,) = torch.autograd.grad(loss(F.normalize(x @ w, dim=1)), w)
        ref = {"supcon": lambda z: reference.supcon_loss(z, labels, 0.2),
               "con2": lambda z: reference.con2_loss(z, z.flip(1), labels, sid, 0.5, 0.2)}.get(name, losses["supcon"])
        (want,) = torch.autograd.grad(ref(F.normalize(x @ w, dim=1)), w)
        torch.testing.assert_close(g, want, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_loss_nan_free_edge_cases(device, dtype):
    # M = 1 (no positives, empty denominator), duplicate rows, bf16
    for z, labels in [
        (F.normalize(torch.randn(1, 16), dim=1), torch.zeros(1, dtype=torch.long)),
        (F.normalize(torch.ones(8, 16), dim=1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])),
        (F.normalize(torch.randn(1, 16), dim=1).repeat(6, 1), torch.arange(6)),
    ]:
        z, labels = z.to(device, dtype), labels.to(device)
        l_nat, g_nat = _loss_and_grad(native.supcon_loss, z, labels, 0.05)
        l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z, labels, 0.05)
        assert torch.isfinite(l_nat) and torch.isfinite(g_nat.float()).all()
        torch.testing.assert_close(l_nat, l_ref.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g_nat.float(), g_ref.float(), rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [16, 3000])  # the fused single-block path / the blockwise path on the CPU
def test_loss_stays_finite_for_rows_far_from_unit_length(device, m):
    """Logits |s| / tau ~ 1e11: with s * inv_tau fused into exp's argument (an FMA, -mfma) the
    largest logit's rounding error (thousands) made every exp underflow: the loss was -inf."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(m, 8, generator=g) * 300).to(device)
    labels = (torch.arange(m) % 4).to(device)
    l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z, labels, 1e-6)
    for fn in (native.supcon_loss, lambda z, labels, t: native.con2_loss(z, z, labels, labels, 1.0, t) / 2):
        l_nat, g_nat = _loss_and_grad(fn, z, labels, 1e-6)
        assert torch.isfinite(l_nat) and torch.isfinite(g_nat).all()
        torch.testing.assert_close(l_nat, l_ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(g_nat, g_ref, rtol=1e-3, atol=1e-5 * g_ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_loss_where_one_row_dominates_in_norm(device):
    """A self logit far above the positives' (|z_0|^2 = 1e20 against 1e10): the CPU kernel summed the
    positives with the anchor's own logit, then subtracted it, and the positives were lost (7.5e9
    for a loss of 5e9)."""
    import math

    z = torch.tensor([[1e10, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], device=device)
    labels = torch.zeros(4, dtype=torch.long, device=device)
    expected = (math.log(3) + 3 * (1e10 - (1e10 + 2) / 3)) / 4
    assert reference.supcon_loss(z.double(), labels, 1.0).item() == pytest.approx(expected, rel=1e-9)
    for fn in (native.supcon_loss, lambda z, labels, t: native.con2_loss(z, z, labels, labels, 1.0, t) / 2):
        loss, grad = _loss_and_grad(fn, z, labels, 1.0)
        assert loss.item() == pytest.approx(expected, rel=1e-6) and torch.isfinite(grad).all()
    assert torch.ops.con2.supcon_fwd(z, labels, 1.0)[0].item() == pytest.approx(expected, rel=1e-6)


def test_reference_loss_masks_the_anchor_whatever_the_scale():
    """The reference (the test oracle and the fallback) masked the anchor's own logit with -1e9:
    a row whose other logits are all below that (|s| / tau ~ 1e10) took its own into the
    denominator (9.67e9 for a loss of 6.67e9)."""
    import math

    z = torch.tensor([[1e5, 0.0], [-1e5, 0.0], [-1e5, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    x = z.clone().requires_grad_(True)
    loss = reference.supcon_loss(x, labels, 1.0)
    assert loss.item() == pytest.approx((math.log(2) + 2e10) / 3, rel=1e-9)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    for dtype in (torch.float64, torch.float32):  # float32's gradient is another (1e10 logits, 1e3 apart)
        l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z.to(dtype), labels, 1.0)
        l_nat, g_nat = _loss_and_grad(native.supcon_loss, z.to(dtype), labels, 1.0)
        assert l_ref.item() == pytest.approx(loss.item(), rel=1e-6) and l_nat.item() == pytest.approx(l_ref.item())
        torch.testing.assert_close(g_nat, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_of_overflowing_rows_is_not_finite(device):
    """|z|^2 overflows float32: the loss and its gradient say so (NaN / inf), so that a NaN check
    skips the step, rather than a finite gradient computed from the rest."""
    z = torch.tensor([[1e20, 0.0], [1e20, 0.0], [1.0, 0.0], [1.0, 1.0]], device=device)
    labels = torch.tensor([0, 0, 1, 1], device=device)
    for fn in (native.supcon_loss, lambda z, labels, t: native.con2_loss(z, z, labels, labels, 1.0, t)):
        loss, grad = _loss_and_grad(fn, z, labels, 1.0)
        assert not torch.isfinite(loss) and not torch.isfinite(grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_loss_non_contiguous(device):
    base, labels2 = _batch(80, 64, 4, device)
    z = base[::2, ::2]  # strided rows and columns
    labels = labels2[::2]
    assert not z.is_contiguous() and not labels.is_contiguous()
    l_nat, g_nat = _loss_and_grad(native.supcon_loss, z, labels)
    l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z.contiguous(), labels.contiguous())
    torch.testing.assert_close(l_nat, l_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_nat, g_ref, rtol=1e-4, atol=1e-6)
    zt = base[:40].t().contiguous().t()  # column-major
    l2, g2 = _loss_and_grad(native.supcon_loss, zt, labels2[:40])
    l3, g3 = _loss_and_grad(reference.supcon_loss, base[:40], labels2[:40])
    torch.testing.assert_close(l2, l3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, g3, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("m", [2048, 3000])  # fused single-block path / blockwise path
def test_loss_cpu_large_m_matches_reference(m):
    z, labels = _batch(m, 128, 4, "cpu", seed=5)
    l_nat, g_nat = _loss_and_grad(native.supcon_loss, z, labels)
    l_ref, g_ref = _loss_and_grad(reference.supcon_loss, z, labels)
    torch.testing.assert_close(l_nat, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_nat, g_ref, rtol=1e-3, atol=1e-7)


def test_loss_under_autocast_cpu():
    z, labels = _batch(64, 32, 4, "cpu")
    w = torch.randn(32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = z @ w  # bf16 under autocast
        loss = native.supcon_loss(F.normalize(h, dim=1), labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(w.grad).all()


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(zc, zs, cl, sid):
        return ops.con2_loss(F.normalize(zc, dim=1), F.normalize(zs, dim=1), cl, sid, 0.5, 0.1)

    zc, cl = _batch(32, 16, 4, "cpu", seed=7)
    zs, _ = _batch(32, 16, 4, "cpu", seed=8)
    sid = torch.arange(32) // 4
    compiled = torch.compile(step, fullgraph=True)
    a = [t.clone().requires_grad_() for t in (zc, zs)]
    b = [t.clone().requires_grad_() for t in (zc, zs)]
    lc = compiled(*a, cl, sid)
    le = step(*b, cl, sid)
    torch.testing.assert_close(lc, le)
    lc.backward()
    le.backward()
    torch.testing.assert_close(a[0].grad, b[0].grad)
    torch.testing.assert_close(a[1].grad, b[1].grad)


@pytest.mark.parametrize("device", DEVICES)
def test_con2_loss_under_autocast(device):
    # con2_fwd_bwd's autocast and autograd are C++ (csrc/autograd.cpp): bf16 heads are upcast,
    # the loss is float32, and the gradients reach the bf16 producer in its dtype
    zc, cl = _batch(64, 32, 4, device, seed=3)
    zs, _ = _batch(64, 32, 4, device, seed=4)
    sid = torch.arange(64, device=device) // 4
    w = torch.eye(32, device=device).requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        hc, hs = zc @ w, zs @ w
        assert hc.dtype == torch.bfloat16
        loss = ops.con2_loss(hc, hs, cl, sid, 0.5, 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    ref_w = torch.eye(32, device=device).requires_grad_()
    ref = reference.con2_loss(zc.bfloat16().float() @ ref_w, zs.bfloat16().float() @ ref_w, cl, sid, 0.5, 0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_direct_op_calls_with_grad_requiring_inputs(device):
    # The kernels must not trip autograd checks (out= GEMMs) when called directly.
    z, labels = _batch(16, 8, 3, device)
    z.requires_grad_(True)
    loss, lse, npos = torch.ops.con2.supcon_fwd(z, labels, 0.1)
    assert not lse.requires_grad and not npos.requires_grad
    dz = torch.ops.con2.supcon_bwd(torch.ones((), device=device), z, labels, lse, npos, 0.1)
    _, dz2 = torch.ops.con2.supcon_fwd_bwd(z, labels, 0.1)
    torch.testing.assert_close(dz, dz2.to(dz.dtype))
    bank = torch.randn(50, 8, device=device, requires_grad=True)
    native.top1_cosine(torch.randn(3, 8, device=device, requires_grad=True), bank)
    native.mahalanobis_sq(z, torch.zeros(8, device=device, requires_grad=True), torch.eye(8, device=device, requires_grad=True))


# ------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_all_ops(device):
    z, labels = _batch(12, 8, 3, device)
    zr = z.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.con2.supcon_fwd.default, (zr, labels, 0.2))
    torch.library.opcheck(torch.ops.con2.supcon_fwd_bwd.default, (zr, labels, 0.2))
    _, lse, npos = torch.ops.con2.supcon_fwd(z, labels, 0.2)
    grad = torch.ones((), device=device)
    torch.library.opcheck(torch.ops.con2.supcon_bwd.default, (grad, z, labels, lse, npos, 0.2))
    zs = torch.randn(12, 6, device=device).requires_grad_(True)
    sid = torch.arange(12, device=device) // 4
    for fused in (False, True):
        torch.library.opcheck(torch.ops.con2.con2_fwd_bwd.default, (zr, zs, labels, sid, 0.2, fused))
    q = torch.randn(5, 8, device=device)
    b = torch.randn(30, 8, device=device)
    torch.library.opcheck(torch.ops.con2.top1_cosine.default, (q, b, b.norm(dim=1)))
    x = torch.randn(7, 8, device=device)
    for fused in (False, True):
        torch.library.opcheck(torch.ops.con2.mahalanobis_sq.default,
                              (x, torch.randn(8, device=device), torch.randn(8, 6, device=device), fused))


# ------------------------------------------------------------------ top1_cosine
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("q,n,d", [(1, 1, 4), (33, 5000, 64), (130, 20000, 96)])
def test_top1_matches_reference(device, dtype, q, n, d):
    g = torch.Generator().manual_seed(q + n)
    queries = torch.randn(q, d, generator=g).to(device, dtype)
    bank = (torch.randn(n, d, generator=g) * (0.5 + torch.rand(n, 1, generator=g))).to(device, dtype)
    v_nat, i_nat = native.top1_cosine(queries, bank)
    v_ref, i_ref = reference.top1_cosine(queries, bank)
    assert v_nat.dtype == torch.float32 and i_nat.dtype == torch.int64
    _assert_top1_equal(v_nat, i_nat, v_ref, i_ref)
    torch.testing.assert_close(v_nat, v_ref, rtol=1e-5, atol=1e-6)
    norms = reference.row_norms(bank, "bank")
    v2, i2 = native.top1_cosine(queries, bank, norms)
    _assert_top1_equal(v2, i2, v_ref, i_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_top1_non_contiguous_and_duplicates(device):
    g = torch.Generator().manual_seed(11)
    queries = torch.randn(64, 40, generator=g).to(device)[::2, ::2]
    bank = torch.randn(3000, 40, generator=g).to(device)[::3, ::2]
    v, i = native.top1_cosine(queries, bank)
    v_ref, i_ref = reference.top1_cosine(queries.contiguous(), bank.contiguous())
    _assert_top1_equal(v, i, v_ref, i_ref)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)
    # exact ties: duplicated bank rows -> lowest index, as in the reference
    dup = torch.cat([bank[:10], bank[:10]])
    _, i_dup = native.top1_cosine(bank[:10] * 2.0, dup)
    assert torch.equal(i_dup.cpu(), torch.arange(10))


@pytest.mark.parametrize("device", DEVICES)
def test_top1_errors_match_reference(device):
    q = torch.randn(4, 8, device=device)
    bank = torch.randn(10, 8, device=device)
    bank[3] = 0
    for args in [(q, bank), (torch.zeros(2, 8, device=device), bank[:3]), (q, torch.randn(5, 7, device=device))]:
        with pytest.raises(ValueError) as e_ref:
            reference.top1_cosine(*args)
        with pytest.raises(ValueError) as e_nat:
            native.top1_cosine(*args)
        assert str(e_nat.value) == str(e_ref.value)


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_loss_rejects_bad_inputs_in_both_implementations(impl):
    """The reference (the fallback when the extension is missing) refuses what the kernels refuse,
    instead of returning NaN or a wrong value."""
    z, labels = _batch(8, 4, 2, "cpu")
    temperature = r"temperature must be a number in \[1e-06, 3.403e\+38\] \(the float32 kernels' range\), got "
    bad = [  # (z, labels, temperature), the error, what it says
        ((z, labels, 0.0), ValueError, temperature + "0.0"), ((z, labels, -0.1), ValueError, temperature + "-0.1"),
        ((z, labels, float("nan")), ValueError, temperature + "nan"),
        ((z, labels, float("inf")), ValueError, temperature + "inf"),
        ((z, labels[:, None], 0.07), ValueError, r"labels must have shape \[8\], got \(8, 1\)"),
        ((z, labels[:5], 0.07), ValueError, r"labels must have shape \[8\], got \(5,\)"),
        ((z, labels.float(), 0.07), TypeError, "labels must be an integer tensor, got torch.float32"),
        ((z[0], labels, 0.07), ValueError, r"z must be a 2-D \[M, D\] tensor, got shape \(4,\)"),
        ((torch.ones(8, 4, dtype=torch.int64), labels, 0.07), TypeError, "z must be floating point, got torch.int64"),
        ((z[:0], labels[:0], 0.07), ValueError, "z is empty"),
        # below 1e-6 the logits reach the diagonal mask's scale (the kernel returned -inf at 1e-11); past
        # float32's largest the kernel's 1/T was NaN (the reference's 1/T a float64 number)
        ((z, labels, 1e-11), ValueError, temperature + "1e-11"), ((z, labels, 1e100), ValueError, temperature + "1e"),
        ((z[:, :0], labels, 0.07), ValueError, r"z has no columns \(D = 0\)"),
        ((z.numpy(), labels, 0.07), TypeError, r"z must be a torch.Tensor, got numpy.ndarray \(torch.from_numpy"),
        ((z, labels.tolist(), 0.07), TypeError, "labels must be a torch.Tensor, got list"),
    ]
    for args, error, says in bad:
        with pytest.raises(error, match=says):
            impl.supcon_loss(*args)
    with pytest.raises((ValueError, RuntimeError), match="rows"):
        impl.con2_loss(z, z[:6], labels, labels[:6], 0.5)
    for alpha in (float("nan"), float("inf"), True, None, "0.5"):  # "0.5" was taken, NaN gave a NaN loss
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            impl.con2_loss(z, z, labels, labels, alpha)
    with pytest.raises(TypeError, match="alpha must be a number, not a tensor that requires grad"):
        impl.con2_loss(z, z, labels, labels, torch.tensor(0.5, requires_grad=True))
    assert impl.con2_loss(z, z, labels, labels, torch.tensor(0.5)) == impl.con2_loss(z, z, labels, labels, 0.5)


def test_loss_ops_reject_infinite_temperature():
    """1 / inf = 0 made every logit 0: the ops returned NaN or a meaningless loss and gradient."""
    z, labels = _batch(8, 4, 2, "cpu")
    _, lse, npos = torch.ops.con2.supcon_fwd(z, labels, 0.1)
    calls = [
        lambda t: torch.ops.con2.supcon_fwd(z, labels, t),
        lambda t: torch.ops.con2.supcon_fwd_bwd(z, labels, t),
        lambda t: torch.ops.con2.supcon_bwd(torch.ones(()), z, labels, lse, npos, t),
        lambda t: torch.ops.con2.con2_fwd_bwd(z, z, labels, labels, t, False),
        lambda t: native.con2_loss(z.clone().requires_grad_(), z, labels, labels, 0.5, t),
    ]
    for call in calls:
        for t in (float("inf"), -float("inf")):
            with pytest.raises((RuntimeError, ValueError), match="temperature"):  # op / checked wrapper
                call(t)


def test_reference_ops_compute_in_float32_under_autocast():
    """Like the native ops: autocast must not downcast the reference's products to bf16."""
    z, labels = _batch(64, 32, 4, "cpu")
    bank = torch.randn(50, 32)
    x, mean, w = torch.randn(20, 32), torch.randn(32), torch.randn(32, 32)
    plain = (reference.supcon_loss(z, labels), reference.top1_cosine(z, bank), reference.mahalanobis_sq(x, mean, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (reference.supcon_loss(z, labels), reference.top1_cosine(z, bank), reference.mahalanobis_sq(x, mean, w))
    assert auto[2].dtype == torch.float32
    torch.testing.assert_close(auto[0], plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(auto[1], plain[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(auto[2], plain[2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_top1_and_mahalanobis_reject_bad_norms_types_and_devices(impl):
    q, bank = torch.randn(4, 8), torch.randn(6, 8)
    for norms in (torch.zeros(6), torch.full((6,), float("nan")), -torch.ones(6), torch.ones(6, 1), torch.ones(5)):
        with pytest.raises(ValueError, match="bank_norms"):
            impl.top1_cosine(q, bank, bank_norms=norms)
    for norms in (torch.ones(6, dtype=torch.long), torch.ones(6, dtype=torch.bool), torch.ones(6, dtype=torch.complex64)):
        with pytest.raises(TypeError, match="bank_norms must be floating point"):  # long norms gave "cosines" near 3
            impl.top1_cosine(q, bank, bank_norms=norms)
    with pytest.raises(ValueError, match=r"queries has no columns"):
        impl.top1_cosine(q[:, :0], bank[:, :0])
    with pytest.raises(TypeError, match="bank must be a torch.Tensor, got numpy.ndarray"):
        impl.top1_cosine(q, bank.numpy())
    with pytest.raises(ValueError, match=r"whitening has no columns \(k = 0\)"):
        impl.mahalanobis_sq(torch.randn(5, 8), torch.zeros(8), torch.zeros(8, 0))
    x, mean, w = torch.randn(5, 8), torch.zeros(8), torch.eye(8)
    with pytest.raises(TypeError, match="floating"):
        impl.mahalanobis_sq(x.long(), mean, w)
    with pytest.raises(ValueError, match="mean is on meta"):
        impl.mahalanobis_sq(x, mean.to("meta"), w)


# ------------------------------------------------------------------ mahalanobis
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_mahalanobis_matches_reference(device, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 48, generator=g).to(device, dtype)
    mean = torch.randn(48, generator=g).to(device)
    w = (torch.randn(48, 30, generator=g) / 7).to(device)
    if dtype == torch.float64:
        w = w.double()
    out = native.mahalanobis_sq(x, mean, w)
    ref = reference.mahalanobis_sq(x, mean, w)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5 if dtype != torch.float64 else 1e-10, atol=1e-5)
    xs = x.float()[:, ::2] if dtype != torch.float64 else x[:, ::2]
    out2 = native.mahalanobis_sq(xs, mean[::2], w[::2])
    torch.testing.assert_close(out2, reference.mahalanobis_sq(xs.contiguous(), mean[::2], w[::2]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        native.mahalanobis_sq(x, mean[:5], w)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,d", [(1, 8), (2, 8), (37, 16), (130, 128), (2048, 128), (3001, 200), (16384, 128)])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "default"])
def test_cuda_loss_kernels_match_reference(fused, dtype, m, d):
    # both heads on the GPU vs the reference: the single-pass tiled kernels (fused=True), and the
    # default (the two-head kernels up to M = 2896, the per-head row-blocked path above)
    zc, cl = _batch(m, d, 2, "cuda", dtype, seed=m)
    zs, _ = _batch(m, d, 2, "cuda", dtype, seed=m + 1)
    sid = torch.arange(m, device="cuda") // 4
    losses, dzc, dzs = torch.ops.con2.con2_fwd_bwd(zc, zs, cl, sid, 0.07, fused)
    for i, (z, lab, dz) in enumerate(((zc, cl, dzc), (zs, sid, dzs))):
        if m > 4096:  # the reference in float64 (about 12 GB of M x M tensors at M = 16384), compared in float32
            loss, grad = (t.float() for t in _loss_and_grad(reference.supcon_loss, z.double(), lab))
        else:
            loss, grad = _loss_and_grad(reference.supcon_loss, z.float(), lab)
        torch.testing.assert_close(losses[i], loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dz, grad, rtol=1e-4, atol=1e-6 + 1e-5 * grad.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
@pytest.mark.parametrize("q,d,k,dtype", [(1, 8, 8, torch.float32), (1000, 200, 77, torch.float32),
                                         (100_000, 512, 512, torch.float32), (4096, 512, 512, torch.bfloat16)])
def test_fused_cuda_mahalanobis_matches_reference(q, d, k, dtype):
    g = torch.Generator().manual_seed(q)
    x = torch.randn(q, d, generator=g).to(dtype).cuda()
    mean = torch.randn(d, generator=g).cuda()
    w = (torch.randn(d, k, generator=g) / d**0.5).cuda()
    got = torch.ops.con2.mahalanobis_sq(x, mean, w, True)
    want = ((x.double() - mean.double()) @ w.double()).pow(2).sum(1)
    # 3xTF32 on the H100 measured 1.4e-5 relative (2026-11-22), against 2e-6 in the emulator,
    # whose tensor-core products accumulate in exact float32: the hardware's accumulation is
    # coarser. Still 70x tighter than one-pass TF32 (~1e-3).
    torch.testing.assert_close(got.double(), want, rtol=5e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_fused_cuda_loss_memory_is_linear():
    m, d = 16384, 128
    zc, cl = _batch(m, d, 2, "cuda")
    sid = torch.arange(m, device="cuda") // 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.ops.con2.con2_fwd_bwd(zc, zc, cl, sid, 0.07, True)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 4 * m * d * 4 + (1 << 20), f"{extra / 2**20:.1f} MiB"  # two dz + small stats


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cpu_cuda_agree():
    z, labels = _batch(500, 64, 7, "cpu", seed=9)
    l_cpu, g_cpu = _loss_and_grad(native.supcon_loss, z, labels)
    l_gpu, g_gpu = _loss_and_grad(native.supcon_loss, z.cuda(), labels.cuda())
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-4, atol=1e-6)
    q, b = torch.randn(100, 64), torch.randn(50000, 64)
    v_cpu, i_cpu = native.top1_cosine(q, b)
    v_gpu, i_gpu = native.top1_cosine(q.cuda(), b.cuda())
    _assert_top1_equal(v_gpu, i_gpu, v_cpu, i_cpu)
    # a large bank (several stage-1 / stage-2 blocks) against the float32 reference
    q, b = torch.randn(300, 512, device="cuda"), torch.randn(150_000, 512, device="cuda")
    v, i = native.top1_cosine(q, b)
    v_ref, i_ref = reference.top1_cosine(q, b)
    _assert_top1_equal(v, i, v_ref, i_ref)


def _con2_reference_grads(zc, zs, cl, sid, alpha=0.5):
    a, b = zc.detach().float().requires_grad_(True), zs.detach().float().requires_grad_(True)
    loss = reference.con2_loss(a, b, cl, sid, alpha, 0.07)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_loss_replays_fresh_inputs_and_keeps_saved_gradients(dtype):
    # the two-head loss replays a CUDA graph with fixed buffers: every call must see its own
    # inputs, and a second forward before the first backward must not change the first's gradients
    m, d = 256, 32
    batches = [(_batch(m, d, 2, "cuda", dtype, seed=s)[0], _batch(m, d, 2, "cuda", dtype, seed=s + 50)[0]) for s in range(3)]
    cl = torch.arange(m, device="cuda") // (m // 2)
    sid = torch.arange(m, device="cuda") % (m // 4)
    leaves, losses = [], []
    for zc, zs in batches:  # three forwards, then the backwards in reverse order
        a, b = zc.detach().requires_grad_(True), zs.detach().requires_grad_(True)
        leaves.append((a, b))
        losses.append(ops.con2_loss(a, b, cl, sid, 0.5, 0.07))
    for (zc, zs), (a, b), loss in reversed(list(zip(batches, leaves, losses))):
        loss.backward()
        ref, ga, gb = _con2_reference_grads(zc, zs, cl, sid)
        torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad.float(), ga, rtol=2e-2 if dtype != torch.float32 else 1e-4, atol=1e-5)
        torch.testing.assert_close(b.grad.float(), gb, rtol=2e-2 if dtype != torch.float32 else 1e-4, atol=1e-5)
        assert a.grad.dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cuda_graph_loss_on_side_streams_and_inside_a_user_graph():
    m, d = 512, 64
    zc, _ = _batch(m, d, 2, "cuda", seed=1)
    zs, _ = _batch(m, d, 2, "cuda", seed=2)
    cl = torch.arange(m, device="cuda") // (m // 2)
    sid = torch.arange(m, device="cuda") % (m // 4)
    ref, ga, gb = _con2_reference_grads(zc, zs, cl, sid)
    # alternate the default stream and two side streams with the same (cached) graph
    streams = [torch.cuda.current_stream(), torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams * 2:
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            losses, dzc, dzs = torch.ops.con2.con2_fwd_bwd(zc, zs, cl, sid, 0.07, False)
        torch.cuda.current_stream().wait_stream(s)
        torch.testing.assert_close(torch.dot(losses, torch.tensor([1.0, 0.5], device="cuda")), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dzc, ga, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dzs * 0.5, gb, rtol=1e-4, atol=1e-5)
    # inside a graph the user captures, the op runs its plain path (a graph cannot launch ours)
    static_c, static_s = zc.clone(), zs.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.con2.con2_fwd_bwd(static_c, static_s, cl, sid, 0.07, False)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out_losses, out_dzc, _ = torch.ops.con2.con2_fwd_bwd(static_c, static_s, cl, sid, 0.07, False)
    zc2, _ = _batch(m, d, 2, "cuda", seed=3)
    static_c.copy_(zc2)
    g.replay()
    torch.cuda.synchronize()
    ref2, ga2, _ = _con2_reference_grads(zc2, zs, cl, sid)
    torch.testing.assert_close(torch.dot(out_losses, torch.tensor([1.0, 0.5], device="cuda")), ref2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_dzc, ga2, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cuda_graphs_can_be_switched_off():
    import subprocess
    import sys

    script = (
        "import torch, torch.nn.functional as F\n"
        "from con2.ops import native, reference\n"
        "z = F.normalize(torch.randn(300, 16, device='cuda'), dim=1); lab = torch.arange(300, device='cuda') % 7\n"
        "losses, dz, _ = torch.ops.con2.con2_fwd_bwd(z, z, lab, lab, 0.1, False)\n"
        "x = z.clone().requires_grad_(True); l = reference.supcon_loss(x, lab, 0.1); l.backward()\n"
        "torch.testing.assert_close(losses[0], l.detach(), rtol=1e-5, atol=1e-6)\n"
        "torch.testing.assert_close(dz, x.grad, rtol=1e-4, atol=1e-6)\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "CON2_CUDA_GRAPHS": "0"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ------------------------------------------------------------------ simclr_views
def _identity_views(images, source, boxes, size, context=None):
    """simclr_views with no jitter (factors 1, 1, 1, 0), no flip, no grey, mean 0 and std 1."""
    m = source.numel()
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(m, 4)
    return torch.ops.con2.simclr_views(images, source, boxes, torch.zeros(m, dtype=torch.bool), factors,
                                       torch.arange(4).expand(m, 4), torch.zeros(m, dtype=torch.bool), size, 0.0,
                                       1.0, torch.float32, False, context)


def test_simclr_views_cpu_rejects_out_of_range_order():
    """order[i] indexes the view's four factors: a value outside [0, 3] read past them (a crash for
    large values) or silently dropped a jitter step; the torch path raises on it."""
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    source, boxes = torch.tensor([0, 1]), torch.tensor([[1.0, 1.0, 8.0, 8.0]]).expand(2, 4)
    factors = torch.tensor([[0.9, 1.1, 0.8, 0.1]]).expand(2, 4)
    ok = torch.arange(4).expand(2, 4)
    args = lambda order: (images, source, boxes, torch.zeros(2, dtype=torch.bool), factors, order,  # noqa: E731
                          torch.zeros(2, dtype=torch.bool), 6, 0.5, 0.25, torch.float32, False)
    torch.ops.con2.simclr_views(*args(ok))
    for bad in (4, -1, 2**31 - 1):
        order = ok.clone()
        order[1, 2] = bad
        with pytest.raises(RuntimeError, match="order"):
            torch.ops.con2.simclr_views(*args(order))


def test_simclr_views_refuses_sides_past_float32_coordinates_and_non_integer_orders():
    """Float32 source coordinates are exact to 2^24 px: past that a tap's weight became 2 or 0 and its
    index could pass the row's end; views past 2^14 px overflowed the CPU kernel's int offsets; a
    float order was truncated. Each is an error naming the input (the images are expanded, never
    allocated)."""
    one = torch.zeros(1, 1, 1, 1, dtype=torch.uint8)
    source, box = torch.zeros(1, dtype=torch.long), torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    for shape in ((1, 1, 1, 2**24 + 1), (1, 1, 2**24 + 1, 1)):
        with pytest.raises(RuntimeError, match="at most 16777216 px a side"):
            _identity_views(one.expand(*shape), source, box, 1)
    _identity_views(one.expand(1, 1, 1, 2**24), source, box, 1)
    with pytest.raises(RuntimeError, match=r"size must be in \[1, 16384\]"):
        _identity_views(one, source, box, 2**14 + 1)
    no = torch.zeros(1, dtype=torch.bool)
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    for order, says in ((torch.tensor([[0.0, 1.9, 2.5, 3.99]]), "order must be an integer"),
                        (torch.ones(1, 4, dtype=torch.bool), "order must be an integer")):
        with pytest.raises(RuntimeError, match=says):
            torch.ops.con2.simclr_views(one, source, box, no, factors, order, no, 1, 0.0, 1.0, torch.float32, False)
    with pytest.raises(RuntimeError, match="boxes and factors must be real"):
        torch.ops.con2.simclr_views(one, source, box.to(torch.complex64), no, factors, torch.arange(4).view(1, 4), no,
                                    1, 0.0, 1.0, torch.float32, False)


@pytest.mark.parametrize("c,h,w", [(3, 32769, 32768), (1, 65540, 32768)], ids=["planes", "rows"])
def test_simclr_views_cpu_images_past_2_31_bytes(c, h, w):
    """Plane and row offsets past 2^31 bytes overflowed int32 (a crash). The image is allocated, not
    filled: the views read only the few pixels set here."""
    try:
        images = torch.empty(1, c, h, w, dtype=torch.uint8)  # ~3 GiB of address space, a few pages touched
    except RuntimeError as exc:  # no overcommit here
        pytest.skip(f"cannot reserve a {c}x{h}x{w} image: {exc}")
    vals = torch.tensor([10, 20, 200])[:c]
    for k in range(c):
        images[0, k, h - 4:, w - 4:] = int(vals[k])
        images[0, k, :4, w - 4:] = int(vals[k]) // 2
    # view 0: a 2 x 2 crop at the bottom right; view 1: near the top, through the vertical flip
    boxes = torch.tensor([[h - 3.0, w - 3.0, 2.0, 2.0], [1.0, w - 3.0, 2.0, 2.0]])
    out = _identity_views(images, torch.zeros(2, dtype=torch.long), boxes, 2, torch.tensor([0, 2]))
    want = (vals.float() / 255).view(1, c, 1, 1).expand(2, c, 2, 2)
    torch.testing.assert_close(out, want)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cuda_ops_reject_operands_on_another_device():
    """top1_cosine's bank_norms, mahalanobis_sq's mean / whitening (fused kernel) and supcon_bwd's
    lse / npos reach the CUDA kernels as raw pointers: on the host they were an illegal address
    (or silently read through unified memory) instead of an error. (Not yet run: no GPU here.)"""
    q, bank = torch.randn(4, 8, device="cuda"), torch.randn(6, 8, device="cuda")
    with pytest.raises(RuntimeError, match="bank_norms on cpu"):
        torch.ops.con2.top1_cosine(q, bank, bank.norm(dim=1).cpu())
    torch.ops.con2.top1_cosine(q, bank, bank.norm(dim=1))
    x, mean, w = torch.randn(5, 8, device="cuda"), torch.zeros(8), torch.eye(8)
    for fused in (True, False):
        with pytest.raises(RuntimeError, match="mean is on cpu"):
            torch.ops.con2.mahalanobis_sq(x, mean, w.cuda(), fused)
        with pytest.raises(RuntimeError, match="whitening on cpu"):
            torch.ops.con2.mahalanobis_sq(x, mean.cuda(), w, fused)
        torch.ops.con2.mahalanobis_sq(x, mean.cuda(), w.cuda(), fused)
    z, labels = _batch(16, 8, 2, "cuda")
    _, lse, npos = torch.ops.con2.supcon_fwd(z, labels, 0.1)
    for bad_lse, bad_npos in ((lse.cpu(), npos), (lse, npos.cpu())):
        with pytest.raises(RuntimeError, match="supcon_bwd: z is on cuda"):
            torch.ops.con2.supcon_bwd(torch.ones(()), z, labels, bad_lse, bad_npos, 0.1)
    torch.ops.con2.supcon_bwd(torch.ones(()), z, labels, lse, npos, 0.1)  # a host scalar grad is fine
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_simclr_views_cuda_rgb_planes_past_2_31_bytes():
    """The RGB pack pass (simclr_views.cuh, pack_rgb_kernel) read the blue byte of pixel t at
    2 * plane + t in int32: past 2^31 for planes of more than ~716 M pixels taking the one-pixel path
    (plane % 4 != 0), an out-of-bounds read. 32767 x 32767 (odd, < 2^30 pixels): 3.2 GB of bytes and
    4.3 GB packed on the GPU. In a subprocess: before the fix an illegal address poisons the CUDA
    context. (Not yet run: no GPU here.)"""
    import subprocess
    import sys

    if torch.cuda.mem_get_info()[0] < 10 * 2**30:
        pytest.skip("needs ~8 GB of free GPU memory")
    script = (
        "import torch\n"
        "from con2.ops import native\n"
        "h = w = 32767\n"
        "images = torch.zeros(1, 3, h, w, dtype=torch.uint8, device='cuda')\n"
        "vals = torch.tensor([10, 20, 200])\n"
        "for k in range(3):\n"
        "    images[0, k, h - 4:, w - 4:] = int(vals[k])\n"
        "    images[0, k, :4, w - 4:] = int(vals[k]) // 2\n"
        "boxes = torch.tensor([[h - 3.0, w - 3.0, 2.0, 2.0], [1.0, w - 3.0, 2.0, 2.0]], device='cuda')\n"
        "factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]], device='cuda').expand(2, 4)\n"
        "no = torch.zeros(2, dtype=torch.bool, device='cuda')\n"
        "out = torch.ops.con2.simclr_views(images, torch.zeros(2, dtype=torch.long, device='cuda'), boxes, no,\n"
        "    factors, torch.arange(4, device='cuda').expand(2, 4), no, 2, 0.0, 1.0, torch.float32, False,\n"
        "    torch.tensor([0, 2], device='cuda'))\n"
        "torch.testing.assert_close(out.cpu(), (vals.float() / 255).view(1, 3, 1, 1).expand(2, 3, 2, 2))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cuda_top1_zero_or_nan_query_matches_cpu_kernel():
    """A zero or NaN query (which con2.ops rejects, the op does not) scores NaN against every row, so
    no candidate is re-scored: the CUDA op decoded the untouched key as index 2^32 - 1 (out of the
    bank) and a NaN value; the CPU kernel gives (-inf, 0). (Not yet run: no GPU here.)"""
    bank = torch.randn(6, 8)
    q = torch.cat([torch.zeros(1, 8), torch.full((1, 8), float("nan")), bank[3:4]])
    want_v, want_i = torch.ops.con2.top1_cosine(q, bank, bank.norm(dim=1))
    got_v, got_i = torch.ops.con2.top1_cosine(q.cuda(), bank.cuda(), bank.norm(dim=1).cuda())
    assert got_i.cpu().tolist() == want_i.tolist() == [0, 0, 3]
    torch.testing.assert_close(got_v.cpu(), want_v)


# ------------------------------------------------------------------ input checks found by a review

@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_losses_refuse_labels_on_another_device(impl):
    """labels on the meta device sent the native op to its fake kernel: uninitialised memory came
    back as the loss (8.7e-13, -7.7e25, ... on three calls) and as its gradient."""
    z, labels = _batch(8, 6, 3, "cpu")
    with pytest.raises(ValueError, match="labels is on meta but z is on cpu"):
        impl.supcon_loss(z, labels.to("meta"))
    with pytest.raises(ValueError, match="labels is on meta but z is on cpu"):
        impl.con2_loss(z.clone().requires_grad_(), z, labels.to("meta"), labels, 0.5)
    with pytest.raises(ValueError, match="labels is on meta but z is on cpu"):
        impl.con2_loss(z, z.clone().requires_grad_(), labels, labels.to("meta"), 0.5)


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_losses_take_a_numpy_temperature_and_refuse_a_bool(impl):
    import numpy as np

    z, labels = _batch(8, 6, 3, "cpu")
    torch.testing.assert_close(impl.supcon_loss(z, labels, np.float32(0.07)), impl.supcon_loss(z, labels, 0.07))
    for call in (lambda: impl.supcon_loss(z, labels, True), lambda: impl.con2_loss(z, z, labels, labels, 0.5, True)):
        with pytest.raises(ValueError, match=r"temperature must be a number in \[1e-06, .*got True"):
            call()


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_mahalanobis_refuses_non_float_mean_and_whitening(impl):
    """A complex whitening lost its imaginary part (a C++ warning only); a bool one was taken."""
    x, mean, w = torch.randn(5, 4), torch.zeros(4), torch.eye(4)
    for bad_mean, bad_w in ((mean, w.to(torch.complex64)), (mean, w.bool()), (mean.long(), w)):
        with pytest.raises(TypeError, match="must be a floating-point tensor"):
            impl.mahalanobis_sq(x, bad_mean, bad_w)


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_top1_names_rows_out_of_float32_range_instead_of_calling_them_nan_or_zero(impl):
    """Rows scaled by 1e30 were said to contain NaN or infinite values, rows scaled by 1e-30 to be
    zero vectors: their float32 norms overflowed / underflowed."""
    q, bank = torch.randn(4, 8), torch.randn(6, 8)
    for scale in (1e30, 1e-30):
        with pytest.raises(ValueError, match=r"queries row 0 has an L2 norm of .*e[+-]\d+, outside") as e:
            impl.top1_cosine(q * scale, bank)
        assert "NaN" not in str(e.value) and "zero vector" not in str(e.value)
    q[1, 2] = float("nan")
    with pytest.raises(ValueError, match="queries contains NaN or infinite values"):
        impl.top1_cosine(q, bank)


@pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])
def test_scorer_ops_give_gradients_like_the_reference(impl):
    """The native top1 / mahalanobis outputs looked differentiable and gave no gradient (PyTorch
    only warned): with inputs that require grad they follow the reference, which gives them."""
    q, bank = torch.randn(5, 8, requires_grad=True), torch.randn(7, 8)
    impl.top1_cosine(q, bank)[0].sum().backward()
    # d cos(q, b) / dq = b / (|q| |b|) - cos(q, b) q / |q|^2 for each row's best bank row b
    qd = q.detach()
    cos = torch.nn.functional.normalize(qd, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    best, b = cos.max(dim=1)[0][:, None], bank[cos.argmax(dim=1)]
    qn, bn = qd.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(q.grad, b / (qn * bn) - best * qd / qn**2)
    x, mean, w = torch.randn(5, 4, requires_grad=True), torch.randn(4), torch.randn(4, 3)
    impl.mahalanobis_sq(x, mean, w).sum().backward()
    torch.testing.assert_close(x.grad, 2 * (x - mean).detach() @ w @ w.T)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs CUDA + CUDA kernels")
def test_cuda_con2_loss_steps_with_a_new_alpha_never_stall_the_host():
    """alpha changes every training step; its [1, alpha] weights were a cached device tensor that
    missed every step, a copy from pageable memory that waits for the GPU."""
    zc, cl = _batch(256, 128, 2, "cuda", seed=3)
    zs, _ = _batch(256, 128, 2, "cuda", seed=4)
    sid = torch.arange(256, device="cuda") // 2
    zc.requires_grad_(True)
    zs.requires_grad_(True)
    native.con2_loss(zc, zs, cl, sid, 0.0).backward()  # warm-up: workspaces, pinned blocks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 5):
            native.con2_loss(zc, zs, cl, sid, step / 4).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want, _, _ = _con2_reference_grads(zc, zs, cl, sid, alpha=0.3)
    torch.testing.assert_close(native.con2_loss(zc.detach(), zs.detach(), cl, sid, 0.3), want, rtol=1e-5, atol=1e-6)


def test_reference_top1_over_several_bank_blocks_equals_one_block_and_ties_go_to_the_lowest_index():
    """The reference (the fallback without a kernel) splits banks over ~65k rows into blocks; every
    other test used one block, so a wrong block offset, norm or tie rule went unseen (mutation QA)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 16, generator=g)
    b = torch.randn(100, 16, generator=g) * (0.5 + torch.rand(100, 1, generator=g))  # rows of different norms
    b[95] = b[3] * 2.0  # the same direction again, in a later block
    q[0] = b[3]
    one_block = reference.top1_cosine(q, b)
    blocks = reference.top1_cosine(q, b, chunk_bytes=7 * 4 * 10)  # 10 bank rows per block
    want = F.normalize(q, dim=1) @ F.normalize(b, dim=1).T
    torch.testing.assert_close(blocks[0], want.max(1).values, atol=1e-6, rtol=0)
    torch.testing.assert_close(blocks[0], one_block[0])
    assert torch.equal(blocks[1], one_block[1]) and blocks[1][0].item() == 3


# ------------------------------------------------------- found by mutating the C++ kernels (24th session)
def test_top1_cpu_kernel_over_several_bank_blocks_offsets_and_ties():
    """Q >= 1024 makes the CPU kernel's bank blocks 4096 rows: N = 9000 spans three, so a block's
    row offset and the earlier block winning a tie are seen (every other test fits one block).
    One-hot planted rows make the cosines exact."""
    g = torch.Generator().manual_seed(21)
    q, bank, e = torch.randn(1024, 8, generator=g), torch.randn(9000, 8, generator=g), torch.eye(8)
    q[0], bank[3], bank[5000] = e[0], 2 * e[0], 4 * e[0]  # an exact tie across blocks 0 and 1
    q[1], bank[8999] = e[1], 3 * e[1]                      # the best row in the last block
    q[2], bank[4100] = e[2], e[2]                          # the best row in block 1
    v, i = native.top1_cosine(q, bank)
    assert i[:3].tolist() == [3, 8999, 4100] and v[:3].tolist() == [1.0, 1.0, 1.0]
    v_ref, i_ref = reference.top1_cosine(q, bank)
    _assert_top1_equal(v, i, v_ref, i_ref)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)


def test_mahalanobis_cpu_over_several_row_blocks():
    """40,000 rows: three of the CPU kernel's row blocks (at most 16,384 rows), each written at its offset."""
    g = torch.Generator().manual_seed(5)
    x, mean, w = torch.randn(40000, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, 4, generator=g)
    torch.testing.assert_close(native.mahalanobis_sq(x, mean, w), reference.mahalanobis_sq(x, mean, w),
                               rtol=1e-5, atol=1e-5)


def test_mahalanobis_float64_whitening_with_float32_rows():
    """The compute dtype is the wider of the rows' and the whitening's (as the fake kernel says)."""
    g = torch.Generator().manual_seed(6)
    x, mean = torch.randn(50, 6, generator=g), torch.randn(6, generator=g)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    out = native.mahalanobis_sq(x, mean, w)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference.mahalanobis_sq(x, mean, w), rtol=1e-12, atol=1e-12)
    torch.library.opcheck(torch.ops.con2.mahalanobis_sq.default, (x, mean, w, False))


def test_con2_loss_gradient_reaches_a_lone_trainable_head():
    """One head requiring grad (the other frozen) still gets its gradient from the two-head op."""
    zc, cl = _batch(32, 16, 4, "cpu", seed=1)
    zs, _ = _batch(32, 16, 4, "cpu", seed=2)
    sid = torch.arange(32) // 4
    for which in (0, 1):
        a, b = [zc.clone(), zs.clone()], [zc.clone(), zs.clone()]
        a[which].requires_grad_(True)
        b[which].requires_grad_(True)
        (gn,) = torch.autograd.grad(ops.con2_loss(a[0], a[1], cl, sid, 0.5, 0.1), a[which])
        (gr,) = torch.autograd.grad(reference.con2_loss(b[0], b[1], cl, sid, 0.5, 0.1), b[which])
        torch.testing.assert_close(gn, gr, rtol=1e-4, atol=1e-6)


def test_supcon_fwd_single_row_statistics():
    """M = 1: no other row, so loss, log-sum-exp and positive count are all 0 (lse is an output)."""
    for dtype in (torch.float32, torch.float64):
        z = F.normalize(torch.randn(1, 8, dtype=dtype), dim=1)
        loss, lse, npos = torch.ops.con2.supcon_fwd(z, torch.zeros(1, dtype=torch.long), 0.1)
        assert loss.item() == 0.0 and lse.tolist() == [0.0] and npos.tolist() == [0.0]
