"""Anomaly scores from representations g(x) under test-time views (METHOD section 7).

    S(x) = agg_i s(x_i; t_i),   x_i = x for i <= A/2,   x_i = t_C(x) for i > A/2

Each view i draws its random SimCLR augmentation t_i per sample, from a counter-based hash of
(seed, i, role, the sample's pixels), so the train bank of view i and the queries of view i see
the same *kind* of view (same context, same augmentation distribution), and a sample's draws
depend on its pixels only: an image gets the same score alone, in a batch, or anywhere in a
test set, whatever the batch size (with one random stream per call, its score would change with
its position in the call, and `predict` could flip with the company an image is scored in).

View counts (decided here, the paper only uses A = 40):
- ``views=0``: one deterministic view, the original image resized and normalised, no
  augmentation and no context transform. Quick checks and the demo.
- ``views=A`` with A even and >= 2: A/2 augmented views of the original and A/2 of the
  context-transformed image t_C(x) (for K > 2 contexts, context 1 = the first base transform).
  Odd A (A = 1 included) is rejected: it cannot be split in halves, and "original only" is
  what ``views=0`` is for.
- Runs without contexts (``--objective simclr``, the SimCLR / SSD baselines) use the
  original image for all A views: those encoders never saw t_C.

Scorers, per view, on the encoder output g (not the heads):
- ``nnd``: -max_j cos(g(t(x)), g(t(x'_j))) over the train bank (``con2.ops.top1_cosine``).
- ``lh``: Gaussian negative log-likelihood of g/||g||, mean and covariance fitted per view in
  float64 with Ledoit-Wolf shrinkage (the sample covariance is singular whenever n < d),
  evaluated through a Cholesky factor L of the covariance: W = L^{-T} by triangular solve,
  NLL = 0.5 (||(z - mu) W||^2 + log det Sigma + d log 2 pi)  (``con2.ops.mahalanobis_sq``).
NaN / inf representations, all-zero ones and ones whose float32 L2 norm over- or underflows
(cosine and normalisation are undefined) raise ``NonFiniteFeatures`` naming the view and the
sample; they are never scored.
A train bank whose unit rows are nearly one point (a collapsed model, or near-identical train
images) warns with ``CollapsedFeatures``: its scores are mostly rounding noise.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import ops
from .config import AGGREGATES, BANK_DTYPE_NAMES, MAX_VIEWS, SCORERS  # noqa: F401 - re-exported
from .config import is_seed
from .data.contexts import ContextSet
from .data.keys import image_keys, keyed_uniforms, view_stream
from .data.images import ImageSet
from .data.views import N_UNIFORMS, ViewConfig, ViewParams, apply_views, normalize_only, view_params_from_uniforms
from .progress import progress as progress_bar

BANK_DTYPES = {name: getattr(torch, name) for name in BANK_DTYPE_NAMES}
ROLE_BANK, ROLE_QUERY = 0, 1
# Banks above this size get their memory use printed.
LARGE_BANK_BYTES = 256 * 2**20
# Spread 1 - ||mean unit row||^2 (the total variance of the unit rows, 0 when all are equal) below
# which a train bank counts as collapsed. Measured on digits: untrained ResNet18s 0.013-0.018;
# one image under 1e-3 pixel noise 1.5e-6 (width 64) to 4.5e-6 (width 4).
COLLAPSED_SPREAD = 1e-5


class NonFiniteFeatures(ValueError):
    """A representation is NaN, infinite or all-zero: the sample cannot be scored."""


class CollapsedFeatures(UserWarning):
    """The train images all get nearly the same representation: scores carry little information."""


@dataclass(frozen=True)
class View:
    """One test-time view: which context the image is moved to and whether it is augmented."""

    index: int
    context: int  # 0 = original, k = ContextSet.compositions[k]
    augmented: bool


def view_plan(views: int, contexts: ContextSet | None) -> list[View]:
    """The A views of METHOD section 7 (see the module docstring for views=0 and odd A)."""
    if not isinstance(views, (int, np.integer)) or isinstance(views, bool):
        raise TypeError(f"views must be an integer, got {views!r}")
    views = int(views)
    if views == 0:
        return [View(0, 0, False)]
    if views < 0 or views % 2 or views > MAX_VIEWS:
        raise ValueError(
            f"views must be 0 (one deterministic view of the original) or an even number 2..{MAX_VIEWS} "
            f"(half on the original, half on the context-transformed image), got {views}"
        )
    if contexts is None:
        return [View(i, 0, True) for i in range(views)]
    half = views // 2
    return [View(i, 0 if i < half else 1, True) for i in range(views)]


class ViewEncoder:
    """Encodes uint8 image sets under the views of a plan, in chunks, with finiteness checks.

    encode_fn: [B, C, size, size] normalised float -> [B, d] representations (e.g. Con2Model.encode).
    native: None = augmented views by the native simclr_views kernel where con2.ops.native_views says
    so (the same views as the torch ops up to float rounding, several times faster; invert and flip
    contexts applied while reading, without a copy), False = the torch ops.
    """

    def __init__(self, encode_fn: Callable[[torch.Tensor], torch.Tensor], view_cfg: ViewConfig,
                 contexts: ContextSet | None, plan: Sequence[View], seed: int = 0, batch_size: int = 256,
                 device: torch.device | str = "cpu", progress: bool = False, native: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not is_seed(seed):
            raise ValueError(f"the test-time views' seed must be an integer in [0, 2**63), got {seed!r}")
        if any(v.context != 0 for v in plan) and contexts is None:
            raise ValueError("the view plan uses a context transform but no contexts were given")
        self.encode_fn = encode_fn
        self.view_cfg = view_cfg
        self.contexts = contexts
        self.plan = list(plan)
        self.seed = seed
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        self.native = ops.native_views(self.device) if native is None else bool(native)
        # context k as the native kernel makes it: (image block to materialise, code read by the kernel)
        self._kernel_contexts = {}
        if contexts is not None:
            blocks, per_context = contexts.kernel_plan()
            self._kernel_contexts = {k: (blocks[b], code) for k, (b, code) in enumerate(per_context)}

    @classmethod
    def for_model(cls, model, view_cfg, contexts, views: int, **kw) -> "ViewEncoder":
        model.eval()
        device = next(model.parameters()).device
        kw.setdefault("device", device)
        return cls(model.encode, view_cfg, contexts, view_plan(views, contexts), **kw)

    def __len__(self) -> int:
        return len(self.plan)

    def _context(self, view: View, x: torch.Tensor) -> torch.Tensor:
        return x if view.context == 0 else self.contexts.apply(view.context, x)

    def _augmented(self, view: View, raw: torch.Tensor, params) -> torch.Tensor:
        """Normalised float views of uint8 images `raw` in the view's context."""
        if not self.native:
            return apply_views(self._context(view, raw), params, self.view_cfg)
        block, code = self._kernel_contexts.get(view.context, ((), 0))
        x = ContextSet.apply_names(block, raw).contiguous()
        m, cfg = x.shape[0], self.view_cfg
        return ops.simclr_views(x, torch.arange(m, device=x.device), params, cfg.size, cfg.mean, cfg.std,
                                torch.float32, False, context=torch.full((m,), code, device=x.device))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, view: View, role: int, pbar=None,
               keys: torch.Tensor | None = None, first: int = 0) -> torch.Tensor:
        """[N, d] float32 representations of uint8 images [N, C, H, W] under one view.
        keys: image_keys(images), when the caller encodes the same images under several views.
        first: the index of images[0] in the caller's whole set (errors name samples by it)."""
        n, _, h, w = images.shape
        params = None
        if view.augmented:
            keys = image_keys(images) if keys is None else keys
            u = keyed_uniforms(keys.to(self.device), view_stream(self.seed, view.index, role), N_UNIFORMS)
            params = ViewParams(*view_params_from_uniforms(u, h, w, self.view_cfg))
        out = []
        for i in range(0, n, self.batch_size):
            raw = images[i : i + self.batch_size].to(self.device)
            if params is None:
                x = normalize_only(self._context(view, raw), self.view_cfg)
            else:
                x = self._augmented(view, raw, params[i : i + self.batch_size])
            f = self.encode_fn(x).float()
            check_features(f, view, offset=first + i)
            out.append(f)
            if pbar is not None:
                pbar.update(len(x))
        return torch.cat(out)


