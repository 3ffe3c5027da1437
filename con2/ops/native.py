"""Python side of the native extension `con2._C` (the torch.ops.con2.* ops).

Importing this module loads the compiled library (which registers the op schemas and
their CPU / CUDA kernels), registers fake (meta) implementations so torch.compile can
trace the ops without graph breaks, and registers autograd for the single-head loss (the
two-head training op con2_fwd_bwd has its autograd and autocast in C++, csrc/autograd.cpp).

Autocast policy: the ops take float32, float64, bfloat16 or float16 inputs and always
compute in float32 (float64 for float64 inputs). Under autocast (cpu / cuda) their
Autocast kernels cast floating inputs to float32 and run with autocast disabled, so the
GEMMs inside the kernels are not downcast. The loss returns a float32 (or float64)
scalar; outside autocast, gradients come back in the dtype of z.
"""
from __future__ import annotations

import os

import torch

from . import reference

from .. import _C  # noqa: F401  (loads the library: registers torch.ops.con2.*)

_OPS = ("supcon_fwd", "supcon_bwd", "supcon_fwd_bwd", "con2_fwd_bwd", "top1_cosine", "mahalanobis_sq")
_DATA_OPS = ("simclr_views",)  # no autocast / autograd: uint8 in, views out


def _kernel_choice(var: str, choices: tuple[str, ...]) -> str:
    """The CUDA kernel named by environment variable `var`; the first choice by default."""
    value = os.environ.get(var, choices[0]).strip().lower()
    if value not in choices:
        raise ValueError(f"{var} must be {' or '.join(repr(c) for c in choices)}, got {value!r}")
    return value


# Which CUDA kernel runs where there are two; the first choice of each is the default, the faster
# one as measured on the H100 (docs/PERFORMANCE.md has the numbers). Loss: "blocked" (both heads in
# shared launches, csrc/cuda/con2_two_head.cuh, up to M = 2896; beyond, cuBLAS row blocks per head)
# or "fused" (single-pass tiled tensor-core kernels, csrc/cuda/con2_fused.cuh). mahalanobis_sq:
# "blocked" (cuBLAS + row reduction) or "fused" (one pass, csrc/cuda/mahalanobis_fused.cuh). Views:
# "native" (block-per-view kernel, csrc/cuda/simclr_views.cuh) or "compiled" (torch.compile of the
# torch ops).
CUDA_LOSS_KERNEL = _kernel_choice("CON2_CUDA_LOSS", ("blocked", "fused"))
CUDA_MAHALANOBIS_KERNEL = _kernel_choice("CON2_CUDA_MAHALANOBIS", ("blocked", "fused"))
CUDA_VIEWS_KERNEL = _kernel_choice("CON2_CUDA_VIEWS", ("native", "compiled"))
# Replay of the two-head loss from a CUDA graph (csrc/cuda/two_head_graph.cuh, which reads the same
# variable: "0" switches it off); validated here like the kernel choices.
CUDA_GRAPHS = _kernel_choice("CON2_CUDA_GRAPHS", ("1", "0")) == "1"
_FUSED = CUDA_LOSS_KERNEL == "fused"


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"con2::{op}", key)


# Kernels are registered when the library loads, so availability is fixed from here on;
# a plain dict keeps has_kernels() traceable by torch.compile (no graph break).
_KERNELS = {
    dev: {op: _has_kernel(op, key) for op in _OPS + _DATA_OPS} for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}
_ALL_KERNELS = {dev: all(ops[o] for o in _OPS) for dev, ops in _KERNELS.items()}


def has_kernels(device_type: str, op: str | None = None) -> bool:
    """True when every op (or `op`) has a kernel for `device_type` ("cpu" / "cuda")."""
    if op is None:
        return _ALL_KERNELS.get(device_type, False)
    return _KERNELS.get(device_type, {}).get(op, False)


# ---------------------------------------------------------------- fake kernels
@torch.library.register_fake("con2::supcon_fwd")
def _supcon_fwd_fake(z, labels, temperature):
    torch._check(z.dim() == 2, lambda: "z must be 2-D")
    m = z.shape[0]
    dtype = reference.compute_dtype(z)
    return z.new_empty((), dtype=dtype), z.new_empty((m,), dtype=dtype), z.new_empty((m,), dtype=dtype)


