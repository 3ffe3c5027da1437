"""Builds the con2 package and its native extension con2._C (csrc/).

CPU kernels are always compiled. CUDA kernels are compiled when a CUDA toolchain is
found (CUDA_HOME / CUDA_PATH, else the toolkit the `nvcc` on PATH belongs to, resolving
wrapper scripts) and PyTorch is a CUDA build, or when FORCE_CUDA=1. Environment:
  FORCE_CUDA=1            build the CUDA kernels even if detection says no
  CON2_NO_CUDA=1          never build the CUDA kernels (fast CPU-only build)
  CON2_NO_EXT=1           pure-Python install, no extension
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "9.0")
  CON2_NO_HOST_ARCH=1     do not add -mavx2 -mfma even if this CPU has them
No network or git access happens here. Building con2._C needs the torch it will run with already
installed (pip install --no-build-isolation); an sdist needs no torch.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_root_from_nvcc(nvcc: str) -> str | None:
    """Toolkit root for an nvcc path; follows symlinks and small `exec .../nvcc` wrappers."""
    path = os.path.realpath(nvcc)
    for _ in range(4):
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return None
        if head.startswith(b"\x7fELF") or b"\0" in head:  # the real binary
            root = os.path.dirname(os.path.dirname(path))
            return root if os.path.isdir(os.path.join(root, "include")) else None
        match = re.search(rb"(/[^\s\"']+/bin/nvcc)\b", head)  # wrapper script
        if not match:
            return None
        target = os.path.realpath(match.group(1).decode())
        if target == path:
            return None
        path = target
    return None


def find_cuda_home() -> tuple[str | None, str]:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and os.path.isdir(value):
            return value, var
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_root_from_nvcc(nvcc)
        if root:
            return root, f"nvcc on PATH ({nvcc})"
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda", "/usr/local/cuda"
    return None, "not found"


def _host_simd_flags() -> list[str]:
    if _truthy("CON2_NO_HOST_ARCH") or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(re.findall(r"\w+", fh.read()))
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


# setup.py commands that compile con2._C (the others, sdist / egg_info / dist_info, need no torch)
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "develop", "editable_wheel"}


def extension_config():
    """(ext_modules, cmdclass) for con2._C, or ([], {}) when there is nothing to build."""
    if _truthy("CON2_NO_EXT") or not os.path.exists(os.path.join(CSRC, "con2.cpp")):
        print("[con2] native extension: skipped")
        return [], {}
    cuda_home, cuda_source = find_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
    except ImportError:
        if not BUILD_COMMANDS & set(sys.argv[1:]):  # an sdist or the metadata: nothing is compiled
            return [], {}
        raise SystemExit(
            "con2: the native extension con2._C is built against the torch it will run with, and none is "
            "installed here. Install torch first (pip install torch torchvision), then this package without "
            "build isolation: pip install --no-build-isolation <con2 source>; or CON2_NO_EXT=1 for a "
            "pure-Python install."
        ) from None
    from torch.utils import cpp_extension as cx

    if _truthy("CON2_NO_CUDA"):
        with_cuda, why = False, "CON2_NO_CUDA=1"
    elif _truthy("FORCE_CUDA"):
        with_cuda, why = True, "FORCE_CUDA=1"
    elif cuda_home and torch.version.cuda:
        with_cuda, why = True, "toolchain found"
    else:
        with_cuda = False
        why = "no CUDA toolchain" if not cuda_home else "PyTorch is not a CUDA build"
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    sources = [rel(os.path.join(CSRC, f)) for f in ("con2.cpp", "autograd.cpp", "module.cpp")]
    sources += sorted(rel(p) for p in glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math"] + _host_simd_flags()
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    if with_cuda:
        sources += sorted(rel(p) for p in glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        ext_cls = cx.CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext_cls = cx.CppExtension
        extra = {"cxx": cxx}
    print(
        "[con2] native extension config:\n"
        f"[con2]   torch {torch.__version__} (CUDA {torch.version.cuda})\n"
        f"[con2]   CUDA kernels: {'yes' if with_cuda else 'no'} ({why})\n"
        f"[con2]   CUDA_HOME: {cuda_home} (from {cuda_source})\n"
        f"[con2]   TORCH_CUDA_ARCH_LIST: {os.environ.get('TORCH_CUDA_ARCH_LIST') if with_cuda else '-'}\n"
        f"[con2]   cxx flags: {' '.join(cxx)}\n"
        f"[con2]   sources: {' '.join(sources)}"
    )
    ext = ext_cls(
        name="con2._C",
        sources=sources,
        include_dirs=[CSRC],
        # the kernels live in headers: a header edit must rebuild the extension
        depends=sorted(rel(p) for pat in ("*.h", "*/*.h", "*/*.cuh") for p in glob.glob(os.path.join(CSRC, pat))),
        extra_compile_args=extra,
    )
    return [ext], {"build_ext": cx.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_config()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