def check_features(f: torch.Tensor, view: View, offset: int = 0) -> None:
    if f.dim() != 2:
        raise ValueError(f"the encoder returned shape {tuple(f.shape)}, expected [batch, dim]")
    # one test (one host sync) per batch: NaN / inf values, all-zero rows and finite rows whose
    # float32 norm over- or underflows all leave a norm that is not finite and positive
    norms = f.norm(dim=1)
    if bool((torch.isfinite(norms) & (norms > 0)).all()):
        return
    bad = ~torch.isfinite(f).all(dim=1)
    if bad.any():
        j = int(bad.nonzero()[0]) + offset
        raise NonFiniteFeatures(
            f"{int(bad.sum())} representation(s) contain NaN or inf under test-time view {view.index} "
            f"(first: sample {j}); the encoder weights or the input are broken, refusing to score"
        )
    zero = (f == 0).all(dim=1)
    if zero.any():
        j = int(zero.nonzero()[0]) + offset
        raise NonFiniteFeatures(
            f"{int(zero.sum())} representation(s) are all zero under test-time view {view.index} "
            f"(first: sample {j}); cosine similarity and L2 normalisation are undefined for them"
        )
    out = ~torch.isfinite(norms) | (norms == 0)  # finite rows that would normalise to zero or NaN rows
    j = int(out.nonzero()[0])
    what = "overflow" if not bool(torch.isfinite(norms[j])) else "underflow"
    raise NonFiniteFeatures(
        f"{int(out.sum())} representation(s) have an L2 norm that {what}s float32 under test-time view "
        f"{view.index} (first: sample {j + offset}, largest |value| {float(f[j].abs().max()):.1e}); "
        "cosine similarity and L2 normalisation are undefined for them: the encoder weights are broken"
    )


