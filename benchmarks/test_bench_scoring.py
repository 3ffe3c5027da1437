"""S_NND vs S_LH cost as the bank grows and as the number of query batches grows (paper Fig. 10).

Representations are random (d = 512): the encoder costs the same for both scorers and is left out.
Both scorers go through `con2.ops` (the native kernel when built, else the PyTorch reference;
the backend is recorded in extra_info). Every case checks what it times before timing it, against
an independent computation: S_NND against a float64 brute-force cosine search, the S_LH fit
against scikit-learn's Ledoit-Wolf estimate (plus the scorer's documented ridge), S_LH scores
against the Gaussian log-density of that covariance.

    pytest benchmarks/test_bench_scoring.py --benchmark-json=scoring.json
    CON2_BENCH_FULL=1 ...   adds 1000 query batches (the paper's right panel goes to 1000)

Left panel: n = 1e2 .. 1e5, 10 batches of 32 queries; fit (NND: row norms; LH: Ledoit-Wolf +
Cholesky + whitening) and score timed separately. Right panel: n = 1e4, 1 .. 100 batches of 128.
"""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def bank_of(n: int) -> torch.Tensor:
    """Built when a selected case first needs it (a -k subset does not build the 1e5 x 512 bank)."""
    return _bank(n)


@functools.lru_cache(maxsize=None)
def _expected_gaussian(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) the S_LH fit must give for bank n: scikit-learn's Ledoit-Wolf estimate of
    the unit rows plus the ridge of con2.scoring.Gaussian.from_moments (1e-6 * tr / d)."""
    from sklearn.covariance import ledoit_wolf

    z = unit_rows(bank_of(n)).double().numpy()  # the unit rows the scorer fits (float32)
    cov, _ = ledoit_wolf(z)
    cov = torch.from_numpy(cov)
    cov.diagonal().add_(max(1e-6 * float(torch.trace(cov)) / D, 1e-12))
    return torch.from_numpy(z.mean(0)), cov


def _check_fit(scorer: str, n: int, fitted) -> None:
    if scorer == "nnd":
        torch.testing.assert_close(fitted.double(), bank_of(n).double().norm(dim=1), rtol=1e-6, atol=0)
        return
    mean, cov = _expected_gaussian(n)
    torch.testing.assert_close(fitted.mean, mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.linalg.inv(fitted.whitening @ fitted.whitening.T), cov, rtol=1e-6, atol=1e-9)


def _check_scores(scorer: str, n: int, fitted, queries) -> None:
    """The first 4 queries of the first batch, scored as the benchmark scores them."""
    q = queries[0][:4]
    if scorer == "nnd":
        got = nnd_score([q], bank_of(n), fitted)[0].double()
        want = -(unit_rows(q.double()) @ unit_rows(bank_of(n).double()).T).max(1).values
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        return
    mean, cov = _expected_gaussian(n)
    x = unit_rows(q).double() - mean
    want = 0.5 * ((x @ torch.linalg.solve(cov, x.T)).diagonal() + torch.linalg.slogdet(cov)[1] + D * np.log(2 * np.pi))
    torch.testing.assert_close(lh_score([q], fitted)[0], want, rtol=1e-6, atol=1e-6)


def _fitted(scorer: str, n: int):
    fitted = (nnd_fit if scorer == "nnd" else lh_fit)(bank_of(n))
    _check_fit(scorer, n, fitted)
    return fitted


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_fit_vs_n(benchmark, scorer, n):
    benchmark.group = "fit vs n (d=512)"
    benchmark.extra_info.update(scorer=scorer, n=n, backend=_backend())
    _fitted(scorer, n)  # checked once before timing
    fit = nnd_fit if scorer == "nnd" else lh_fit
    benchmark.pedantic(fit, args=(bank_of(n),), rounds=_rounds(n), iterations=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_score_vs_n(benchmark, scorer, n):
    """10 batches of 32 queries against a bank of n (the paper's left panel)."""
    benchmark.group = "score 10x32 queries vs n (d=512)"
    benchmark.extra_info.update(scorer=scorer, n=n, backend=_backend())
    _time_scores(benchmark, scorer, n, _queries(10, 32), _rounds(n))


def _time_scores(benchmark, scorer: str, n: int, queries, rounds: int) -> None:
    fitted = _fitted(scorer, n)
    _check_scores(scorer, n, fitted, queries)
    if scorer == "nnd":
        benchmark.pedantic(nnd_score, args=(queries, bank_of(n), fitted), rounds=rounds, iterations=1)
    else:
        benchmark.pedantic(lh_score, args=(queries, fitted), rounds=rounds, iterations=1)


@pytest.mark.parametrize("batches", BATCHES)
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_score_vs_batches(benchmark, scorer, batches):
    """1..100 batches of 128 queries against n = 10^4 (the paper's right panel)."""
    benchmark.group = "score vs query batches of 128 (n=1e4, d=512)"
    benchmark.extra_info.update(scorer=scorer, batches=batches, backend=_backend())
    _time_scores(benchmark, scorer, 10_000, _queries(batches, 128), 1 if batches >= 100 else 3)
