"""Static instruction counts of the CUDA view kernel's pixel loop, without a GPU.

The 224 px view kernel is issue-bound on the H100 (Nsight Compute, docs/PERFORMANCE.md), so the
instructions a pixel costs are what its time follows. This compiles views_kernel<bf16, 3> for
sm_90 with nvcc, disassembles it (cuobjdump, from PATH or Triton's bundled copy) and prints the
basic blocks of the main pixel loop (the loop that stores the view) with their sizes: the
interpolation block first, then per jitter step the dispatch and one block per op (hue,
saturation, contrast, brightness), then grey + normalisation, the stores and the pixel step.

    .venv/bin/python benchmarks/sass_view_kernel.py            # this checkout
    .venv/bin/python benchmarks/sass_view_kernel.py --root DIR # another checkout (e.g. a git worktree)
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    sys.exit("cuobjdump not found (CUDA toolkit or triton needed)")


def compile_sass(root: Path) -> str:
    inc = Path(torch.__file__).parent / "include"
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "vk.cu", Path(tmp) / "vk.cubin"
        src.write_text('#include "cuda/simclr_views.cuh"\n'
                       "template __global__ void con2::views::views_kernel<c10::BFloat16, 3>"
                       "(con2::views::ViewArgs, c10::BFloat16*);\n")
        cmd = ["nvcc", "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-arch=sm_90", "-cubin", "-Xptxas", "-v",
               str(src), "-o", str(cubin), f"-I{inc}", f"-I{inc}/torch/csrc/api/include",
               f"-I{sysconfig.get_paths()['include']}", f"-I{root / 'csrc'}", "-D_GLIBCXX_USE_CXX11_ABI=1"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        regs = [line.strip() for line in out.stderr.splitlines() if "registers" in line]
        print("ptxas:", regs[0] if regs else "?")
        return subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout


def main_loop_blocks(sass: str) -> list[tuple[int, list[str]]]:
    fn = sass[sass.index("views_kernel"):]
    nxt = fn.find("Function :", 10)
    fn = fn[:nxt] if nxt > 0 else fn
    ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4})\*/\s+(.*?);", fn)]

    def target(t):
        return int(t.split("0x")[-1], 16)

    loops = [(target(t), a) for a, t in ins if "BRA" in t and target(t) < a]
    lo, hi = next((h, e) for h, e in loops if any("STG" in t for a, t in ins if h <= a <= e))
    body = [(a, t) for a, t in ins if lo <= a <= hi]
    leaders = {lo}
    for a, t in body:
        if "BRA" in t:
            leaders.update((target(t), a + 16))
    leaders = sorted(x for x in leaders if lo <= x <= hi)
    return [(start, [t for a, t in body if start <= a < end])
            for start, end in zip(leaders, leaders[1:] + [hi + 16])]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    blocks = main_loop_blocks(compile_sass(args.root))
    print(f"main pixel loop: {sum(len(b) for _, b in blocks)} instructions in {len(blocks)} blocks")
    for start, blk in blocks:
        head = " ".join((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for t in blk[:5])
        print(f"  {start:#06x}  {len(blk):4d}  {head}")