# ----------------------------------------------------------------------------- Gaussian (S_LH)

class GaussianMoments:
    """Running sums of feature rows, from which ledoit_wolf's estimate follows exactly: rows can
    arrive in chunks (a train bank larger than memory) and the result is the same. Sums are float64
    and taken about the first chunk's mean, so they do not cancel when the spread is small."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, z: torch.Tensor) -> "GaussianMoments":
        """Add rows z [m, d] (checked finite, and of the first chunk's width)."""
        ops.reference.check_tensors(features=z)
        if z.dim() != 2 or z.shape[1] == 0:
            raise ValueError(f"the Gaussian scorer needs [n, d] features with d >= 1, got shape {tuple(z.shape)}")
        if not z.is_floating_point():  # complex would lose its imaginary part, ints and bools are no features
            raise TypeError(f"the Gaussian scorer needs floating-point features, got {z.dtype}")
        if self.n and z.shape[1] != self.s1.shape[0]:
            raise ValueError(f"features of dimension {z.shape[1]} after {self.s1.shape[0]}-dimensional ones")
        if not bool(torch.isfinite(z).all()):
            raise NonFiniteFeatures("the Gaussian scorer's train features contain NaN or infinite values")
        z = z.to(torch.float64)
        if z.shape[0] == 0:
            return self
        if self.n == 0:
            self.shift = z.mean(dim=0)
            d = z.shape[1]
            zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=z.device)  # noqa: E731
            self.s1, self.s2, self.q1, self.qy, self.q2 = zeros(d), zeros(d, d), zeros(), zeros(d), zeros()
        y = z - self.shift
        q = (y * y).sum(dim=1)  # squared row norms
        self.n += y.shape[0]
        self.s1 += y.sum(dim=0)
        self.s2 += y.T @ y
        self.q1 += q.sum()
        self.qy += q @ y
        self.q2 += q @ q
        return self

    def ledoit_wolf(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mean [d], shrunk covariance [d, d], shrinkage) of all rows so far, in float64.

        Ledoit & Wolf (2004) closed form, the same estimator as sklearn.covariance.ledoit_wolf
        (1/n sample covariance S shrunk towards mu * I, mu = tr(S) / d). Its fourth-moment term
        sum_i ||x_i - m||^4 (x_i about the mean m) is expanded in the running sums: with y_i = x_i - shift,
        c = mean(y), q_i = ||y_i||^2: sum (q_i - 2 y_i.c + ||c||^2)^2.
        """
        if self.n == 0:
            raise ValueError("the Ledoit-Wolf estimate needs at least one feature row, got none")
        n, d = self.n, self.s1.shape[0]
        c = self.s1 / n
        s = self.s2 / n - torch.outer(c, c)
        cc = c @ c
        fourth = (self.q2 + 4 * (c @ self.s2 @ c) + n * cc**2 - 4 * (self.qy @ c)
                  + 2 * cc * self.q1 - 4 * cc * (self.s1 @ c))
        mu = torch.trace(s) / d
        delta = ((s - mu * torch.eye(d, dtype=s.dtype, device=s.device)) ** 2).sum() / d
        beta = (fourth / n - (s**2).sum()) / (d * n)
        beta = torch.minimum(beta, delta)
        shrinkage = 0.0 if float(delta) == 0.0 else float(beta / delta)
        cov = (1 - shrinkage) * s
        cov.diagonal().add_(shrinkage * mu)
        return self.shift + c, cov, shrinkage


def ledoit_wolf(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean [d], shrunk covariance [d, d], shrinkage) of rows z, in float64 (GaussianMoments.ledoit_wolf)."""
    return GaussianMoments().update(z).ledoit_wolf()


