"""View pipeline throughput: the batched tensor pipeline vs the torchvision DataLoader baseline.

One batch = 512 samples x 2 contexts (invert) x 2 views = 2048 views, at 32 px and at 224 px.
CPU: TensorViewPipeline with the native simclr_views kernel and with the torch ops (eager,
chunked) vs WorkerBatchSource (torchvision, 2 worker processes), timed in the same run. GPU
(marked `gpu`, skipped without CUDA): the torch ops eager and torch.compile'd and the native
CUDA kernel, and each one's time relative to one ResNet18 training step (Con2Model, forward +
backward, bf16 autocast, channels_last) on the same 2048 views. pytest-benchmark times one GPU
call plus a synchronisation; the CUDA-event medians (pipeline and train step) are printed and
kept in extra_info.

    pytest benchmarks/test_bench_views.py --benchmark-json=views.json
    CON2_BENCH_VIEWS_N=128 pytest benchmarks/test_bench_views.py     # smaller batches
    python benchmarks/test_bench_views.py --gpu                      # GPU table without pytest
Every case checks its output (shape, dtype, memory layout, finite values in [-1, 1]) before it is
timed, and the values where there is a reference: the native kernel's views (CPU) against the
torch ops on the same random parameters (tests/test_views.py's tolerance, 5e-4 in float32), every
GPU mode's bf16 views against the CPU torch ops on the parameters that mode drew.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import torch

from con2.data.contexts import ContextSet
from con2.data.split import OneClassSplit
from con2.data.views import TensorViewPipeline, ViewConfig, ViewParams, apply_views, sample_view_params

N = int(os.environ.get("CON2_BENCH_VIEWS_N", "512"))
SIZES = [32, 224]
HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _check(views, count, size, c=3, dtype=torch.float32, channels_last=False):
    """`count` views of c channels: shape, dtype, memory layout, finite values in [-1, 1]."""
    assert views.shape == (count, c, size, size) and views.dtype == dtype
    assert views.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    v = views.float()
    assert torch.isfinite(v).all() and v.min() >= -1 and v.max() <= 1


def _assert_same_views(got, want, chunk=256):
    """got against reference views `want` (float32), chunk by chunk (a batch at 224 px is 1.2 GB):
    float32 as tests/test_views.py checks the native kernel (max |d| <= 5e-4, mean |d| < 1e-5),
    bf16 / fp16 output at its rounding (rtol = atol = 1e-2)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    exact = got.dtype == torch.float32
    tol = dict(rtol=0, atol=5e-4) if exact else dict(rtol=1e-2, atol=1e-2)
    total = 0.0
    for i in range(0, got.shape[0], chunk):
        g, w = got[i : i + chunk].float().cpu(), want[i : i + chunk].float().cpu()
        torch.testing.assert_close(g, w, **tol, msg=lambda m, i=i: f"views from {i}: {m}")
        total += (g - w).abs().double().sum().item()
    if exact:
        assert total / got.numel() < 1e-5, total / got.numel()


def _record_rate(benchmark, views: int, stat: str) -> None:
    """views / s of the timed rounds; with --benchmark-disable nothing is timed (only the checks ran)."""
    if benchmark.stats is not None:
        benchmark.extra_info["views_per_s"] = views / getattr(benchmark.stats.stats, stat)


@pytest.mark.parametrize("impl", ["native", "torch"])
@pytest.mark.parametrize("size", SIZES)
def test_cpu_tensor_pipeline(benchmark, size, impl):
    """native = the simclr_views kernel (csrc/cpu), torch = the batched torch ops (its reference)."""
    from con2 import ops

    if impl == "native" and not ops.native_views_kernel("cpu"):
        pytest.skip("con2._C has no simclr_views kernel")
    x = torch.from_numpy(_images(N, size)).permute(0, 3, 1, 2).contiguous()
    pipe = TensorViewPipeline(ContextSet("invert"), ViewConfig(size), native=impl == "native")
    g = torch.Generator().manual_seed(0)
    out = pipe(x, g)
    _check(out, 4 * N, size)  # 2 contexts x 2 views of each sample
    if impl == "native":  # the kernel against its reference, the torch ops, on the same draws
        ref = TensorViewPipeline(ContextSet("invert"), ViewConfig(size), native=False)
        want = ref(x, torch.Generator().manual_seed(0))
        _assert_same_views(out, want)
        del want, ref
    del out
    benchmark.group = f"views-cpu-{size}px"
    benchmark.pedantic(pipe, args=(x, g), rounds=3 if size <= 64 else 1, iterations=1, warmup_rounds=0)
    _record_rate(benchmark, 4 * N, "mean")


