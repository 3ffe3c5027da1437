"""Benchmarks of the native ops against their PyTorch baselines (pytest-benchmark).

Every case checks correctness against the reference before it is timed, and the
PyTorch baseline is timed in the same run (same group). Default sizes suit a small
CPU; CON2_BENCH_FULL=1 adds the large cases (loss M=8192, top1 N=1e6, mahalanobis
Q=1e6). GPU cases are marked `gpu` and skipped without CUDA.

    pytest benchmarks/ --benchmark-json=bench.json              # CPU defaults
    CON2_BENCH_FULL=1 pytest benchmarks/ -m gpu --benchmark-json=gpu.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from con2.ops import reference

try:
    from con2.ops import native
except Exception as exc:
    pytest.skip(f"con2._C not available: {exc}", allow_module_level=True)

try:
    import faiss
except Exception:
    faiss = None

FULL = os.environ.get("CON2_BENCH_FULL", "0") == "1"
full_only = pytest.mark.skipif(not FULL, reason="set CON2_BENCH_FULL=1")
HAS_CUDA = torch.cuda.is_available() and native.has_kernels("cuda")
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
]
TEMPERATURE = 0.07


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(benchmark, run, on, group, **info):
    """Time `run` after one untimed call that sizes the number of rounds."""
    import time

    t0 = time.perf_counter()
    run()
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark.pedantic(run, rounds=_rounds(on, time.perf_counter() - t0), warmup_rounds=1)


def _rounds(device, seconds_hint):
    """Rounds so that a case takes a few seconds on this device."""
    if device == "cuda":
        return 30
    return max(2, min(10, int(6 / max(seconds_hint, 1e-3))))


_compiled = {}


def _compiled_reference():
    if "loss" not in _compiled:
        _compiled["loss"] = torch.compile(reference.supcon_loss, dynamic=False)
    return _compiled["loss"]


# ------------------------------------------------------------------------- loss
LOSS_M = [256, 2048, pytest.param(8192, marks=full_only)]


@pytest.mark.parametrize("impl", ["native", "eager", "compiled"])
@pytest.mark.parametrize("m", LOSS_M)
@pytest.mark.parametrize("device", DEVICES)
def test_loss_fwd_bwd(benchmark, device, m, impl):
    d = 128
    g = torch.Generator().manual_seed(m)
    z = F.normalize(torch.randn(m, d, generator=g), dim=1).to(device)
    labels = torch.randint(0, 4, (m,), generator=g).to(device)
    fn = {"native": native.supcon_loss, "eager": reference.supcon_loss, "compiled": None}[impl]
    if impl == "compiled":
        fn = _compiled_reference()

    def run():
        x = z.detach().requires_grad_(True)
        loss = fn(x, labels, TEMPERATURE)
        loss.backward()
        _sync(device)
        return loss.detach(), x.grad

    # correctness before timing
    l_ref, g_ref = (lambda x: (reference.supcon_loss(x, labels, TEMPERATURE), x))(z.detach().requires_grad_(True))
    l_ref.backward()
    loss, grad = run()
    torch.testing.assert_close(loss, l_ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, g_ref.grad, rtol=1e-3, atol=1e-6)
    del l_ref, g_ref
    _time(benchmark, run, device, f"loss fwd+bwd {device} M={m} D={d}", device=device, M=m, D=d, impl=impl)


_compiled_con2 = {}


def _con2_impl(impl):
    if impl == "compiled":
        if "fn" not in _compiled_con2:
            _compiled_con2["fn"] = torch.compile(reference.con2_loss, dynamic=False)
        return _compiled_con2["fn"]
    if impl in ("native", "fused"):
        fused = impl == "fused"
        return lambda zc, zs, cl, sid, alpha, tau: _con2_native(zc, zs, cl, sid, alpha, tau, fused)  # noqa: E731
    return reference.con2_loss


def _con2_native(zc, zs, cl, sid, alpha, tau, fused):
    if not fused:
        return native.con2_loss(zc, zs, cl, sid, alpha, tau)  # what training runs
    return native._weighted_heads(torch.ops.con2.con2_fwd_bwd(zc, zs, cl, sid, tau, True)[0], alpha)


@pytest.mark.parametrize("impl", ["native", "fused", "eager", "compiled"])
@pytest.mark.parametrize("m", LOSS_M)
@pytest.mark.parametrize("device", DEVICES)
def test_con2_loss_fwd_bwd(benchmark, device, m, impl):
    """The training call: both heads (D = 128), context labels and sample ids as in a Con2 batch.
    native = the default kernels (CUDA: both heads in shared launches up to M = 2896, then row-blocked
    per head), fused = the single-pass tiled CUDA kernels."""
    if impl == "fused" and device != "cuda":
        pytest.skip("the fused kernels are CUDA kernels (CPU: tests/test_cuda_kernels_emu.py)")
    d, alpha = 128, 0.5
    g = torch.Generator().manual_seed(m)
    zc = F.normalize(torch.randn(m, d, generator=g), dim=1).to(device)
    zs = F.normalize(torch.randn(m, d, generator=g), dim=1).to(device)
    n = m // 4
    cl = (torch.arange(m) // (2 * n) % 2).to(device)  # blocks (context k, view v) of n rows
    sid = (torch.arange(m) % n).to(device)
    fn = _con2_impl(impl)

    def run():
        a, b = zc.detach().requires_grad_(True), zs.detach().requires_grad_(True)
        loss = fn(a, b, cl, sid, alpha, TEMPERATURE)
        loss.backward()
        _sync(device)
        return loss.detach(), a.grad, b.grad

    ra, rb = zc.detach().requires_grad_(True), zs.detach().requires_grad_(True)
    ref = reference.con2_loss(ra, rb, cl, sid, alpha, TEMPERATURE)
    ref.backward()
    loss, ga, gb = run()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ga, ra.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(gb, rb.grad, rtol=1e-3, atol=1e-6)
    del ref, ra, rb
    _time(benchmark, run, device, f"con2 loss fwd+bwd {device} M={m} D={d}", device=device, M=m, D=d, impl=impl)


_RSS_SAMPLER = """
import os, threading, time
_page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _page
class Peak:
    def __enter__(self):
        self.base = rss(); self.peak = self.base; self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True); self.t.start(); return self
    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss()); time.sleep(0.0005)
    def __exit__(self, *a):
        self.stop = True; self.t.join(); self.peak = max(self.peak, rss())