@dataclass
class Gaussian:
    """mean [d] float64, whitening W = L^{-T} [d, d] float64 with Sigma = L L^T, log det Sigma."""

    mean: torch.Tensor
    whitening: torch.Tensor
    logdet: float
    shrinkage: float

    @classmethod
    def fit(cls, z: torch.Tensor, jitter: float = 1e-6) -> "Gaussian":
        """Fit on L2-normalised rows z [n, d], n >= 2 (from_moments of one chunk)."""
        return cls.from_moments(GaussianMoments().update(z), jitter)

    @classmethod
    def from_moments(cls, moments: GaussianMoments, jitter: float = 1e-6) -> "Gaussian":
        """Fit on the rows summed in `moments` (at least 2). A ridge of jitter * tr(Sigma)/d keeps the
        Cholesky factorisation defined for degenerate data (e.g. all rows equal)."""
        if moments.n < 2:
            raise ValueError(f"the Gaussian scorer needs at least 2 train samples, got {moments.n}")
        mean, cov, shrinkage = moments.ledoit_wolf()
        d = cov.shape[0]
        ridge = max(jitter * float(torch.trace(cov)) / d, 1e-12)
        cov.diagonal().add_(ridge)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError("the shrunk covariance is not positive definite; the train representations are degenerate")
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        # L^{-1} by triangular solve, W = L^{-T}: ||(z - mu) W||^2 = (z - mu)^T Sigma^{-1} (z - mu)
        whitening = torch.linalg.solve_triangular(chol, eye, upper=False).T.contiguous()
        logdet = 2.0 * float(torch.log(chol.diagonal()).sum())
        return cls(mean, whitening, logdet, shrinkage)

    def to(self, device) -> "Gaussian":
        return dataclasses.replace(self, mean=self.mean.to(device), whitening=self.whitening.to(device))

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """-log N(z | mean, Sigma) per row (float64), z already L2-normalised."""
        d = self.mean.shape[0]
        ops.reference.check_tensors(features=z)
        if z.dim() != 2 or z.shape[1] != d:  # else the op would blame this Gaussian's mean
            raise ValueError(f"the Gaussian was fitted on {d}-dimensional features; got features of shape "
                             f"{tuple(z.shape)}")
        m = ops.mahalanobis_sq(z, self.mean, self.whitening).to(torch.float64)
        return 0.5 * (m + self.logdet + d * math.log(2 * math.pi))


def unit_rows(f: torch.Tensor) -> torch.Tensor:
    return f / f.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- feature bank

