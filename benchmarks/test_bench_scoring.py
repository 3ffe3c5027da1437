"""S_NND vs S_LH cost as the bank grows and as the number of query batches grows (paper Fig. 10).

Representations are random (d = 512): the encoder costs the same for both scorers and is left out.
Both scorers go through `con2.ops` (the native kernel when built, else the PyTorch reference;
the backend is recorded in extra_info). Each case is checked against a direct computation first.

    pytest benchmarks/test_bench_scoring.py --benchmark-json=scoring.json
    CON2_BENCH_FULL=1 ...   adds 1000 query batches (the paper's right panel goes to 1000)

Left panel: n = 1e2 .. 1e5, 10 batches of 32 queries; fit (NND: row norms; LH: Ledoit-Wolf +
Cholesky + whitening) and score timed separately. Right panel: n = 1e4, 1 .. 100 batches of 128.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from con2 import ops
from con2.ops.reference import row_norms
from con2.scoring import Gaussian, unit_rows

D = 512
FULL = os.environ.get("CON2_BENCH_FULL", "0") == "1"
SIZES = [100, 1_000, 10_000, 100_000]
BATCHES = [1, 10, 100] + ([1000] if FULL else [])


def _bank(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, D, generator=g).relu_() + 0.01  # ReLU-like features, never all zero


def _queries(batches: int, size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(size, D, generator=g).relu_() + 0.01 for _ in range(batches)]


def nnd_fit(bank):
    return row_norms(bank, "bank")


def nnd_score(queries, bank, norms):
    return [-ops.top1_cosine(q, bank, bank_norms=norms)[0] for q in queries]


def lh_fit(bank):
    return Gaussian.fit(unit_rows(bank))


def lh_score(queries, gauss):
    return [gauss.nll(unit_rows(q)) for q in queries]


def _rounds(n: int) -> int:
    return 1 if n >= 100_000 else 3


def _backend():
    return "native" if ops.native_available("cpu") else "reference"


@pytest.fixture(scope="module")
def banks():
    return {n: _bank(n) for n in SIZES}


def _check(bank, queries):
    q = queries[0][:4]
    s = nnd_score([q], bank, nnd_fit(bank))[0]
    qn, bn = unit_rows(q.double()), unit_rows(bank.double())
    torch.testing.assert_close(s.double(), -(qn @ bn.T).max(1).values, atol=1e-5, rtol=0)
    gauss = lh_fit(bank)
    x = unit_rows(q.double()) - gauss.mean
    cov = torch.linalg.inv(gauss.whitening @ gauss.whitening.T)  # oracle only
    want = 0.5 * (x @ torch.linalg.solve(cov, x.T)).diagonal() + 0.5 * (gauss.logdet + D * np.log(2 * np.pi))
    torch.testing.assert_close(lh_score([q], gauss)[0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_fit_vs_n(benchmark, banks, scorer, n):
    benchmark.group = "fit vs n (d=512)"
    benchmark.extra_info.update(scorer=scorer, n=n, backend=_backend())
    fit = nnd_fit if scorer == "nnd" else lh_fit
    benchmark.pedantic(fit, args=(banks[n],), rounds=_rounds(n), iterations=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_score_vs_n(benchmark, banks, scorer, n):
    """10 batches of 32 queries against a bank of n (the paper's left panel)."""
    benchmark.group = "score 10x32 queries vs n (d=512)"
    benchmark.extra_info.update(scorer=scorer, n=n, backend=_backend())
    bank, queries = banks[n], _queries(10, 32)
    if n == SIZES[0]:
        _check(bank, queries)
    if scorer == "nnd":
        norms = nnd_fit(bank)
        benchmark.pedantic(nnd_score, args=(queries, bank, norms), rounds=_rounds(n), iterations=1)
    else:
        gauss = lh_fit(bank)
        benchmark.pedantic(lh_score, args=(queries, gauss), rounds=_rounds(n), iterations=1)


@pytest.mark.parametrize("batches", BATCHES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_score_vs_batches(benchmark, banks, scorer, batches):
    """1..100 batches of 128 queries against n = 10^4 (the paper's right panel)."""
    benchmark.group = "score vs query batches of 128 (n=1e4, d=512)"
    benchmark.extra_info.update(scorer=scorer, batches=batches, backend=_backend())
    bank, queries = banks[10_000], _queries(batches, 128)
    rounds = 1 if batches >= 100 else 3
    if scorer == "nnd":
        norms = nnd_fit(bank)
        benchmark.pedantic(nnd_score, args=(queries, bank, norms), rounds=rounds, iterations=1)
    else:
        gauss = lh_fit(bank)
        benchmark.pedantic(lh_score, args=(queries, gauss), rounds=rounds, iterations=1)
