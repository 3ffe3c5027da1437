"""Pure-PyTorch reference implementations of the native ops.

They are the test oracle for the C++/CUDA kernels and the runtime fallback when the
extension (or a kernel for the input's device) is missing. Every function here
computes in float32 (or float64 when given float64) whatever the input dtype, also under
autocast (as the native ops do), and validates its inputs with the same rules as the
native kernels (the check_* functions, which the native wrappers also call where the C++
side does not check).
"""
from __future__ import annotations

import functools
import math
import numbers

import torch

# Intermediates (Q x N similarity blocks, Q x D whitened blocks) never exceed this.
DEFAULT_CHUNK_BYTES = 64 * 2**20

# The temperatures the loss takes (csrc/common.h kMinTemperature, float32's largest): a floor far
# below any useful temperature (unit rows' logits reach 1e6 there); above the ceiling, 1/T is 0 in float32.
TEMPERATURE_RANGE = (1e-6, 3.4028234663852886e38)


def check_tensors(**named) -> None:
    """Each named argument a torch.Tensor, else a TypeError naming it and what it is."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            kind, module = type(t).__qualname__, type(t).__module__
            kind = kind if module == "builtins" else f"{module}.{kind}"
            hint = " (torch.from_numpy converts it)" if module == "numpy" else ""
            raise TypeError(f"{name} must be a torch.Tensor, got {kind}{hint}")


def check_alpha(alpha) -> float:
    """The weight of L_Content: a finite real number (a tensor's gradient would be lost in float())."""
    if isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        raise TypeError("alpha must be a number, not a tensor that requires grad (the loss takes no gradient "
                        "with respect to it)")
    if isinstance(alpha, torch.Tensor) and alpha.numel() == 1 and alpha.is_floating_point():
        alpha = alpha.item()
    if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    return float(alpha)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _no_autocast(fn):
    """Run fn with autocast off: its float32 matrix products must not be downcast to bf16 / fp16."""
    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        # not a tensor (numpy's arrays have a .device "cpu" too): the function's own checks name it
        kind = first.device.type if isinstance(first, torch.Tensor) and first.device.type == "cuda" else "cpu"
        with torch.autocast(kind, enabled=False):
            return fn(first, *args, **kwargs)
    return wrapper


def check_same_device(**tensors: torch.Tensor) -> None:
    """All named tensors on one device, else an error naming the first that is not."""
    (first, t0), *rest = tensors.items()
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {t0.device}")


def check_loss_inputs(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> None:
    """The native loss kernels' rules (csrc/common.h check_loss_inputs)."""
    check_tensors(z=z, labels=labels)
    if z.dim() != 2:
        raise ValueError(f"z must be a 2-D [M, D] tensor, got shape {tuple(z.shape)}")
    if z.shape[0] < 1:
        raise ValueError("z is empty")
    if z.shape[1] < 1:
        raise ValueError("z has no columns (D = 0)")
    if not z.is_floating_point():
        raise TypeError(f"z must be floating point, got {z.dtype}")
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape [{z.shape[0]}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    check_same_device(z=z, labels=labels)
    lo, hi = TEMPERATURE_RANGE
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and lo <= temperature <= hi):
        raise ValueError(f"temperature must be a number in [{lo:g}, {hi:.4g}] (the float32 kernels' range), "
                         f"got {temperature!r}")


def check_con2_inputs(z_context, z_content, context_labels, sample_ids, temperature: float) -> None:
    """Both heads valid, with the same number of rows, on one device (csrc/common.h check_con2_inputs)."""
    check_loss_inputs(z_context, context_labels, temperature)
    check_loss_inputs(z_content, sample_ids, temperature)
    if z_context.shape[0] != z_content.shape[0]:
        raise ValueError(f"z_context has {z_context.shape[0]} rows but z_content has {z_content.shape[0]}")
    check_same_device(z_context=z_context, z_content=z_content)


@_no_autocast
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon "L_out": mean over anchors of the mean over positives of -log softmax.

    z: [M, D] L2-normalised rows; labels: [M] integer labels (same label = positive pair).
    The anchor itself is excluded from both the positives and the denominator.
    Anchors without a positive contribute 0 to the mean (as SupContrast does).
    """
    check_loss_inputs(z, labels, temperature)
    z = z.to(compute_dtype(z))
    m = z.shape[0]
    logits = (z @ z.T) / temperature
    if m == 1:  # no other row: no positive, an empty denominator; 0 (for a finite row), with a zero gradient
        return (logits * 0).sum()
    # -inf, not a large negative number: a row whose other logits are all below it (|s| / tau ~ 1e9)
    # would otherwise take its own logit into the denominator
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    # where, not a product: the diagonal's -inf times 0 is NaN
    mean_log_prob_pos = torch.where(positives, log_prob, 0).sum(dim=1) / n_pos.clamp(min=1)
    return -mean_log_prob_pos.mean()


def con2_loss(z_context, z_content, context_labels, sample_ids, alpha: float, temperature: float = 0.07):
    """L_Con2 = L_Context + alpha * L_Content (METHOD section 5)."""
    check_con2_inputs(z_context, z_content, context_labels, sample_ids, temperature)
    alpha = check_alpha(alpha)
    return supcon_loss(z_context, context_labels, temperature) + alpha * supcon_loss(
        z_content, sample_ids, temperature
    )


def _check_rows(name: str, t: torch.Tensor) -> None:
    check_tensors(**{name: t})
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [rows, dim] tensor, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no columns (dim = 0)")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _rows_per_chunk(other_rows: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, other_rows * itemsize))


def check_top1_inputs(queries: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor | None = None) -> None:
    _check_rows("queries", queries)
    _check_rows("bank", bank)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but the bank has {bank.shape[1]}"
        )
    if queries.device != bank.device:
        raise ValueError(f"queries are on {queries.device} but the bank is on {bank.device}")
    if bank_norms is not None:
        # precomputed norms are trusted by the search (the bank's rows are not read for them): wrong
        # ones would scale every similarity
        check_tensors(bank_norms=bank_norms)
        if not bank_norms.is_floating_point():
            raise TypeError(f"bank_norms must be floating point (the bank rows' L2 norms), got {bank_norms.dtype}")
        if bank_norms.dim() != 1 or bank_norms.shape[0] != bank.shape[0]:
            raise ValueError(f"bank_norms must have shape [{bank.shape[0]}], got {tuple(bank_norms.shape)}")
        check_same_device(bank=bank, bank_norms=bank_norms)
        if not bool(torch.isfinite(bank_norms).all() & (bank_norms > 0).all()):
            raise ValueError("bank_norms must be finite and > 0 (the L2 norms of the bank rows)")


def check_mahalanobis_inputs(x: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> None:
    _check_rows("x", x)
    check_tensors(mean=mean, whitening=whitening)
    if mean.dim() != 1 or mean.shape[0] != x.shape[1]:
        raise ValueError(f"mean must have shape [{x.shape[1]}], got {tuple(mean.shape)}")
    if whitening.dim() != 2 or whitening.shape[0] != x.shape[1]:
        raise ValueError(
            f"whitening must have shape [{x.shape[1]}, k], got {tuple(whitening.shape)}"
        )
    if whitening.shape[1] == 0:
        raise ValueError("whitening has no columns (k = 0)")
    for name, t in (("mean", mean), ("whitening", whitening)):
        if not t.is_floating_point():  # a complex one lost its imaginary part, a bool one was taken
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    check_same_device(x=x, mean=mean, whitening=whitening)


# Row norms the float32 search takes: outside, products of rows overflow or lose their precision
# (cosine similarity does not depend on scale, so such rows only need rescaling).
FLOAT32_NORM_RANGE = (1e-15, 1e15)


def row_norms(x: torch.Tensor, name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """float32 (float64 for float64 x) L2 norms of the rows of x, computed in chunks. Rows that are
    zero, not finite, or (in float32) outside FLOAT32_NORM_RANGE are an error that says which."""
    dtype = compute_dtype(x)
    rows = _rows_per_chunk(x.shape[1], 4, chunk_bytes)
    chunks = range(0, x.shape[0], rows)
    norms = torch.cat([x[i : i + rows].to(dtype).norm(dim=1) for i in chunks])
    lo, hi = FLOAT32_NORM_RANGE if dtype == torch.float32 else (0.0, math.inf)
    if bool(((norms > lo) & (norms < hi)).all()):  # one check (NaN fails it too); the diagnosis only on failure
        return norms
    if not all(bool(torch.isfinite(x[i : i + rows]).all()) for i in chunks):
        raise ValueError(f"{name} contains NaN or infinite values")
    exact = torch.cat([x[i : i + rows].double().norm(dim=1) for i in chunks])  # float32's may over/underflow
    zero = (exact == 0).nonzero()
    if zero.numel():
        raise ValueError(
            f"{name} has {zero.numel()} zero vector(s) (first at row {zero[0].item()}): "
            "cosine similarity is undefined for them"
        )
    r = int((~((norms > lo) & (norms < hi))).nonzero()[0])
    raise ValueError(f"{name} row {r} has an L2 norm of {exact[r].item():.3g}, outside [{lo:g}, {hi:g}] where "
                     "float32 arithmetic computes cosines accurately: rescale the rows (cosine similarity does not "
                     "depend on their scale)")


@_no_autocast
def top1_cosine(
    queries: torch.Tensor,
    bank: torch.Tensor,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    bank_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest bank row by cosine similarity, for arbitrary (non-normalised) rows.

    Returns (values [Q] float32, indices [Q] int64). Ties go to the lowest index.
    The Q x N similarity matrix is produced in blocks of at most chunk_bytes.
    """
    check_top1_inputs(queries, bank, bank_norms)
    dtype = compute_dtype(queries)
    q_unit = queries.to(dtype) / row_norms(queries, "queries", chunk_bytes)[:, None].to(dtype)
    if bank_norms is None:
        bank_norms = row_norms(bank, "bank", chunk_bytes)
    inv_bank_norms = bank_norms.to(dtype).reciprocal()
    n = bank.shape[0]
    q_rows = min(q_unit.shape[0], 4096)
    b_rows = _rows_per_chunk(q_rows, q_unit.element_size(), chunk_bytes)
    best_val = torch.full((q_unit.shape[0],), -float("inf"), dtype=dtype, device=queries.device)
    best_idx = torch.zeros(q_unit.shape[0], dtype=torch.int64, device=queries.device)
    for q0 in range(0, q_unit.shape[0], q_rows):
        q = q_unit[q0 : q0 + q_rows]
        bv, bi = best_val[q0 : q0 + q_rows], best_idx[q0 : q0 + q_rows]
        for b0 in range(0, n, b_rows):
            block = bank[b0 : b0 + b_rows].to(dtype)
            sims = (q @ block.T) * inv_bank_norms[b0 : b0 + b_rows]
            val, idx = sims.max(dim=1)
            better = val > bv  # strict: earlier blocks win ties
            bv.copy_(torch.where(better, val, bv))
            bi.copy_(torch.where(better, idx + b0, bi))
    return best_val.float(), best_idx


@_no_autocast
def mahalanobis_sq(
    x: torch.Tensor,
    mean: torch.Tensor,
    whitening: torch.Tensor,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Per-row ||(x - mean) @ whitening||^2, chunked so Q x D blocks stay under chunk_bytes."""
    check_mahalanobis_inputs(x, mean, whitening)
    dtype = torch.float64 if torch.float64 in (x.dtype, whitening.dtype) else torch.float32
    mean, whitening = mean.to(dtype), whitening.to(dtype)
    rows = _rows_per_chunk(whitening.shape[1], 8, chunk_bytes)
    out = [
        ((x[i : i + rows].to(dtype) - mean) @ whitening).square().sum(dim=1)
        for i in range(0, x.shape[0], rows)
    ]
    return torch.cat(out)