@dataclass
class FeatureBank:
    """The train set under every test-time view: NND banks and / or per-view Gaussians.

    nnd: [A, n, d] representations (float32; float16 as unit rows), nnd_norms: [A, n] float32 row norms.
    gaussians: one Gaussian per view. image_shape: (C, H, W) of the train images; queries must match.
    """

    plan: list[View]
    nnd: torch.Tensor | None = None
    nnd_norms: torch.Tensor | None = None
    gaussians: list[Gaussian] | None = None
    image_shape: tuple[int, int, int] | None = None

    @property
    def scorers(self) -> tuple[str, ...]:
        return tuple(s for s, have in (("nnd", self.nnd is not None), ("lh", self.gaussians is not None)) if have)

    def to(self, device) -> "FeatureBank":
        """The same bank with its tensors on `device`."""
        def move(t):
            return None if t is None else t.to(device)

        return dataclasses.replace(self, nnd=move(self.nnd), nnd_norms=move(self.nnd_norms),
                                   gaussians=None if self.gaussians is None else [g.to(device) for g in self.gaussians])

    @classmethod
    def build(cls, encoder: ViewEncoder, train, scorers: Iterable[str] = SCORERS,
              bank_dtype: str = "float32", log: Callable[[str], None] | None = None,
              chunk_rows: int | None = None) -> "FeatureBank":
        """Encode the train images (any ImageSet input) under every view of the encoder's plan.

        The images are read chunk by chunk (chunk_rows, default about ImageSet's CHUNK_BYTES), each
        chunk once, moved to the device once and encoded under every view; the Gaussians are fitted
        from running moments. The result does not depend on the chunking."""
        scorers = check_scorers(scorers)
        if bank_dtype not in BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {', '.join(BANK_DTYPES)}, got {bank_dtype!r}")
        train = ImageSet(train, name="train images")
        log = log or (lambda msg: print(msg, file=sys.stderr))
        n, a = len(train), len(encoder)
        nnd = norms = None
        moments = [GaussianMoments() for _ in encoder.plan] if "lh" in scorers else None
        unit_sums = [0.0] * a  # per view, the float64 sum of the unit rows (the collapse check)
        with progress_bar(n * a, "encoding train bank", encoder.progress) as pbar:
            for start, x in train.chunks(chunk_rows or train.chunk_rows(encoder.batch_size)):
                keys = image_keys(x)  # on the host: the same keys, whatever the device
                x = x.to(encoder.device)
                for view in encoder.plan:
                    f = encoder.encode(x, view, ROLE_BANK, pbar, keys=keys, first=start)
                    unit_sums[view.index] = unit_sums[view.index] + unit_rows(f.double()).sum(dim=0)
                    if nnd is None and "nnd" in scorers:
                        nbytes = a * n * f.shape[1] * BANK_DTYPES[bank_dtype].itemsize
                        if nbytes >= LARGE_BANK_BYTES:
                            log(f"NND feature bank: {a} views x {n} samples x {f.shape[1]} dims "
                                f"{bank_dtype} = {nbytes / 2**20:.0f} MiB")
                        nnd = torch.empty((a, n, f.shape[1]), dtype=BANK_DTYPES[bank_dtype], device=f.device)
                    if nnd is not None:
                        # float16 keeps unit rows: S_NND is a cosine, and raw features could overflow
                        # 65504 or lose their precision near zero
                        rows = f.to(nnd.dtype) if nnd.dtype == torch.float32 else unit_rows(f).to(nnd.dtype)
                        nnd[view.index, start:start + len(x)] = rows
                    if moments is not None:
                        moments[view.index].update(unit_rows(f))
        warn_if_collapsed(torch.stack(unit_sums).cpu(), n)
        if nnd is not None:
            norms = torch.stack([ops.reference.row_norms(nnd[v.index], "train bank").float() for v in encoder.plan])
        gaussians = None if moments is None else [Gaussian.from_moments(m) for m in moments]
        return cls(list(encoder.plan), nnd, norms, gaussians, tuple(int(v) for v in train.shape[1:]))

    @torch.no_grad()
    def score_views(self, encoder: ViewEncoder, images, scorers: Iterable[str] = SCORERS,
                    chunk_rows: int | None = None) -> dict[str, torch.Tensor]:
        """{scorer: [Q, A] float64 per-view scores} of the query images (any ImageSet input), read
        chunk by chunk as in build."""
        scorers = check_scorers(scorers)
        missing = [s for s in scorers if s not in self.scorers]
        if missing:
            raise ValueError(f"this bank was built without the {', '.join(missing)} scorer; "
                             f"available: {', '.join(self.scorers) or 'none'}")
        if [(v.context, v.augmented) for v in encoder.plan] != [(v.context, v.augmented) for v in self.plan]:
            raise ValueError(f"the encoder's {len(encoder.plan)} test-time views do not match the "
                             f"bank's {len(self.plan)}; rebuild the bank with the same views")
        shape = self.image_shape
        images = ImageSet(images, "query images")
        images.expect(channels=shape and shape[0], size=shape and shape[1:])
        q, a = len(images), len(self.plan)
        out = {s: torch.empty((q, a), dtype=torch.float64) for s in scorers}
        with progress_bar(q * a, "scoring", encoder.progress) as pbar:
            for start, x in images.chunks(chunk_rows or images.chunk_rows(encoder.batch_size)):
                keys = image_keys(x)  # on the host: the same keys, whatever the device
                x = x.to(encoder.device)
                rows = slice(start, start + len(x))
                for view in self.plan:
                    f = encoder.encode(x, view, ROLE_QUERY, pbar, keys=keys, first=start)
                    if "nnd" in out:
                        bank = self.nnd[view.index]
                        sim, _ = ops.top1_cosine(f.to(bank.device), bank, bank_norms=self.nnd_norms[view.index])
                        out["nnd"][rows, view.index] = -sim.double().cpu()
                    if "lh" in out:
                        gs = self.gaussians[view.index]
                        out["lh"][rows, view.index] = gs.nll(unit_rows(f).to(gs.mean.device)).cpu()
        for s, v in out.items():
            if not torch.isfinite(v).all():
                raise NonFiniteFeatures(f"the {s} scorer produced non-finite scores; refusing to return them")
        return out


