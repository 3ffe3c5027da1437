"""What `con2 info` prints: versions, devices, and which optional parts work here."""
from __future__ import annotations

import importlib
import platform

import torch

from . import __version__


def _optional_version(module: str) -> str:
    try:
        mod = importlib.import_module(module)  # (__import__("a.b") would return package a)
        return getattr(mod, "__version__", "installed")
    except Exception as exc:  # broken installs count as missing
        return f"not available ({type(exc).__name__})"


def info_text() -> str:
    from . import ops

    lines = [
        f"con2 {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}",
        f"CUDA available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
        f"CPU threads: {torch.get_num_threads()}",
        "native ops (con2._C): " + ("loaded" if ops.native_available() else f"not loaded ({ops.NATIVE_IMPORT_ERROR})"),
    ]
    for op, devices in ops.native_status().items():
        where = ", ".join(f"{d}={'native' if ok else 'reference'}" for d, ok in devices.items())
        lines.append(f"  {op}: {where}")
    cuda = ops.cuda_kernel_choices()
    if cuda:
        lines.append(f"  CUDA Con2 loss kernels: {cuda['loss']} (CON2_CUDA_LOSS=blocked|fused), "
                     f"CUDA graph replay {'on' if cuda['graphs'] else 'off'} (CON2_CUDA_GRAPHS=1|0)")
        lines.append(f"  CUDA mahalanobis_sq kernel: {cuda['mahalanobis']} (CON2_CUDA_MAHALANOBIS=blocked|fused)")
    from .data.pipeline_info import available_pipelines

    lines.append("view pipelines:")
    lines += [f"  {k}: {v}" for k, v in available_pipelines().items()]
    from .data.datasets import memory_budget

    try:
        lines.append(f"image folders held in memory up to {memory_budget() / 2**20:,.0f} MiB decoded "
                     f"(CON2_MEMORY_BUDGET_MB), larger ones decoded on access")
    except ValueError as exc:  # a bad setting: said here, the rest of the diagnosis still printed
        lines.append(f"image folders held in memory: {exc}")
    for name, use in (("faiss", "the benchmarks' baseline"), ("medmnist", "MedMNIST downloads"),
                      ("nvidia.dali", "the dali pipeline"), ("pydicom", "DICOM files")):
        lines.append(f"{name} ({use}): {_optional_version(name)}")
    lines += _dicom_decoders()
    return "\n".join(lines)


# Compressed DICOM transfer syntaxes met in practice, by pydicom's UID names
DICOM_SYNTAXES = ("JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1", "JPEGLSLossless",
                  "JPEG2000Lossless", "JPEG2000", "RLELossless")


def _dicom_decoders() -> list[str]:
    """Which compressed DICOM syntaxes pydicom can decode here (its plugins are optional packages):
    a file of another one is refused when training meets it. pydicom 3 only; none without pydicom."""
    try:
        from pydicom import uid
        from pydicom.pixels import get_decoder
    except ImportError:
        return []
    ok, missing = [], {}
    for name in DICOM_SYNTAXES:
        decoder = get_decoder(getattr(uid, name))
        if decoder.is_available:
            ok.append(name)
        else:
            missing[name] = "; ".join(decoder.missing_dependencies)
    lines = [f"  compressed DICOM decoded: {', '.join(ok) or 'none'}"]
    lines += [f"  not decoded: {name} ({needs})" for name, needs in missing.items()]
    return lines
