"""Interleaved CPU timings of the native ops vs their baselines, printed as Markdown tables.

Implementations alternate every round and the minimum over rounds is reported, so slow
drift in machine load (shared VMs) affects all of them alike. Correctness is checked
before timing. CON2_BENCH_FULL=1 adds loss M=8192 and top1 N=1e6.

    .venv/bin/python benchmarks/interleaved_cpu.py
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from con2.ops import native, reference

try:
    import faiss
except Exception:
    faiss = None

FULL = os.environ.get("CON2_BENCH_FULL", "0") == "1"


def interleaved(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: v * 1e3 for k, v in best.items()}


def loss_table():
    rows = ["| M (D = 128) | native fwd+bwd | eager reference | torch.compile(reference) | vs eager | vs compile |",
            "|---|---|---|---|---|---|"]
    compiled = torch.compile(reference.supcon_loss, dynamic=False)
    for m in (256, 2048) + ((8192,) if FULL else ()):
        g = torch.Generator().manual_seed(m)
        z = F.normalize(torch.randn(m, 128, generator=g), dim=1)
        labels = torch.randint(0, 4, (m,), generator=g)

        def make(fn):
            def run():
                x = z.detach().requires_grad_(True)
                loss = fn(x, labels, 0.07)
                loss.backward()
                return loss, x.grad
            return run

        fns = {"native": make(native.supcon_loss), "eager": make(reference.supcon_loss), "compiled": make(compiled)}
        ln, gn = fns["native"]()
        lr, gr = fns["eager"]()
        torch.testing.assert_close(ln, lr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gn, gr, rtol=1e-3, atol=1e-6)
        t = interleaved(fns, 30 if m <= 256 else (8 if m <= 2048 else 3))
        rows.append(f"| {m} | {t['native']:.1f} ms | {t['eager']:.1f} ms | {t['compiled']:.1f} ms | "
                    f"{t['eager'] / t['native']:.2f}x | {t['compiled'] / t['native']:.2f}x |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def top1_table():
    rows = ["| N | Q (D = 512) | native | torch.mm + max | faiss IndexFlatIP | native / mm+max | faiss / native |",
            "|---|---|---|---|---|---|---|"]
    d = 512
    for n in (1_000, 10_000, 100_000) + ((1_000_000,) if FULL else ()):
        g = torch.Generator().manual_seed(n)
        bank = torch.randn(n, d, generator=g)
        norms = bank.norm(dim=1)
        inv = norms.reciprocal()
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            index.add(F.normalize(bank, dim=1).numpy())
        for q in (128, 1024):
            queries = torch.randn(q, d, generator=g)
            fns = {
                "native": lambda: native.top1_cosine(queries, bank, norms),
                "mm_max": lambda: torch.mm(queries / queries.norm(dim=1, keepdim=True), bank.T).mul_(inv).max(dim=1),
            }
            if index is not None:
                fns["faiss"] = lambda: index.search(F.normalize(queries, dim=1).numpy(), 1)
            v, i = fns["native"]()
            v_ref, i_ref = reference.top1_cosine(queries, bank, bank_norms=norms)
            assert torch.equal(i, i_ref) and torch.allclose(v, v_ref, rtol=1e-5, atol=1e-6)
            t = interleaved(fns, 3 if n * q >= 10**8 else 10)
            fa = f"{t['faiss']:.1f} ms" if "faiss" in t else "-"
            ratio = f"{t['faiss'] / t['native']:.2f}x" if "faiss" in t else "-"
            rows.append(f"| {n:,} | {q} | {t['native']:.1f} ms | {t['mm_max']:.1f} ms | {fa} | "
                        f"{t['native'] / t['mm_max']:.2f} | {ratio} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def maha_table():
    rows = ["| Q (D = K = 512) | native | reference | speed-up |", "|---|---|---|---|"]
    for q in (10_000, 100_000):
        g = torch.Generator().manual_seed(q)
        x = torch.randn(q, 512, generator=g)
        mean = torch.randn(512, generator=g)
        w = torch.randn(512, 512, generator=g) / 23
        torch.testing.assert_close(native.mahalanobis_sq(x, mean, w), reference.mahalanobis_sq(x, mean, w), rtol=1e-4, atol=1e-3)
        t = interleaved({"native": lambda: native.mahalanobis_sq(x, mean, w),
                         "reference": lambda: reference.mahalanobis_sq(x, mean, w)}, 5)
        rows.append(f"| {q:,} | {t['native']:.1f} ms | {t['reference']:.1f} ms | {t['reference'] / t['native']:.2f}x |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    tables = [loss_table(), top1_table(), maha_table()]
    print()
    print("\n\n".join(tables))