def warn_if_collapsed(unit_sums: torch.Tensor, n: int) -> None:
    """Warn (CollapsedFeatures) when n train rows whose unit vectors sum to unit_sums [A, d] lie
    nearly on one point in some view: their spread 1 - ||mean||^2 is below COLLAPSED_SPREAD."""
    if n < 2 or unit_sums.numel() == 0:
        return
    spread = (1.0 - ((unit_sums / n) ** 2).sum(dim=1)).clamp(min=0.0)
    low = int(spread.argmin())
    if float(spread[low]) < COLLAPSED_SPREAD:
        warnings.warn(CollapsedFeatures(
            f"the {n} train images have nearly the same representation under test-time view {low} "
            f"(spread {float(spread[low]):.1e}, collapsed below {COLLAPSED_SPREAD:.0e}): the model has collapsed "
            "or the train images are near-identical, so the scores are mostly rounding noise"), stacklevel=3)


def check_scorers(scorers: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(scorers, str):
        scorers = (scorers,)
    scorers = tuple(scorers)
    if not scorers:
        raise ValueError(f"no scorer given; choose from {', '.join(SCORERS)}")
    bad = [s for s in scorers if s not in SCORERS]
    if bad:
        raise ValueError(f"unknown scorer {bad[0]!r}; choose from {', '.join(SCORERS)}")
    return scorers


def check_aggregate(how: str) -> str:
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}")
    return how


def aggregate(per_view: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """[Q, A] per-view scores -> [Q] (mean: the paper's S(x); max: the most anomalous view)."""
    if not isinstance(per_view, torch.Tensor):
        raise TypeError(f"per-view scores must be a torch tensor [samples, views], got {type(per_view).__name__} "
                        "(torch.from_numpy converts an array)")
    if per_view.dim() != 2 or per_view.shape[1] == 0:
        raise ValueError(f"per-view scores must be [samples, views] with at least one view, got {tuple(per_view.shape)}")
    if not per_view.is_floating_point():
        raise TypeError(f"per-view scores must be floating point, got {per_view.dtype}")
    if check_aggregate(how) == "mean":
        return per_view.mean(dim=1)
    return per_view.max(dim=1).values


class Scorer:
    """A model + views + bank: the one object that turns images into anomaly scores.

    >>> s = Scorer(model, view_cfg, contexts, train_u8, views=40, scorers=("nnd", "lh"))
    >>> s.score(test_u8)["nnd"]   # [Q] float64, higher = more anomalous
    """

    def __init__(self, model, view_cfg: ViewConfig, contexts: ContextSet | None, train, views: int = 40,
                 scorers: Iterable[str] = SCORERS, aggregate: str = "mean", seed: int = 0,
                 batch_size: int = 256, bank_dtype: str = "float32", progress: bool = False):
        self.model = model
        self.aggregate = check_aggregate(aggregate)
        self.encoder = ViewEncoder.for_model(model, view_cfg, contexts, views, seed=seed,
                                             batch_size=batch_size, progress=progress)
        self.channels = model.in_channels
        train = ImageSet(train, "train images").expect(channels=self.channels)
        self.input_size = tuple(train.shape[2:])
        self.bank = FeatureBank.build(self.encoder, train, scorers, bank_dtype)

    def score_views(self, images, scorers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        images = ImageSet(images, "query images").expect(channels=self.channels, size=self.input_size)
        return self.bank.score_views(self.encoder, images, self.bank.scorers if scorers is None else scorers)

    def score(self, images, scorers: Iterable[str] | None = None, per_view: bool = False):
        """{scorer: [Q] aggregated scores}; with per_view, also {scorer + '_views': [Q, A]}."""
        views = self.score_views(images, scorers)
        out = {s: aggregate(v, self.aggregate) for s, v in views.items()}
        if per_view:
            out.update({f"{s}_views": v for s, v in views.items()})
        return out
