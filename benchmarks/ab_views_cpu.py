"""Views/s of the native CPU view pipeline (512 samples, invert, 2048 views) at one size: one number,
for interleaved before/after runs of two checkouts (each with its extension built in place).

    for r in 1 2 3; do (cd OLD && PYTHONPATH=. python NEW/benchmarks/ab_views_cpu.py 224); \
                       (cd NEW && PYTHONPATH=. python benchmarks/ab_views_cpu.py 224); done
"""
import sys, time, torch, numpy as np
from con2.data.contexts import ContextSet
from con2.data.views import TensorViewPipeline, ViewConfig
size = int(sys.argv[1]); n = 512
x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
pipe = TensorViewPipeline(ContextSet("invert"), ViewConfig(size), native=True)
g = torch.Generator().manual_seed(0)
pipe(x, g)
best = 1e9
for _ in range(3 if size <= 64 else 1):
    t = time.perf_counter(); pipe(x, g); best = min(best, time.perf_counter() - t)
print(f"{4*n/best:.0f}")
