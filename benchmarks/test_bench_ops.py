"""Benchmarks of the native ops against their PyTorch baselines (pytest-benchmark).

Every case checks correctness against the reference before it is timed, and the
PyTorch baseline is timed in the same run (same group). Default sizes suit a small
CPU; CON2_BENCH_FULL=1 adds the large cases (loss M=8192, top1 N=1e6, mahalanobis
Q=1e6). GPU cases are marked `gpu` and skipped without CUDA. The peak-memory cases check the
measured call's output against the reference too, then assert the memory bound the kernels claim
(computed from the sizes and the kernels' scratch budgets), then time that call.

    pytest benchmarks/ --benchmark-json=bench.json              # CPU defaults
    CON2_BENCH_FULL=1 pytest benchmarks/ -m gpu --benchmark-json=gpu.json
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time

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


# Scratch budgets of the native kernels, from their sources: the loss's similarity row block
# (kBlockBytes in csrc/cpu/supcon_loss.cpp and csrc/cuda/supcon_loss.cu) and top1's product block
# (csrc/cpu/top1_cosine.cpp: 16 MB; kScratchBytes in csrc/cuda/top1_cosine.cu).
LOSS_SCRATCH = {"cpu": 32 << 20, "cuda": 64 << 20}
TOP1_SCRATCH = {"cpu": 16 << 20, "cuda": 64 << 20}
# What a peak measurement sees beyond the op's own tensors: CPU, resident-set noise of a fresh
# process (thread stacks, allocator arenas); CUDA, the caching allocator's rounding.
PEAK_SLACK = {"cpu": 16 << 20, "cuda": 8 << 20}


def _time_measured(benchmark, run, on, seconds, group, **info):
    """Time `run`, the call whose peak memory was measured (`seconds`: that call's wall time, which
    sizes the rounds: a CPU top1 at N = 1e6 takes ~40 s, so it gets one)."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    if on == "cuda":
        benchmark.pedantic(run, rounds=30, warmup_rounds=1)
    else:
        benchmark.pedantic(run, rounds=max(1, min(5, int(4 / max(seconds, 1e-3)))), warmup_rounds=int(seconds < 1))


def _loss_inputs(m: int, d: int):
    g = torch.Generator().manual_seed(m)
    return F.normalize(torch.randn(m, d, generator=g), dim=1), torch.randint(0, 4, (m,), generator=g)


def _loss_fn(impl: str):
    return native.supcon_loss if impl == "native" else reference.supcon_loss


_loss_peaks: dict = {}


def _loss_peak(device: str, impl: str, m: int, d: int) -> dict:
    """One forward + backward of `impl` on _loss_inputs(m, d): peak extra bytes, wall seconds, and
    the loss and gradient that call computed (on the CPU). CPU: resident-set growth in a fresh
    process (torch allocations are invisible to tracemalloc); CUDA: the allocator's peak. Cached per
    session: the native case compares itself with the eager measurement."""
    key = (device, impl, m, d)
    if key in _loss_peaks:
        return _loss_peaks[key]
    z, labels = _loss_inputs(m, d)
    if device == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            inp, out = os.path.join(tmp, "in.pt"), os.path.join(tmp, "out.pt")
            torch.save((z, labels), inp)
            code = _RSS_SAMPLER + f"""
import json, time, torch
from con2.ops import native, reference
z, labels = torch.load({inp!r})
z.requires_grad_(True)
fn = native.supcon_loss if {impl!r} == "native" else reference.supcon_loss
small = z[:64].detach().clone().requires_grad_(True)
fn(small, labels[:64], {TEMPERATURE!r}).backward()   # warm up allocator / thread pools
with Peak() as p:
    t0 = time.perf_counter()
    loss = fn(z, labels, {TEMPERATURE!r})
    loss.backward()
    seconds = time.perf_counter() - t0
torch.save((loss.detach(), z.grad), {out!r})
print(json.dumps([p.peak - p.base, seconds]))
"""
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-4000:]
            extra, seconds = json.loads(res.stdout.strip().splitlines()[-1])
            loss, grad = torch.load(out)
    else:
        fn = _loss_fn(impl)
        x, labels = z.to(device).requires_grad_(True), labels.to(device)
        small = x[:64].detach().clone().requires_grad_(True)
        fn(small, labels[:64], TEMPERATURE).backward()  # warm-up: cuBLAS handle and workspace outside the peak
        got = {}

        def run():
            t0 = time.perf_counter()
            got["loss"] = fn(x, labels, TEMPERATURE)
            got["loss"].backward()
            _sync(device)
            got["seconds"] = time.perf_counter() - t0

        extra = _cuda_peak_extra_bytes(run)
        loss, grad, seconds = got["loss"].detach().cpu(), x.grad.cpu(), got["seconds"]
        del got, x, small
    _loss_peaks[key] = dict(extra=int(extra), seconds=float(seconds), loss=loss, grad=grad)
    return _loss_peaks[key]


