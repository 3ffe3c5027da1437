"""Kernel-level profile of the GPU view pipeline (eager vs compiled), for docs/PERFORMANCE.md.

    python benchmarks/profile_views_gpu.py [size] [n]
"""
import sys

import torch

from con2.data.contexts import ContextSet
from con2.data.views import TensorViewPipeline, ViewConfig

size = int(sys.argv[1]) if len(sys.argv) > 1 else 224
n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
dev = torch.device("cuda")
x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=dev)
for compile_ in (False, True):
    pipe = TensorViewPipeline(ContextSet("invert"), ViewConfig(size), dtype=torch.bfloat16, channels_last=True,
                              compile=compile_)
    g = torch.Generator(dev).manual_seed(0)
    for _ in range(3):
        pipe(x, g)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            pipe(x, g)
        torch.cuda.synchronize()
    print(f"===== {size}px n={n} compile={compile_} (5 calls)")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=70))
