"""Kernel-level profiles on the GPU, for docs/PERFORMANCE.md: where the time of the two-head
Con2 loss (fwd+bwd; blocked, fused, eager) and of the view pipeline (eager torch ops, native kernel) goes.

    python benchmarks/profile_gpu.py loss [M ...]
    python benchmarks/profile_gpu.py views [size ...]
    python benchmarks/profile_gpu.py view_parts [size ...]   # host and GPU time of each part of the native pipeline
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from con2.data.contexts import ContextSet
from con2.data.views import TensorViewPipeline, ViewConfig
from con2 import ops
from con2.ops import reference

dev = torch.device("cuda")


def show(title, fn, reps=5, sort="self_cuda_time_total"):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    print(f"===== {title} ({reps} calls)")
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60))


def loss(ms):
    for m in ms:
        zc = F.normalize(torch.randn(m, 128, device=dev), dim=1)
        zs = F.normalize(torch.randn(m, 128, device=dev), dim=1)
        n = m // 4
        cl = (torch.arange(m, device=dev) // (2 * n)) % 2
        sid = torch.arange(m, device=dev) % n
        for name in ("blocked", "fused"):
            show(f"loss M={m} {name}", lambda: torch.ops.con2.con2_fwd_bwd(zc, zs, cl, sid, 0.07, name == "fused"))

        def eager():
            a, b = zc.detach().requires_grad_(True), zs.detach().requires_grad_(True)
            reference.con2_loss(a, b, cl, sid, 0.5, 0.07).backward()
        show(f"loss M={m} eager reference", eager)

        def training_call():  # what a training step runs: con2.ops.con2_loss and backward, host side
            a, b = zc.detach().requires_grad_(True), zs.detach().requires_grad_(True)
            ops.con2_loss(a, b, cl, sid, 0.5, 0.07).backward()
        show(f"loss M={m} training call (blocked), by host time", training_call, sort="self_cpu_time_total")


def views(sizes, n=512):
    for size in sizes:
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=dev)
        for mode in ("eager", "native"):  # compiled: benchmarks/test_bench_views.py --gpu
            pipe = TensorViewPipeline(ContextSet("invert"), ViewConfig(size), dtype=torch.bfloat16,
                                      channels_last=True, compile=mode == "compiled", native=mode == "native")
            g = torch.Generator(dev).manual_seed(0)
            show(f"views {size}px, n={n} ({4 * n} views) {mode}", lambda: pipe(x, g))


def view_parts(sizes, n=512, reps=30):
    """Median host time (enqueue) and GPU time (events, synchronised) of each step of the native
    view pipeline, and of the whole call."""
    from con2.data import views as V

    def timed(fn):
        fn(); torch.cuda.synchronize()  # noqa: E702
        host, gpu = [], []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter(); a.record(); fn(); b.record()  # noqa: E702
            host.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            gpu.append(a.elapsed_time(b))
        return sorted(host)[reps // 2], sorted(gpu)[reps // 2]

    for size in sizes:
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=dev)
        cfg = ViewConfig(size)
        pipe = TensorViewPipeline(ContextSet("invert"), cfg, dtype=torch.bfloat16, channels_last=True, native=True)
        g = torch.Generator(dev).manual_seed(0)
        images, src, code = pipe.kernel_inputs(x)
        p = V.sample_view_params(4 * n, size, size, cfg, g, dev)
        parts = {
            "context images (cat; not made since the kernel inverts)": lambda: pipe.context_images(x),
            "params, compiled": lambda: V.sample_view_params(4 * n, size, size, cfg, g, dev, compile=True),
            "params, eager": lambda: V.sample_view_params(4 * n, size, size, cfg, g, dev, compile=False),
            "view sources + codes (cached)": lambda: pipe.kernel_inputs(x),
            "simclr_views op": lambda: ops.simclr_views(images, src, p, size, 0.5, 0.5, torch.bfloat16, True, code),
            "whole pipeline": lambda: pipe(x, g),
        }
        for name, fn in parts.items():
            host, gpu = timed(fn)
            print(f"views {size}px n={n}: {name:40s} host {host:7.3f} ms  events {gpu:7.3f} ms", flush=True)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("profile_gpu.py: needs a CUDA GPU (none here)")
    what, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"loss": lambda: loss(args or [2048, 8192]), "views": lambda: views(args or [32, 224]),
     "view_parts": lambda: view_parts(args or [32, 224])}[what]()