"""


def _cuda_peak_extra_bytes(run) -> int:
    """Peak CUDA memory that `run()` allocates beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _peak_extra_bytes_cpu(impl: str, m: int, d: int) -> int:
    """Peak RSS growth of one loss fwd+bwd in a fresh process (torch allocations are invisible to tracemalloc)."""
    code = _RSS_SAMPLER + f"""
import json, torch, torch.nn.functional as F
from con2.ops import native, reference
torch.manual_seed(0)
z = F.normalize(torch.randn({m}, {d}), dim=1).requires_grad_(True)
labels = torch.randint(0, 4, ({m},))
fn = native.supcon_loss if {impl!r} == "native" else reference.supcon_loss
small = F.normalize(torch.randn(64, {d}), dim=1).requires_grad_(True)
fn(small, labels[:64], 0.07).backward()   # warm up allocator / thread pools
with Peak() as p:
    fn(z, labels, 0.07).backward()
print(json.dumps(p.peak - p.base))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("impl", ["native", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_loss_peak_memory(benchmark, device, impl):
    m = 8192 if (FULL or device == "cuda") else 4096
    d = 128
    if device == "cpu":
        extra = _peak_extra_bytes_cpu(impl, m, d)
    else:
        z = F.normalize(torch.randn(m, d, device=device), dim=1).requires_grad_(True)
        labels = torch.randint(0, 4, (m,), device=device)
        fn = native.supcon_loss if impl == "native" else reference.supcon_loss
        extra = _cuda_peak_extra_bytes(lambda: fn(z, labels, TEMPERATURE).backward())
    benchmark.group = f"loss peak memory {device} M={m} D={d}"
    benchmark.extra_info.update(device=device, M=m, D=d, impl=impl, peak_extra_mib=round(extra / 2**20, 1))
    print(f"\n[peak memory] {device} {impl} M={m} D={d}: {extra / 2**20:.1f} MiB")
    benchmark.pedantic(lambda: None, rounds=1)


# ------------------------------------------------------------------------- top1
TOP1_N = [1_000, 10_000, 100_000, pytest.param(1_000_000, marks=full_only)]


@pytest.mark.parametrize("impl", ["native", "mm_max", "faiss"])
@pytest.mark.parametrize("q", [128, 1024])
@pytest.mark.parametrize("n", TOP1_N)
@pytest.mark.parametrize("device", DEVICES)
def test_top1(benchmark, device, n, q, impl):
    d = 512
    g = torch.Generator().manual_seed(n + q)
    bank = torch.randn(n, d, generator=g).to(device)
    queries = torch.randn(q, d, generator=g).to(device)
    norms = reference.row_norms(bank, "bank")  # precomputed once per bank, for every impl
    inv = norms.reciprocal()

    if impl == "native":
        def run():
            out = native.top1_cosine(queries, bank, norms)
            _sync(device)
            return out
    elif impl == "mm_max":
        if n * q * 4 > 6 * 2**30:
            pytest.skip("Q x N similarity too large to materialise")

        def run():
            qu = queries / queries.norm(dim=1, keepdim=True)
            out = torch.mm(qu, bank.T).mul_(inv).max(dim=1)
            _sync(device)
            return out
    else:
        if faiss is None:
            pytest.skip("faiss not installed")
        unit = F.normalize(bank, dim=1)
        if device == "cuda":
            if not hasattr(faiss, "StandardGpuResources"):
                pytest.skip("faiss-gpu not installed")
            res = faiss.StandardGpuResources()
            index = faiss.GpuIndexFlatIP(res, d)
            index.add(unit.cpu().numpy())
        else:
            index = faiss.IndexFlatIP(d)
            index.add(unit.numpy())

        def run():
            qu = F.normalize(queries, dim=1).cpu().numpy()
            vals, idx = index.search(qu, 1)
            return torch.from_numpy(vals[:, 0]), torch.from_numpy(idx[:, 0])

    # correctness before timing
    v_ref, i_ref = reference.top1_cosine(queries, bank, bank_norms=norms)
    vals, idx = run()
    if impl == "faiss":  # float32 summation order differs: allow rare near-tie swaps
        assert (idx.to(i_ref.device) == i_ref).float().mean() >= 0.999
    else:  # equal except at float32 near-ties (|dv| <= 2e-6), which a different summation order may flip
        same = idx.to(i_ref.device) == i_ref
        assert bool((same | ((vals.float().to(v_ref.device) - v_ref).abs() <= 2e-6)).all())
        assert same.float().mean() >= 0.999
    torch.testing.assert_close(vals.float().to(v_ref.device), v_ref, rtol=1e-4, atol=1e-5)
    _time(benchmark, run, device, f"top1 {device} N={n} Q={q} D={d}", device=device, N=n, Q=q, D=d, impl=impl)


@pytest.mark.parametrize("device", DEVICES)
def test_top1_peak_memory(benchmark, device):
    """Peak extra memory of native top1 at N=1e6 (CPU: RSS growth in a fresh process)."""
    if device == "cpu" and not FULL:
        pytest.skip("set CON2_BENCH_FULL=1")
    n, q, d = 1_000_000, 1024, 512
    if device == "cpu":
        code = _RSS_SAMPLER + f"""
