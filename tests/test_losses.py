"""con2_loss / supcon_loss against a loop-by-loop transcription of METHOD section 5."""
import math

import pytest
import torch
import torch.nn.functional as F

from con2.losses import con2_loss, simclr_loss, supcon_loss, view_labels


def ell(z, a, p, tau):
    """l(a, p, Z) = -log exp(sim(a,p)/tau) / sum_{z != a} exp(sim(a,z)/tau)."""
    denom = sum(math.exp(float(z[a] @ z[j]) / tau) for j in range(len(z)) if j != a)
    return -(float(z[a] @ z[p]) / tau - math.log(denom))


def paper_con2_loss(z_ctx, z_cnt, n, alpha, tau):
    """METHOD 5 verbatim for K=2 contexts, views laid out as blocks (context, view) of n rows."""
    m = 4 * n
    context = [i // (2 * n) for i in range(m)]
    sample = [i % n for i in range(m)]
    k = 4 * n * (2 * n - 1)
    l_context = sum(ell(z_ctx, a, p, tau) for a in range(m) for p in range(m)
                    if a != p and context[a] == context[p]) / k
    l_content = 0.0
    for x in range(n):
        lam = [i for i in range(m) if sample[i] == x]
        l_content += sum(ell(z_cnt, a, p, tau) for a in lam for p in lam if a != p)
    l_content /= 12 * n
    return l_context + alpha * l_content


def paper_supcon(z, labels, tau):
    m = len(z)
    total = 0.0
    for a in range(m):
        pos = [p for p in range(m) if p != a and labels[a] == labels[p]]
        if pos:
            total += sum(ell(z, a, p, tau) for p in pos) / len(pos)
    return total / m


def unit(m, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("n,d,alpha,tau", [(1, 4, 0.0, 0.07), (2, 8, 0.5, 0.07), (3, 16, 1.0, 0.2), (5, 3, 0.3, 0.5)])
def test_con2_loss_matches_paper_loops(n, d, alpha, tau):
    z1, z2 = unit(4 * n, d, 1), unit(4 * n, d, 2)
    ctx, ids = view_labels(n, 2)
    got = con2_loss(z1, z2, ctx, ids, alpha, tau)
    want = paper_con2_loss(z1, z2, n, alpha, tau)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_supcon_with_rows_without_positives():
    z = unit(7, 5, 3)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # labels 1 and 3 have no positive
    assert supcon_loss(z, labels, 0.1).item() == pytest.approx(paper_supcon(z, labels.tolist(), 0.1), rel=1e-9)


def test_simclr_is_nt_xent():
    n = 4
    z = unit(2 * n, 6, 4)
    ids = torch.arange(n).repeat(2)
    want = sum(ell(z, a, (a + n) % (2 * n), 0.5) for a in range(2 * n)) / (2 * n)
    assert simclr_loss(z, ids, 0.5).item() == pytest.approx(want, rel=1e-9)
    default = sum(ell(z, a, (a + n) % (2 * n), 0.07) for a in range(2 * n)) / (2 * n)
    assert simclr_loss(z, ids).item() == pytest.approx(default, rel=1e-9)  # METHOD's 0.07, as every loss


def test_permutation_invariance():
    n = 4
    z1, z2 = unit(4 * n, 8, 5), unit(4 * n, 8, 6)
    ctx, ids = view_labels(n, 2)
    perm = torch.randperm(4 * n, generator=torch.Generator().manual_seed(0))
    a = con2_loss(z1, z2, ctx, ids, 0.7)
    b = con2_loss(z1[perm], z2[perm], ctx[perm], ids[perm], 0.7)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("case", ["n1", "duplicates", "bf16", "single_row"])
def test_gradients_finite(case):
    if case == "n1":
        z1, z2 = unit(4, 8, 7, torch.float32), unit(4, 8, 8, torch.float32)
        ctx, ids = view_labels(1, 2)
    elif case == "duplicates":
        z1 = unit(1, 8, 9, torch.float32).repeat(8, 1)
        z2 = z1.clone()
        ctx, ids = view_labels(2, 2)
    elif case == "bf16":
        z1, z2 = unit(16, 8, 10, torch.bfloat16), unit(16, 8, 11, torch.bfloat16)
        ctx, ids = view_labels(4, 2)
    else:  # one view alone: no positive, no denominator
        z1, z2 = unit(1, 8, 12, torch.float32), unit(1, 8, 13, torch.float32)
        ctx, ids = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = con2_loss(z1, z2, ctx, ids, 1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


def test_view_labels_layout():
    ctx, ids = view_labels(3, 2)
    assert ctx.tolist() == [0] * 6 + [1] * 6
    assert ids.tolist() == [0, 1, 2] * 4
    ctx4, _ = view_labels(2, 4)
    assert ctx4.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]


def test_bad_shapes_are_clear():
    z = unit(8, 4, 1, torch.float32)
    with pytest.raises(ValueError, match="labels must have shape"):
        supcon_loss(z, torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        supcon_loss(z[0], torch.zeros(4, dtype=torch.long))


def test_alpha_zero_still_gives_the_content_head_a_zero_gradient():
    # AdamW and DDP treat a None gradient as an unused parameter: native and reference must agree
    z1 = unit(8, 4, 20, torch.float32).requires_grad_(True)
    z2 = unit(8, 4, 21, torch.float32).requires_grad_(True)
    ctx, ids = view_labels(2, 2)
    con2_loss(z1, z2, ctx, ids, 0.0).backward()
    assert z2.grad is not None and torch.count_nonzero(z2.grad) == 0