@torch.library.register_fake("con2::supcon_bwd")
def _supcon_bwd_fake(grad, z, labels, lse, npos, temperature):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@torch.library.register_fake("con2::supcon_fwd_bwd")
def _supcon_fwd_bwd_fake(z, labels, temperature):
    torch._check(z.dim() == 2, lambda: "z must be 2-D")
    dtype = reference.compute_dtype(z)
    return z.new_empty((), dtype=dtype), z.new_empty(tuple(z.shape), dtype=dtype)


@torch.library.register_fake("con2::con2_fwd_bwd")
def _con2_fwd_bwd_fake(z_context, z_content, context_labels, sample_ids, temperature, fused=False):
    torch._check(z_context.dim() == 2 and z_content.dim() == 2, lambda: "z must be 2-D")
    dtype = reference.compute_dtype(z_context)
    return (
        z_context.new_empty((2,), dtype=dtype),
        z_context.new_empty(tuple(z_context.shape), dtype=dtype),
        z_content.new_empty(tuple(z_content.shape), dtype=dtype),
    )


@torch.library.register_fake("con2::simclr_views")
def _simclr_views_fake(images, source, boxes, hflip, factors, order, gray, size, mean, std, dtype, channels_last,
                       context=None):
    out = images.new_empty((source.shape[0], images.shape[1], size, size), dtype=dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@torch.library.register_fake("con2::top1_cosine")
def _top1_fake(queries, bank, bank_norms):
    q = queries.shape[0]
    return queries.new_empty((q,), dtype=torch.float32), queries.new_empty((q,), dtype=torch.int64)


@torch.library.register_fake("con2::mahalanobis_sq")
def _maha_fake(x, mean, whitening, fused=False):
    dtype = torch.float64 if torch.float64 in (x.dtype, whitening.dtype) else torch.float32
    return x.new_empty((x.shape[0],), dtype=dtype)


# ---------------------------------------------------------------- autocast
for _op in _OPS:
    if _op == "con2_fwd_bwd":  # autograd and autocast in C++ (csrc/autograd.cpp): the training call
        continue
    for _dev in ("cpu", "cuda"):
        torch.library.register_autocast(f"con2::{_op}", _dev, torch.float32)


# ---------------------------------------------------------------- autograd
def _supcon_setup_context(ctx, inputs, output):
    z, labels, temperature = inputs
    _, lse, npos = output
    ctx.mark_non_differentiable(lse, npos)
    ctx.save_for_backward(z, labels, lse, npos)
    ctx.temperature = temperature


# Under create_graph=True a backward runs with grad mode on: the native backwards are not themselves
# differentiable, so a second derivative through them would silently miss the loss's own term.
_NO_DOUBLE_BACKWARD = ("con2's native loss has no second derivative (backward with create_graph=True, as for a "
                       "gradient penalty); use con2.ops.reference's loss, or set CON2_DISABLE_EXT=1")


def _supcon_backward(ctx, grad_loss, grad_lse, grad_npos):
    # lse / npos are auxiliary outputs for the backward; gradients through them are not
    # supported (they are never used by the loss wrappers below).
    if torch.is_grad_enabled():
        raise RuntimeError(_NO_DOUBLE_BACKWARD)
    z, labels, lse, npos = ctx.saved_tensors
    grad_z = None
    if ctx.needs_input_grad[0]:
        grad_z = torch.ops.con2.supcon_bwd(grad_loss, z, labels, lse, npos, ctx.temperature)
    return grad_z, None, None


torch.library.register_autograd(
    "con2::supcon_fwd", _supcon_backward, setup_context=_supcon_setup_context
)


def _fwd_bwd_setup_context(ctx, inputs, output):
    z = inputs[0]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.z_dtype = z.dtype


def _fwd_bwd_backward(ctx, grad_loss, grad_dz):
    # The gradient was computed in the forward (for an upstream gradient of 1);
    # gradients flowing into the dz output itself are not supported (never used).
    if torch.is_grad_enabled():
        raise RuntimeError(_NO_DOUBLE_BACKWARD)
    (dz,) = ctx.saved_tensors
    grad_z = None
    if ctx.needs_input_grad[0]:
        grad_z = (dz * grad_loss.to(dz.dtype)).to(ctx.z_dtype)
    return grad_z, None, None


torch.library.register_autograd(
    "con2::supcon_fwd_bwd", _fwd_bwd_backward, setup_context=_fwd_bwd_setup_context
)


# ---------------------------------------------------------------- wrappers
def _supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    # With grad: the fused op computes loss and gradient together (the similarity is
    # computed once when it fits the scratch budget) and saves only dz, O(M*D).
    # Without grad: forward only.
    reference.check_loss_inputs(z, labels, temperature)  # labels on the meta device would reach the fake kernel
    if torch.is_grad_enabled() and z.requires_grad:
        return torch.ops.con2.supcon_fwd_bwd(z, labels, float(temperature))[0]
    return torch.ops.con2.supcon_fwd(z, labels, float(temperature))[0]



def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon L_out (see reference.supcon_loss); float32 (float64) scalar."""
    return _supcon(z, labels, temperature)


def _head_weights(alpha: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, alpha] on `device`. alpha changes every training step, so the copy must not stall the
    host: on a GPU it leaves pinned memory without blocking (a plain copy from pageable memory
    waits for the GPU to finish the queued work, every step)."""
    w = torch.tensor([1.0, alpha], dtype=dtype)
    if device.type == "cuda":
        return w.pin_memory().to(device, non_blocking=True)
    return w.to(device)


def _weighted_heads(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """losses[0] + alpha * losses[1] as one dot with [1, alpha]: one launch forward and one
    backward, where select / mul / add take ~8 (the loss at M ~ 2048 is launch-bound)."""
    if torch.compiler.is_compiling():
        return losses[0] + alpha * losses[1]
    return torch.dot(losses, _head_weights(float(alpha), losses.device, losses.dtype))


def con2_loss(z_context, z_content, context_labels, sample_ids, alpha: float, temperature: float = 0.07):
    """L_Con2 = L_Context + alpha * L_Content; with grad, both heads in one native call."""
    # no shortcut at alpha == 0: the content head must get a (zero) gradient, as with the
    # reference, or AdamW and DDP would treat it as unused
    reference.check_con2_inputs(z_context, z_content, context_labels, sample_ids, temperature)
    alpha = reference.check_alpha(alpha)
    if (torch.is_grad_enabled() and (z_context.requires_grad or z_content.requires_grad)
            and z_context.dtype == z_content.dtype):
        losses = torch.ops.con2.con2_fwd_bwd(
            z_context, z_content, context_labels, sample_ids, float(temperature), _FUSED
        )[0]
        return _weighted_heads(losses, alpha)
    ctx_loss = _supcon(z_context, context_labels, temperature)
    return ctx_loss + alpha * _supcon(z_content, sample_ids, temperature)


def _wants_grad(*tensors) -> bool:
    """The scorer kernels are inference only: with an input that needs a gradient the reference
    (differentiable) computes the op instead of an output that would silently have none."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def top1_cosine(queries: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor | None = None):
    """Exact nearest bank row by cosine similarity: (values float32 [Q], indices int64 [Q])."""
    reference.check_top1_inputs(queries, bank, bank_norms)
    if queries.dtype == torch.float64 or bank.dtype == torch.float64 or _wants_grad(queries, bank, bank_norms):
        return reference.top1_cosine(queries, bank, bank_norms=bank_norms)
    reference.row_norms(queries, "queries")  # raises the reference's errors on zero / NaN rows
    if bank_norms is None:
        bank_norms = reference.row_norms(bank, "bank")
    return torch.ops.con2.top1_cosine(queries, bank, bank_norms)


def simclr_views(images, source, params, size: int, mean: float, std: float, dtype=torch.float32,
                 channels_last: bool = False, context: torch.Tensor | None = None) -> torch.Tensor:
    """con2::simclr_views for con2.data.views.ViewParams (see csrc/con2.cpp); `context`: per view a
    code of con2.data.contexts.KERNEL_CONTEXT_BITS the kernel applies while reading the source."""
    return torch.ops.con2.simclr_views(images, source, params.boxes, params.hflip, params.factors, params.order,
                                       params.gray, int(size), float(mean), float(std), dtype, bool(channels_last),
                                       context)


def mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """Per-row ||(x - mean) @ whitening||^2 (float64 if x or whitening is, else float32)."""
    reference.check_mahalanobis_inputs(x, mean, whitening)
    if _wants_grad(x, mean, whitening):
        return reference.mahalanobis_sq(x, mean, whitening)
    return torch.ops.con2.mahalanobis_sq(x, mean, whitening, CUDA_MAHALANOBIS_KERNEL == "fused")