@pytest.mark.parametrize("size", SIZES)
def test_cpu_worker_dataloader(benchmark, size):
    from con2.data.workers import WorkerBatchSource

    imgs = _images(N, size)
    split = OneClassSplit("bench", imgs, imgs[:1], np.zeros(1, np.int64), imgs[:0])
    src = WorkerBatchSource(split, ContextSet("invert"), ViewConfig(size), N, 0, "cpu", num_workers=2)
    epoch = iter(range(10**6))

    def one_batch():  # one epoch = one batch; the 2 workers' start-up is included
        (_, views), = list(src.batches_from(next(epoch)))
        return views

    _check(one_batch(), 4 * N, size)
    benchmark.group = f"views-cpu-{size}px"
    benchmark.pedantic(one_batch, rounds=3 if size <= 64 else 1, iterations=1, warmup_rounds=0)
    _record_rate(benchmark, 4 * N, "mean")


@pytest.mark.parametrize("impl", ["native", "torch"])
@pytest.mark.parametrize("c,size", [(1, 224), (3, 224), (3, 32)])
def test_cpu_test_time_views(benchmark, c, size, impl):
    """Scoring's views (ViewEncoder: 256 images, one original and one inverted augmented view) by
    the native kernel vs the torch ops; the encoder only averages pixels, so the views are the cost."""
    from con2.ops import native_views
    from con2.scoring import View, ViewEncoder

    if impl == "native" and not native_views("cpu"):
        pytest.skip("con2._C has no simclr_views kernel")
    imgs = torch.from_numpy(_images(256, size)).permute(0, 3, 1, 2)[:, :c].contiguous()
    ctx, plan = ContextSet("invert"), [View(0, 0, True), View(1, 1, True)]

    seen = []  # the views the timed encoder is given while checking (one batch of 256 per view)

    def encode(x):
        if seen is not None:
            seen.append(x)
        return x.mean((2, 3))

    enc = ViewEncoder(encode, ViewConfig(size), ctx, plan, batch_size=256, native=impl == "native")

    def both():
        return [enc.encode(imgs, v, 0) for v in plan]

    assert all(f.shape == (256, c) and torch.isfinite(f).all() for f in both())
    assert len(seen) == len(plan)
    for views in seen:
        _check(views, 256, size, c=c)
    if impl == "native":  # against the torch ops' views (parameters keyed by image: the same draws)
        want = []
        ref = ViewEncoder(lambda x: want.append(x) or x.mean((2, 3)), ViewConfig(size), ctx, plan, batch_size=256,
                          native=False)
        for v in plan:
            ref.encode(imgs, v, 0)
        for got, views in zip(seen, want, strict=True):
            _assert_same_views(got, views)
        del want, ref
    seen = None  # the timed rounds keep nothing
    benchmark.group = f"test-time-views-cpu-{c}ch-{size}px"
    benchmark.pedantic(both, rounds=3, iterations=1, warmup_rounds=0)
    _record_rate(benchmark, 512, "min")  # the minimum over rounds, as docs/PERFORMANCE.md reports this case


