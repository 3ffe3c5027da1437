"""The native-op boundary.

Callers use the functions defined here (the losses, top1_cosine, mahalanobis_sq, the view
kernel and the status queries), never con2._C directly. Each op dispatches to the C++/CUDA extension
`con2._C` when it is built, enabled and has a kernel for the input's device, and to
the pure-PyTorch reference in `con2.ops.reference` otherwise.
Set CON2_DISABLE_EXT=1 to force the references.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import reference

_native = None
NATIVE_IMPORT_ERROR: str | None = None
if os.environ.get("CON2_DISABLE_EXT", "0") not in ("1", "true", "yes"):
    try:
        from . import native as _native  # noqa: F811  (registers con2::* ops)
    except (ImportError, OSError, RuntimeError) as exc:  # not built, or built against another torch
        # (a bad CON2_CUDA_* setting is a ValueError and stops here, not a silent fallback)
        _native = None
        NATIVE_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        if importlib.util.find_spec("con2._C") is not None:
            # a pure-Python install has no con2._C and says so in `con2 info`; a con2._C that is there
            # but does not load is a broken build, several times slower than it should be
            warnings.warn(f"con2._C is installed but does not load ({NATIVE_IMPORT_ERROR}); con2 runs on its "
                          f"slower PyTorch references. It was most likely built against another torch than this "
                          f"{torch.__version__}: reinstall con2 with pip install --no-build-isolation "
                          "--force-reinstall --no-deps <con2 source>", RuntimeWarning, stacklevel=2)
else:
    NATIVE_IMPORT_ERROR = "disabled by CON2_DISABLE_EXT=1"


def native_available(device: torch.device | str | None = None) -> bool:
    """True when the extension is loaded and has kernels for `device` (cpu / cuda)."""
    if _native is None:
        return False
    if device is None:
        return True
    return _native.has_kernels(torch.device(device).type)


def _native_for(first) -> bool:
    """Whether the native kernels take this call; a non-tensor goes to the reference, whose checks name it."""
    return isinstance(first, torch.Tensor) and native_available(first.device)


def native_status() -> dict[str, dict[str, bool]]:
    """{op: {device_type: native?}} for `con2 info`."""
    ops = ("con2_loss", "supcon_loss", "top1_cosine", "mahalanobis_sq")
    devices = ("cpu", "cuda")
    status = {op: {d: native_available(d) for d in devices} for op in ops}
    status["simclr_views"] = {d: native_views_kernel(d) for d in devices}
    return status


def cuda_kernel_choices() -> dict[str, object]:
    """The CUDA kernels the environment picked (CON2_CUDA_LOSS, CON2_CUDA_GRAPHS,
    CON2_CUDA_MAHALANOBIS), for `con2 info`; empty without the CUDA extension."""
    if not native_available("cuda"):
        return {}
    return {"loss": _native.CUDA_LOSS_KERNEL, "graphs": _native.CUDA_GRAPHS,
            "mahalanobis": _native.CUDA_MAHALANOBIS_KERNEL}


def native_views_kernel(device: torch.device | str) -> bool:
    """True when the extension has a simclr_views kernel for `device`."""
    return _native is not None and _native.has_kernels(torch.device(device).type, "simclr_views")


def native_views(device: torch.device | str) -> bool:
    """True when the views for `device` are made by the native simclr_views kernel by default."""
    device = torch.device(device)
    return native_views_kernel(device) and (device.type == "cpu" or _native.CUDA_VIEWS_KERNEL == "native")


def simclr_views(images, source, params, size, mean, std, dtype=torch.float32, channels_last=False, context=None):
    """Native SimCLR views (see con2.data.views.TensorViewPipeline); needs native_views(device)."""
    return _native.simclr_views(images, source, params, size, mean, std, dtype, channels_last, context)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    if _native_for(z):
        return _native.supcon_loss(z, labels, temperature)
    return reference.supcon_loss(z, labels, temperature)


def con2_loss(z_context, z_content, context_labels, sample_ids, alpha, temperature=0.07):
    if _native_for(z_context):
        return _native.con2_loss(z_context, z_content, context_labels, sample_ids, alpha, temperature)
    return reference.con2_loss(z_context, z_content, context_labels, sample_ids, alpha, temperature)


def top1_cosine(queries: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor | None = None):
    if _native_for(queries):
        return _native.top1_cosine(queries, bank, bank_norms)
    return reference.top1_cosine(queries, bank, bank_norms=bank_norms)


def mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    if _native_for(x):
        return _native.mahalanobis_sq(x, mean, whitening)
    return reference.mahalanobis_sq(x, mean, whitening)


__all__ = [
    "supcon_loss", "con2_loss", "top1_cosine", "mahalanobis_sq",
    "native_available", "native_status", "native_views", "native_views_kernel", "simclr_views", "reference",
]