import json, torch
from con2.ops import native
torch.manual_seed(0)
bank = torch.randn({n}, {d}); queries = torch.randn({q}, {d}); norms = bank.norm(dim=1)
native.top1_cosine(queries[:8], bank[:5000], norms[:5000])
with Peak() as p:
    native.top1_cosine(queries, bank, norms)
print(json.dumps(p.peak - p.base))
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        extra = int(json.loads(out.stdout.strip().splitlines()[-1]))
    else:
        bank = torch.randn(n, d, device=device)
        queries = torch.randn(q, d, device=device)
        norms = bank.norm(dim=1)
        extra = _cuda_peak_extra_bytes(lambda: native.top1_cosine(queries, bank, norms))
    benchmark.group = f"top1 peak memory {device} N={n} Q={q} D={d}"
    benchmark.extra_info.update(device=device, N=n, Q=q, D=d, peak_extra_mib=round(extra / 2**20, 1))
    print(f"\n[peak memory] top1 {device} N={n} Q={q}: {extra / 2**20:.1f} MiB")
    benchmark.pedantic(lambda: None, rounds=1)


# ------------------------------------------------------------------------- mahalanobis
MAHA_Q = [10_000, 100_000, pytest.param(1_000_000, marks=full_only)]


@pytest.mark.parametrize("precision", ["highest", "high"])
@pytest.mark.parametrize("impl", ["native", "fused", "reference"])
@pytest.mark.parametrize("q", MAHA_Q)
@pytest.mark.parametrize("device", DEVICES)
def test_mahalanobis(benchmark, device, q, impl, precision):
    """native = the default kernel (blocked on CUDA), fused = the one-pass CUDA kernel.
    precision = torch.set_float32_matmul_precision: "high" lets cuBLAS (native and reference
    alike) use TF32 tensor cores; the fused kernel is 3xTF32 either way."""
    if impl == "fused" and device != "cuda":
        pytest.skip("the fused kernel is a CUDA kernel (CPU: tests/test_cuda_kernels_emu.py)")
    if precision == "high" and (device != "cuda" or impl == "fused"):
        pytest.skip("TF32 is a CUDA matmul setting; the fused kernel ignores it")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        _mahalanobis_case(benchmark, device, q, impl, precision)
    finally:
        torch.set_float32_matmul_precision(before)


def _mahalanobis_case(benchmark, device, q, impl, precision):
    d = 512
    g = torch.Generator().manual_seed(q)
    x = torch.randn(q, d, generator=g).to(device)
    mean = torch.randn(d, generator=g).to(device)
    w = (torch.randn(d, d, generator=g) / d**0.5).to(device)
    fn = {"native": native.mahalanobis_sq, "reference": reference.mahalanobis_sq,
          "fused": lambda a, b, c: torch.ops.con2.mahalanobis_sq(a, b, c, True)}[impl]

    def run():
        out = fn(x, mean, w)
        _sync(device)
        return out

    want = ((x[:4096].double() - mean.double()) @ w.double()).pow(2).sum(1)
    rtol = 1e-4 if precision == "highest" else 1e-2  # TF32 keeps 10 mantissa bits
    torch.testing.assert_close(run()[:4096].double(), want, rtol=rtol, atol=1e-3)
    _time(benchmark, run, device, f"mahalanobis {device} Q={q} D={d} {precision}", device=device, Q=q, D=d,
          impl=impl, precision=precision)