def _cuda_time(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _cpu_reference(x_u8, cfg, params):
    """The CPU torch ops (float32) on the views' parameters `params` (drawn on the GPU, copied
    here), the views laid out as TensorViewPipeline lays them out for the invert context set: block
    2k + v = context k, view v, n samples each."""
    x = x_u8.cpu()
    per_context = torch.stack(ContextSet("invert").apply_all(x))  # [K, n, C, H, W]
    both = per_context[:, None].expand(-1, 2, -1, -1, -1, -1).reshape(-1, *x.shape[1:])
    cpu_params = ViewParams(params.boxes.cpu(), params.hflip.cpu(), params.factors.cpu(), params.order.cpu(),
                            params.gray.cpu())
    return apply_views(both, cpu_params, cfg)


def gpu_case(size, mode, n=N):
    """(pipeline ms, train-step ms, call) for 4n views on the GPU; mode eager / compiled (torch ops)
    or native (the simclr_views CUDA kernel); call() makes one batch and waits for it. Checks the
    views against the CPU torch ops on the same parameters first."""
    from con2.model import Con2Model

    dev = torch.device("cuda")
    cfg = ViewConfig(size)
    x = torch.from_numpy(_images(n, size)).permute(0, 3, 1, 2).contiguous().to(dev)
    # native: the kernel with the default compile setting (random parameters derived by a compiled
    # function, as in training); eager: no compilation at all; compiled: the torch ops' view function
    # compiled (their parameters are derived eagerly either way)
    pipe = TensorViewPipeline(ContextSet("invert"), cfg, dtype=torch.bfloat16, channels_last=True,
                              compile={"eager": False, "compiled": True, "native": None}[mode], native=mode == "native")
    out = pipe(x, torch.Generator(dev).manual_seed(0))
    _check(out, 4 * n, size, dtype=torch.bfloat16, channels_last=True)
    # the same draws as the pipeline's: same generator seed, view count and derivation
    params = sample_view_params(4 * n, size, size, cfg, torch.Generator(dev).manual_seed(0), dev,
                                compile=mode == "native")
    _assert_same_views(out, _cpu_reference(x, cfg, params))
    del params
    g = torch.Generator(dev).manual_seed(1)
    t_pipe = _cuda_time(lambda: pipe(x, g))

    model = Con2Model(3, size).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            zc, zs = model(out)
            loss = (zc.float().sum() + zs.float().sum()) * 0
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = _cuda_time(step, reps=10)

    def call():
        views = pipe(x, g)
        torch.cuda.synchronize()
        return views

    return t_pipe, t_step, call


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["eager", "compiled", "native"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_tensor_pipeline(benchmark, size, mode):
    """pytest-benchmark times one call + synchronisation; extra_info: the CUDA-event medians."""
    from con2 import ops

    if mode == "native" and not ops.native_views_kernel("cuda"):
        pytest.skip("con2._C has no CUDA simclr_views kernel (built without CUDA)")
    t_pipe, t_step, call = gpu_case(size, mode)
    print(f"\n[views cuda] {size}px {mode}: pipeline {t_pipe:.3f} ms ({4 * N / t_pipe * 1e3:,.0f} views/s), "
          f"train step {t_step:.3f} ms, ratio {t_pipe / t_step:.3f} (CUDA-event medians)")
    benchmark.group = f"views-cuda-{size}px"
    benchmark.extra_info.update(pipeline_ms=t_pipe, train_step_ms=t_step, ratio=t_pipe / t_step,
                                views_per_s=4 * N / t_pipe * 1e3, timer="pipeline_ms, train_step_ms: CUDA-event "
                                "medians of 20 / 10 calls; the benchmark's own stats: wall time of one call + sync")
    benchmark.pedantic(call, rounds=20, iterations=1, warmup_rounds=1)


if __name__ == "__main__" and "--gpu" in sys.argv:
    if not HAS_CUDA:
        sys.exit("test_bench_views.py --gpu: needs a CUDA GPU (none here); the CPU cases run under pytest")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {4 * N} views (N={N}, K=2)")
    failed = 0
    for size in SIZES:
        for mode in ("eager", "compiled", "native"):
            t0 = time.perf_counter()
            try:
                tp, ts, _ = gpu_case(size, mode)
                print(f"{size:4d}px {mode:8s}: pipeline {tp:8.3f} ms  "
                      f"({4 * N / tp * 1e3:,.0f} views/s)  train step {ts:8.3f} ms  ratio {tp / ts:.3f}  "
                      f"[case wall {time.perf_counter() - t0:.0f} s]", flush=True)
            except Exception as e:  # report and go on with the other cases; the exit status says so
                failed += 1
                print(f"{size:4d}px {mode}: FAILED {type(e).__name__}: {e}", flush=True)
    sys.exit(f"{failed} case(s) failed" if failed else 0)
