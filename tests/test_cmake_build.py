"""CMakeLists.txt builds the native ops as a plain libtorch library (for C++ users and IDEs): the CPU
kernels built with CMake, loaded with torch.ops.load_library in a process without con2._C, agree
with the PyTorch references. (The CUDA sources are compiled by setup.py in every `make test`.)"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cmake() -> str:
    """A CMake >= 3.26 (the test extra installs one into the venv; torch's config needs 3.26 with CUDA)."""
    for exe in (Path(sys.executable).parent / "cmake", shutil.which("cmake")):
        if exe and Path(exe).exists():
            out = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
            found = re.search(r"(\d+)\.(\d+)", out)
            if found and (int(found[1]), int(found[2])) >= (3, 18):  # CMakeLists.txt's minimum (no CUDA here)
                return str(exe)
    pytest.skip("needs CMake >= 3.18 (pip install cmake; the test extra installs it)")


def _cuda_toolkit_for_torch() -> None:
    """A CUDA build of torch: its CMake config needs a CUDA toolkit even for this CPU-only library."""
    import torch

    if torch.version.cuda and not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")
                                   or Path("/usr/local/cuda/bin/nvcc").exists()):
        pytest.skip(f"torch {torch.__version__} is a CUDA build and no CUDA toolkit is here: its CMake config "
                    "cannot be used without one (setup.py's build of con2._C needs none)")


CHECK = """
import torch
torch.ops.load_library({lib!r})
from con2 import ops
from con2.ops import reference
assert ops._native is None  # the references only: the ops below are the CMake library's
g = torch.Generator().manual_seed(0)
q, bank = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g)
v, i = torch.ops.con2.top1_cosine(q, bank, bank.norm(dim=1))
rv, ri = reference.top1_cosine(q, bank)
assert torch.equal(i, ri) and torch.allclose(v, rv, atol=1e-6)
z = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=1)
labels = torch.arange(64) // 4
loss, grad = torch.ops.con2.supcon_fwd_bwd(z, labels, 0.1)
zr = z.clone().requires_grad_(True)
ref = reference.supcon_loss(zr, labels, 0.1)
ref.backward()
assert torch.allclose(loss, ref, atol=1e-5) and torch.allclose(grad, zr.grad, atol=1e-5)
zs = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=1)
contexts = torch.arange(64) % 2
losses, dzc, dzs = torch.ops.con2.con2_fwd_bwd(z, zs, contexts, labels, 0.1, False)
for got, grad, zz, lab in ((losses[0], dzc, z, contexts), (losses[1], dzs, zs, labels)):
    zr = zz.clone().requires_grad_(True)
    ref = reference.supcon_loss(zr, lab, 0.1)
    ref.backward()
    assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(grad, zr.grad, atol=1e-5)
x, mean, w = torch.randn(20, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, 8, generator=g)
assert torch.allclose(torch.ops.con2.mahalanobis_sq(x, mean, w), ((x - mean) @ w).pow(2).sum(1), rtol=1e-5)
print("ok")
"""


def test_cmake_builds_the_ops_as_a_libtorch_library(tmp_path):
    import torch.utils

    cmake = _cmake()
    _cuda_toolkit_for_torch()
    build = tmp_path / "build"
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-DCON2_WITH_CUDA=OFF",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja") or (Path(sys.executable).parent / "ninja").exists():
        configure += ["-G", "Ninja"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (configure, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 1)]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lib = build / "libcon2_ops.so"
    assert lib.is_file()
    done = subprocess.run([sys.executable, "-c", CHECK.format(lib=str(lib))], capture_output=True, text=True,
                          env={**env, "CON2_DISABLE_EXT": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