@functools.lru_cache(maxsize=1)
def _loss_reference(device: str, m: int, d: int):
    """The reference's loss and gradient on _loss_inputs(m, d), computed on `device`, returned on the CPU."""
    z, labels = _loss_inputs(m, d)
    x = z.to(device).requires_grad_(True)
    loss = reference.supcon_loss(x, labels.to(device), TEMPERATURE)
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu()


@pytest.mark.parametrize("impl", ["native", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_loss_peak_memory(benchmark, device, impl):
    """Peak extra memory of one loss forward + backward (CPU: resident-set growth in a fresh process;
    CUDA: the allocator's peak). The measured call's loss and gradient are checked against the
    reference first; then native must stay within O(M·D) plus its bounded similarity block, below
    the eager reference, which materialises M x M matrices (checked in the eager case: the
    measurement must see them). The call is then timed in this process."""
    m = 8192 if (FULL or device == "cuda") else 4096
    d = 128
    got = _loss_peak(device, impl, m, d)
    l_ref, g_ref = _loss_reference(device, m, d)
    torch.testing.assert_close(got["loss"], l_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["grad"], g_ref, rtol=1e-3, atol=1e-6)

    extra, mib = got["extra"], 2**20
    if impl == "native":
        # the gradient saved by the forward, the leaf's .grad and at most a compute-dtype copy of z
        # and a GEMM output, each M x D floats (8 leaves 2x headroom), plus one similarity row block
        limit = 8 * m * d * 4 + LOSS_SCRATCH[device] + PEAK_SLACK[device]
        print(f"\n[peak memory] {device} native M={m} D={d}: {extra / mib:.1f} MiB (bound {limit / mib:.1f} MiB)")
        assert extra < limit, f"native loss peak {extra / mib:.1f} MiB >= O(M·D) bound {limit / mib:.1f} MiB"
        eager = _loss_peak(device, "eager", m, d)["extra"]
        assert extra < eager, f"native {extra / mib:.1f} MiB >= eager {eager / mib:.1f} MiB"
        limits = dict(bound_mib=round(limit / mib, 1))
    else:
        # the reference materialises the M x M similarity (several times): the measurement must see
        # at least one such matrix, or the native case's comparison with it would mean nothing
        floor = m * m * 4
        print(f"\n[peak memory] {device} eager M={m} D={d}: {extra / mib:.1f} MiB "
              f"(one M x M float matrix: {floor / mib:.1f} MiB)")
        assert extra >= floor, f"eager peak {extra / mib:.1f} MiB < one M x M matrix: the measurement misses them"
        limits = dict(floor_mib=round(floor / mib, 1))

    fn = _loss_fn(impl)
    z, labels = (t.to(device) for t in _loss_inputs(m, d))

    def run():
        x = z.detach().requires_grad_(True)
        fn(x, labels, TEMPERATURE).backward()
        _sync(device)

    _time_measured(benchmark, run, device, got["seconds"], f"loss peak memory {device} M={m} D={d}",
                   device=device, M=m, D=d, impl=impl, peak_extra_mib=round(extra / mib, 1), **limits)


# ------------------------------------------------------------------------- top1
TOP1_N = [1_000, 10_000, 100_000, pytest.param(1_000_000, marks=full_only)]


def _assert_top1_matches(vals, idx, v_ref, i_ref):
    """Equal to the reference except at float32 near-ties (|dv| <= 2e-6), which a different summation
    order may flip."""
    same = idx.to(i_ref.device) == i_ref
    assert bool((same | ((vals.float().to(v_ref.device) - v_ref).abs() <= 2e-6)).all())
    assert same.float().mean() >= 0.999
    torch.testing.assert_close(vals.float().to(v_ref.device), v_ref, rtol=1e-4, atol=1e-5)


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
        torch.testing.assert_close(vals.float().to(v_ref.device), v_ref, rtol=1e-4, atol=1e-5)
    else:
        _assert_top1_matches(vals, idx, v_ref, i_ref)
    _time(benchmark, run, device, f"top1 {device} N={n} Q={q} D={d}", device=device, N=n, Q=q, D=d, impl=impl)


def _top1_inputs(n: int, q: int, d: int, device: str = "cpu"):
    """(queries, bank, bank norms); the CPU case's subprocess makes the same ones (_TOP1_INPUTS)."""
    g = torch.Generator(device).manual_seed(n + q)
    bank = torch.randn(n, d, generator=g, device=device)
    queries = torch.randn(q, d, generator=g, device=device)
    return queries, bank, bank.norm(dim=1)


_TOP1_INPUTS = """
g = torch.Generator("cpu").manual_seed({n} + {q})
bank = torch.randn({n}, {d}, generator=g, device="cpu")
queries = torch.randn({q}, {d}, generator=g, device="cpu")
norms = bank.norm(dim=1)
"""


@pytest.mark.parametrize("device", DEVICES)
def test_top1_peak_memory(benchmark, device):
    """Peak extra memory of native top1 at N=1e6, Q=1024 (CPU: RSS growth in a fresh process; CUDA:
    the allocator's peak). The measured call's result is checked against the reference first; then
    its extra memory must be O(Q·D + N) plus the kernel's bounded scratch, far below the Q x N
    float32 similarity (4 GB) that torch.mm + max materialises. The call is then timed here."""
    if device == "cpu" and not FULL:
        pytest.skip("set CON2_BENCH_FULL=1")
    n, q, d = 1_000_000, 1024, 512
    if device == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.pt")
            code = _RSS_SAMPLER + "import json, time, torch\nfrom con2.ops import native\n" + \
                _TOP1_INPUTS.format(n=n, q=q, d=d) + f"""
native.top1_cosine(queries[:8], bank[:5000], norms[:5000])
with Peak() as p:
    t0 = time.perf_counter()
    vals, idx = native.top1_cosine(queries, bank, norms)
    seconds = time.perf_counter() - t0
torch.save((vals, idx, queries[:4], bank[-4:]), {out!r})
print(json.dumps([p.peak - p.base, seconds]))
"""
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-4000:]
            extra, seconds = json.loads(res.stdout.strip().splitlines()[-1])
            vals, idx, q_head, b_tail = torch.load(out)
        queries, bank, norms = _top1_inputs(n, q, d)
        assert torch.equal(q_head, queries[:4]) and torch.equal(b_tail, bank[-4:])  # the same inputs
    else:
        queries, bank, norms = _top1_inputs(n, q, d, device)
        native.top1_cosine(queries[:8], bank[:5000], norms[:5000])  # warm-up outside the peak
        got = {}

        def measured():
            t0 = time.perf_counter()
            got["out"] = native.top1_cosine(queries, bank, norms)
            _sync(device)
            got["seconds"] = time.perf_counter() - t0

        extra = _cuda_peak_extra_bytes(measured)
        (vals, idx), seconds = got.pop("out"), got["seconds"]

    # correctness first: the measured call against the reference (chunked: no Q x N matrix either)
    v_ref, i_ref = reference.top1_cosine(queries, bank, bank_norms=norms)
    _assert_top1_matches(vals, idx, v_ref, i_ref)

    # the unit queries and one lower-precision copy (2·Q·D·4), the inverse bank norms (N·4, doubled
    # for headroom), the product block and one bank block cast for it (each <= the scratch budget)
    mib = 2**20
    bound = 2 * q * d * 4 + 2 * n * 4 + 2 * TOP1_SCRATCH[device] + PEAK_SLACK[device]
    full = q * n * 4  # the Q x N float32 similarity
    print(f"\n[peak memory] top1 {device} N={n} Q={q}: {extra / mib:.1f} MiB "
          f"(bound {bound / mib:.1f} MiB; Q x N float32: {full / mib:.0f} MiB)")
    assert extra < bound, f"top1 peak {extra / mib:.1f} MiB >= O(Q·D + N) bound {bound / mib:.1f} MiB"
    assert extra < full / 16, f"top1 peak {extra / mib:.1f} MiB is not far below the Q x N matrix"

    def run():
        out = native.top1_cosine(queries, bank, norms)
        _sync(device)
        return out

    _time_measured(benchmark, run, device, seconds, f"top1 peak memory {device} N={n} Q={q} D={d}",
                   device=device, N=n, Q=q, D=d, peak_extra_mib=round(extra / mib, 1), bound_mib=round(bound / mib, 1))


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
