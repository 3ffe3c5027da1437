"""`Con2Detector`: a PyOD / scikit-learn style front end (fit / decision_function / predict).

Image inputs (uint8, 0..255; anything else is an error):
- numpy arrays are channels-last, as PIL / OpenCV / con2's OneClassSplit: [N, H, W] (grayscale)
  or [N, H, W, C] with C in {1, 3};
- torch tensors are channels-first, as torchvision: [N, H, W] (grayscale) or [N, C, H, W];
- `fit` also takes a `con2.data.OneClassSplit` (its train images; its val normals, if any,
  calibrate the threshold).
With `image_size=S` every image, fitted or scored and of any size, is first resized to S x S (the
antialiased bilinear resize of `con2 train --image-size S`); without it the images must be square
and scored images must have the fitted size. A detector made from a trained run
(`Con2Detector.from_run`, `con2 export`) keeps the run's pre-processing (`input_format_`: resize,
centre crop) and applies it to every scored image, of any size: give it raw images, as
`con2 predict` reads them from files.

`fit(X)` holds out a seeded `calibration_fraction` of the normals (unless the split has val
normals), trains the encoder on the rest with `con2.train.train`, encodes the train bank under
the test-time views and sets `threshold_` so that `target_fpr` of the held-out normals score
above it (`con2.metrics.calibrate_threshold`). `decision_scores_` and `labels_` are those held-out
images' scores and labels (so shorter than X, unlike PyOD, whose are the training images': scores
of the training images themselves are meaningless for S_NND, each finds itself).

`save(path)` writes ONE safetensors file (`con2.bundle`): encoder weights, the NND bank and / or
the Gaussian statistics, the calibration scores (aggregated and per view); the options, the state
(threshold, input shape, views, input format, source run) and the con2 version as JSON in its
header, with a SHA-256 over all of it. `Con2Detector.load(path)` never unpickles; a bundle from
another con2 version, of another format, or whose contents do not match the digest fails with
`BundleError`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from .bundle import BundleError, bundle_path, read_bundle, write_bundle
from .config import MIN_IMAGE_SIDE, TrainConfig, is_int, is_number, is_seed
from .data import ContextSet, OneClassSplit, ViewConfig
from .data.datasets import resize_images
from .data.input_format import InputFormat
from .data.split import to_nchw
from .evaluate import check_crop_pixels, check_crop_scale, check_view_options, scoring_view_config
from .metrics import calibrate_threshold
from .model import Con2Model
from .ops.reference import row_norms
from .scoring import (AGGREGATES, BANK_DTYPES, SCORERS, FeatureBank, Gaussian, Scorer, View, ViewEncoder,
                      aggregate)

# Options the fitted state depends on (the encoder's training, the held-out split, the bank's views,
# scorer and dtype): with one changed since fit, scoring and save fail until the next fit.
REFIT_PARAMS = ("context", "objective", "epochs", "batch_size", "image_size", "scorer", "views", "seed", "amp",
                "lr", "weight_decay", "temperature", "width", "calibration_fraction", "bank_dtype", "crop_scale")
# Options applied to a fitted detector: aggregate / target_fpr / contamination recalibrate the
# threshold from the stored per-view calibration scores (exactly what fit would give), device moves
# the model and bank there, the others do not change any score.
LIVE_PARAMS = ("aggregate", "target_fpr", "contamination", "device", "score_batch_size", "out", "progress")



class NotFittedError(SklearnNotFittedError):
    """Raised before fit / load; scikit-learn's NotFittedError, so its `except` clauses catch it."""


def shaped_nhwc(X, resize=None, name: str = "X") -> np.ndarray:
    """as_nhwc(X), then `resize` (a function that resizes images to one size, or None). A list or
    tuple of images of different sizes is taken one image at a time when there is a `resize`."""
    if resize is not None and isinstance(X, (list, tuple)) and len({tuple(np.shape(x)) for x in X}) > 1:
        parts = [resize(as_nhwc([x], f"{name}[{i}]", resized=True)) for i, x in enumerate(X)]
        odd = next((i for i, p in enumerate(parts) if p.shape[1:] != parts[0].shape[1:]), None)
        if odd is not None:
            raise ValueError(f"{name}: image 0 has {parts[0].shape[-1]} channel(s), image {odd} has "
                             f"{parts[odd].shape[-1]}: give them in one colour mode")
        return np.concatenate(parts)
    images = as_nhwc(X, name, resized=resize is not None)
    return images if resize is None else resize(images)


def as_nhwc(X, name: str = "X", resized: bool = False) -> np.ndarray:
    """uint8 [N, H, W, C] numpy from the documented input layouts, else a clear error. A list or
    tuple is a batch of equal-shaped images: numpy [H, W(, C)] or torch [(C, )H, W], not both.
    Images must have sides of MIN_IMAGE_SIDE px unless they will be `resized`."""
    if isinstance(X, (list, tuple)):
        if not X:
            raise ValueError(f"{name} holds no images (an empty {type(X).__name__})")
        shapes = [tuple(np.shape(x)) for x in X]
        odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
        if odd is not None:
            raise ValueError(f"{name}: all images must have one shape; image 0 is {shapes[0]}, "
                             f"image {odd} is {shapes[odd]} (resize them first, or fit with image_size=S, "
                             "which resizes each image)")
        tensors = [isinstance(x, torch.Tensor) for x in X]
        if all(tensors):
            X = torch.stack(list(X))  # channels-first like any torch input
        elif any(tensors):  # the two kinds have their channels at opposite ends
            raise TypeError(f"{name} mixes torch tensors (channels first) and other images (channels last); "
                            "give one kind")
    if isinstance(X, torch.Tensor):
        if X.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: it holds no pixel data")
        t = X.detach().cpu()
        if t.dim() >= 1 and t.shape[0] == 0:
            raise ValueError(f"{name} holds no images")
        if t.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 images in 0..255, got a {t.dtype} tensor")
        if t.dim() == 3:
            t = t[:, None]
        if t.dim() != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"{name}: torch tensors must be [N, H, W] or [N, C, H, W] with C in (1, 3), "
                             f"got shape {tuple(X.shape)}")
        X = t.permute(0, 2, 3, 1).contiguous().numpy()  # checked below like any numpy input
    if isinstance(X, OneClassSplit):  # its train images would be scored against themselves
        raise TypeError(f"{name} is a OneClassSplit: only fit takes one; score its images (split.test)")
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":  # objects (None, dicts, ragged lists), strings, complex numbers
        raise TypeError(f"{name} must be uint8 images (a numpy array, torch tensor, or list of images), got "
                        f"{type(X).__name__}" + (f" of dtype {arr.dtype}" if isinstance(X, np.ndarray) else ""))
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 images in 0..255, got dtype {arr.dtype}{_uint8_hint(arr)}")
    if arr.ndim == 3:
        if resized and arr.shape[-1] in (1, 3) and min(arr.shape[:2]) >= MIN_IMAGE_SIDE:
            # images of any size are resized, but H x 1 or H x 3 px ones are most likely one image's channels
            raise ValueError(f"{name} of shape {arr.shape} looks like one image [H, W, C] without its batch axis: "
                             f"pass X[None] (or, for {arr.shape[0]} images {arr.shape[2]} px wide, "
                             f"[N, H, W, 1])")
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: numpy arrays must be [N, H, W] or [N, H, W, C] with C in (1, 3), "
                         f"got shape {arr.shape}")
    if not resized and min(arr.shape[1:3]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name}: images are {arr.shape[2]}x{arr.shape[1]} px, at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
                         f"are needed (a single image must still be a batch: [1, H, W(, C)])")
    return np.ascontiguousarray(arr)


def _uint8_hint(arr: np.ndarray) -> str:
    """How to make uint8 0..255 images of `arr`, by its values: a cast alone wraps values above 255."""
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        return ""
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size < arr.size:
        return " (it holds NaN or infinite values)"
    lo, hi = finite.min(), finite.max()
    if lo < 0 or hi > 255:
        return f" (its values run from {lo} to {hi}: scale them to 0..255 first)"
    if arr.dtype.kind == "f" and hi <= 1:
        return " (its values are in [0, 1]: convert with (x * 255).round().astype(np.uint8))"
    return " (its values are in 0..255: convert with " + ("x.round()" if arr.dtype.kind == "f" else "x") + \
        ".astype(np.uint8))"


class Con2Detector(BaseEstimator):
    """Con2 one-class anomaly detector. Options use the CLI flag names (dashes -> underscores).

    A scikit-learn estimator of the outlier-detector kind (clone, Pipeline, get / set_params), with
    PyOD's label convention: predict gives 1 = anomaly, 0 = normal (not scikit-learn's -1 / +1).
    `contamination`, if given, replaces `target_fpr` (the share of held-out normals above the
    threshold, in [0, 0.5]).

    After fit, set_params (or assigning the attribute) may change aggregate, target_fpr and
    contamination (the threshold is recalibrated on the held-out normals' stored scores), device
    (the model and bank move there), score_batch_size, progress and out. The other options
    (REFIT_PARAMS) shaped the fitted model and bank: with one changed, decision_function,
    predict and save fail until fit is called again (or the option is set back).

    `out`: a folder to keep each fit's training run in (config, metrics.jsonl, model): fit trains
    into out/fit-N, the next free N, and sets `run_dir_` to it; None (default) trains in a temporary
    folder that fit removes. Such a run holds no data path (the images were in memory): it is for
    reading its training log, not for `con2 evaluate`.
    """

    _estimator_type = "outlier_detector"  # scikit-learn < 1.6 reads this; newer ones the tags

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "outlier_detector"
        return tags

    def __init__(self, *, context: str = "invert", objective: str = "con2", epochs: int = 20,
                 batch_size: int = 64, image_size: int | None = None, scorer: str = "nnd", views: int = 40,
                 aggregate: str = "mean", device: str = "auto", seed: int = 0, amp: bool = False,
                 lr: float = 1e-3, weight_decay: float = 1e-3, temperature: float = 0.07, width: int = 64,
                 target_fpr: float = 0.05, contamination: float | None = None,
                 calibration_fraction: float = 0.1, bank_dtype: str = "float32", score_batch_size: int = 256,
                 crop_scale: tuple[float, float] | None = None, out: str | None = None, progress: bool = True):
        self.context, self.objective, self.epochs, self.batch_size = context, objective, epochs, batch_size
        self.image_size, self.scorer, self.views, self.aggregate = image_size, scorer, views, aggregate
        self.device, self.seed, self.amp, self.lr = device, seed, amp, lr
        self.weight_decay, self.temperature, self.width = weight_decay, temperature, width
        self.target_fpr, self.contamination = target_fpr, contamination
        self.calibration_fraction, self.bank_dtype = calibration_fraction, bank_dtype
        self.score_batch_size, self.out, self.progress = score_batch_size, out, progress
        self.crop_scale = crop_scale  # test-time crops' area range; None: the training views' (0.08, 1)

    def _checked_target_fpr(self) -> float:
        # types first: a str compared with a number would fail with Python's own message
        if not isinstance(self.progress, (bool, np.bool_)):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")
        if self.out is not None and not isinstance(self.out, (str, os.PathLike)):
            raise TypeError(f"out must be a folder path or None, got {self.out!r} ({type(self.out).__name__})")
        if self.crop_scale is not None and not isinstance(self.crop_scale, (tuple, list)):
            raise TypeError(f"crop_scale must be None or a (low, high) tuple, got {type(self.crop_scale).__name__} "
                            f"{self.crop_scale!r}")
        for name in ("target_fpr", "contamination", "calibration_fraction"):
            value = getattr(self, name)
            if not (is_number(value) or (name == "contamination" and value is None)):
                raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if not is_seed(self.seed):  # before TrainConfig, which names its CLI flags
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if self.bank_dtype not in BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {', '.join(BANK_DTYPES)}, got {self.bank_dtype!r}")
        if self.contamination is not None and not 0 <= self.contamination <= 0.5:
            raise ValueError(f"contamination must be in [0, 0.5] (as in PyOD), got {self.contamination}")
        if not 0 <= self.target_fpr < 1:  # checked even while contamination replaces it: a bundle keeps it
            raise ValueError(f"target_fpr must be in [0, 1), got {self.target_fpr}")
        fpr = self.target_fpr if self.contamination is None else self.contamination
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
        check_crop_scale(self.crop_scale)
        # the crop range only: a max aggregate with views=0 (the same scores as mean) is refused where it is
        # given (fit, from_run), so that a bundle saved with one by earlier con2 still loads
        check_view_options(self.views, self.crop_scale, views_flag="views=", crop_flag="crop_scale")
        from .scoring import view_plan

        view_plan(self.views, None)  # odd or negative view counts fail here, not after training
        self._train_config(out="unused")  # the training options too (seed, lr, width, ...)
        if not (is_int(self.score_batch_size) and self.score_batch_size >= 1):
            raise ValueError(f"score_batch_size must be an integer >= 1, got {self.score_batch_size!r}")
        from .run import resolve_device

        resolve_device(self.device)  # a bad device fails here, not after training
        return fpr

    def _train_config(self, out: str) -> TrainConfig:
        cfg = TrainConfig(dataset="npz", normal_class=["normal"], context=self.context, objective=self.objective,
                          epochs=self.epochs, batch_size=self.batch_size, image_size=self.image_size,
                          lr=self.lr, weight_decay=self.weight_decay, temperature=self.temperature,
                          amp=self.amp, seed=self.seed, width=self.width, device=self.device,
                          checkpoint_every=1, out=out).validate()
        cfg.checkpoint_every = cfg.epochs  # one checkpoint, at the end; epochs is a checked int by now
        return cfg

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None) -> "Con2Detector":
        """Train on normal images X (y is ignored, as in PyOD). The detector changes only when the
        whole fit succeeds: a failure (bad input, Ctrl-C, non-finite features) keeps the previous
        fit, or leaves the detector unfitted."""
        from .run import context_set, load_run, resolve_device
        from .train import train

        target_fpr = self._checked_target_fpr()
        check_view_options(self.views, None, self.aggregate, views_flag="views=", aggregate_flag="aggregate=")
        train_imgs, cal_imgs = self._fit_images(X)
        check_crop_pixels(self.crop_scale, train_imgs.shape[1])  # before the training, not after it
        split = OneClassSplit(name="detector", train=train_imgs, test=cal_imgs,
                              test_labels=np.zeros(len(cal_imgs), dtype=np.int64), val=cal_imgs,
                              meta={"calibration_only": True})
        tmp = tempfile.mkdtemp(prefix="con2-detector-") if self.out is None else None
        try:
            cfg = self._train_config(tmp or str(_next_fit_dir(Path(self.out))))
            run_dir = train(cfg, split=split, progress=self.progress)
            _, model = load_run(run_dir, device=resolve_device(self.device))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        h, w, c = train_imgs.shape[1:]
        fmt = InputFormat(size=(h, w), channels=c) if self.image_size is not None else None
        scorer = Scorer(model, scoring_view_config(cfg, split, self.crop_scale), context_set(cfg), train_imgs,
                        views=self.views, scorers=(self.scorer,), seed=self.seed, batch_size=self.score_batch_size,
                        bank_dtype=self.bank_dtype, progress=self.progress)
        return self._adopt(scorer, to_nchw(cal_imgs), target_fpr, fmt, None if tmp is not None else Path(run_dir),
                           None)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, scorer: str = "nnd", views: int = 40, aggregate: str = "mean",
                 target_fpr: float = 0.05, seed: int = 0, bank_dtype: str = "float32",
                 crop_scale: tuple[float, float] | None = None, device: str = "auto", score_batch_size: int = 256,
                 progress: bool = True) -> "Con2Detector":
        """The detector of a trained run (`con2 export`): its model, the bank of its training images
        under these test-time views, the threshold calibrated on its val normals at target_fpr, and
        its pre-processing (input_format_), so that it scores images as `con2 predict --run` does,
        without the training data once saved. The run's training options that Con2Detector has
        (context, objective, schedule, width) are recorded as the detector's; its resize and crop
        are in input_format_, which a later fit replaces (fit takes image_size instead). `seed` is
        the test-time views' seed, as in `con2 predict --seed`; the run's training seed is in
        source_run_ (a later fit would train with `seed`)."""
        from .evaluate import scorer_for_run
        from .run import load_run, resolve_device, run_split

        run_dir = Path(run_dir)
        det = cls(scorer=scorer, views=views, aggregate=aggregate, target_fpr=target_fpr, seed=seed,
                  bank_dtype=bank_dtype, crop_scale=crop_scale, device=device, score_batch_size=score_batch_size,
                  progress=progress)
        det._checked_target_fpr()  # the scoring options, before the run is read
        check_view_options(views, None, aggregate, views_flag="views=", aggregate_flag="aggregate=")
        cfg, model = load_run(run_dir, device=resolve_device(device))
        split = run_split(run_dir, cfg)
        if not len(split.val):
            raise ValueError(f"{split.name} has no val normals to calibrate the detector's threshold on; "
                             f"{split.how_to_get_val_normals()}")
        det.set_params(context=cfg.context, objective=cfg.objective, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       amp=cfg.amp, lr=cfg.lr, weight_decay=cfg.weight_decay, temperature=cfg.temperature,
                       width=cfg.width)
        source = {"run": run_dir.resolve().name, "dataset": split.name, "training_seed": cfg.seed,
                  "normal_classes": [str(split.class_names.get(c, c)) for c in split.normal_classes]}
        # the Scorer of con2 predict --run / evaluate, so that the bundle scores as they do
        scorer = scorer_for_run(model, cfg, split, views, (scorer,), aggregate, seed, score_batch_size, bank_dtype,
                                progress, crop_scale)
        return det._adopt(scorer, split.val, det._checked_target_fpr(), InputFormat.of_run(cfg, split), run_dir, source)

    def _adopt(self, scorer: Scorer, calibration, target_fpr: float, input_format, run_dir,
               source_run) -> "Con2Detector":
        """Take a Scorer's model, views and bank (of the training images) and calibrate the
        threshold on `calibration` (normals held out from them); the fitted state changes in one step."""
        # per view, so that a new aggregate recalibrates exactly what fit would have
        cal_views = scorer.score_views(calibration)[self.scorer]
        calibrated = _calibration(aggregate(cal_views, self.aggregate).numpy(), target_fpr)
        enc = scorer.encoder
        self.model_, self.view_cfg_, self.contexts_, self.bank_ = scorer.model, enc.view_cfg, enc.contexts, scorer.bank
        c, h, w = scorer.bank.image_shape
        self.input_shape_ = (int(h), int(w), int(c))
        self.input_format_, self.source_run_, self.run_dir_ = input_format, source_run, run_dir
        self._calibration_views = cal_views
        self.decision_scores_, self.threshold_, self.labels_ = calibrated
        self._calibrated_for = (self.aggregate, target_fpr)
        self._fitted_params = self._refit_params()
        self._synced_params = None  # the options checked against the previous fit say nothing about this one
        return self

    def _fit_images(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(train, calibration) images: a split's train and val parts (its train part, held out from,
        when it has no val), else X with a seeded calibration_fraction held out. Checked before training."""
        cal = None
        if isinstance(X, OneClassSplit):
            resized = self.image_size is not None
            images = as_nhwc(X.train, "the split's train images", resized)
            if len(X.val):
                cal = as_nhwc(X.val, "the split's val images", resized)
                if cal.shape[1:] != images.shape[1:]:
                    raise ValueError(f"the split's val images are {cal.shape[2]}x{cal.shape[1]} px with "
                                     f"{cal.shape[3]} channel(s), its train images {images.shape[2]}x"
                                     f"{images.shape[1]} px with {images.shape[3]}: the held-out normals must be "
                                     "like the training ones")
        else:
            # images of different sizes are resized one by one to image_size
            images = shaped_nhwc(X, None if self.image_size is None else self._resize)
        h, w = images.shape[1:3]
        if self.image_size is None and h != w:
            raise ValueError(f"the images are {w}x{h} px; the encoder takes square views: pass "
                             f"image_size=S to resize them to S x S")
        images = resize_images(images, self.image_size)  # con2 train --image-size's resize, before any view
        if cal is not None:
            return images, resize_images(cal, self.image_size)
        n = len(images)
        n_cal = int(round(self.calibration_fraction * n))
        if n_cal < 1 or n - n_cal < 2:
            raise ValueError(f"{n} normal images are too few to train on and hold out "
                             f"{self.calibration_fraction:.0%} for threshold calibration")
        perm = np.random.default_rng(self.seed).permutation(n)
        return images[np.sort(perm[n_cal:])], images[np.sort(perm[:n_cal])]

    def _resize(self, images: np.ndarray) -> np.ndarray:
        return resize_images(images, self.image_size)

    def _per_view(self, X, formatted: bool = False) -> torch.Tensor:
        return self.bank_.score_views(self._encoder(), self._query(X, formatted), (self.scorer,))[self.scorer]

    def _refit_params(self) -> dict:
        params = self.get_params()
        # a bundle's JSON gives lists for tuples: the same setting
        return {k: tuple(params[k]) if isinstance(params[k], (list, tuple)) else params[k] for k in REFIT_PARAMS}

    def _calibrate(self, target_fpr: float) -> None:
        """decision_scores_, threshold_, labels_ of the held-out normals under the current aggregate."""
        views = self._calibration_views  # None in bundles saved before they were kept: their scores as stored
        scores = self.decision_scores_ if views is None else aggregate(views, self.aggregate).numpy()
        self.decision_scores_, self.threshold_, self.labels_ = _calibration(scores, target_fpr)
        self._calibrated_for = (self.aggregate, target_fpr)

    def set_params(self, **params) -> "Con2Detector":
        """scikit-learn's set_params. On a fitted detector a new aggregate, target_fpr or
        contamination recalibrates the threshold at once and a new device moves the model and bank
        (an invalid value is refused and nothing changes). A changed REFIT_PARAMS option is taken,
        as scikit-learn's `set_params(...).fit(X)` needs, but scoring refuses it until the next fit."""
        if not hasattr(self, "bank_"):
            return super().set_params(**params)
        before = self.get_params()
        try:
            super().set_params(**params)
            if not self._stale_params():  # a stale one is for the next fit; scoring refuses it
                self._sync_fitted()
        except Exception:
            super().set_params(**before)
            raise
        return self

    def _stale_params(self) -> list[str]:
        """The REFIT_PARAMS options changed since fit (none for a pickle of a con2 that did not record them)."""
        fitted = getattr(self, "_fitted_params", None)
        if fitted is None:
            return []
        now = self._refit_params()
        return [k for k in REFIT_PARAMS if now[k] != fitted[k]]

    def _sync_fitted(self) -> None:
        """Refuse a changed REFIT_PARAMS option; apply changed LIVE_PARAMS ones to the fitted state."""
        if getattr(self, "_fitted_params", None) is None:  # pickled by a con2 that did not record them
            return
        params = self.get_params()
        if params == getattr(self, "_synced_params", None):  # nothing changed since the last call: no checks
            return
        stale = self._stale_params()
        if stale:
            k, was = stale[0], self._fitted_params[stale[0]]
            raise ValueError(f"{k} was {was!r} when this detector was fitted, now {getattr(self, k)!r}: the fitted "
                             f"model, bank and threshold depend on it; fit again (or set it back)")
        from .run import resolve_device

        target_fpr = self._checked_target_fpr()
        if self.aggregate != self._calibrated_for[0] and self._calibration_views is None:
            raise ValueError(f"this detector holds no per-view calibration scores (a bundle saved before they were "
                             f"kept) so its threshold stays calibrated for aggregate={self._calibrated_for[0]!r}; "
                             f"fit again for aggregate={self.aggregate!r}")
        device = resolve_device(self.device)
        here = next(self.model_.parameters()).device
        if device.type != here.type or device.index not in (None, here.index):
            self.model_, self.bank_ = self.model_.to(device), self.bank_.to(device)
        if (self.aggregate, target_fpr) != self._calibrated_for:
            self._calibrate(target_fpr)
        self._synced_params = params

    def _encoder(self) -> ViewEncoder:
        from .scoring import view_plan

        device = next(self.model_.parameters()).device
        return ViewEncoder(self.model_.encode, self.view_cfg_, self.contexts_, view_plan(self.views, self.contexts_),
                           seed=self.seed, batch_size=self.score_batch_size, device=device, progress=self.progress)

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise NotFittedError("this Con2Detector is not fitted yet: call fit(X), or take the detector that "
                                 "load returns (det = Con2Detector.load(path); it makes a new one)")
        self._sync_fitted()  # options assigned directly, not through set_params

    def _query(self, X, formatted: bool = False) -> torch.Tensor:
        """X as the model's input images: through input_format_ unless `formatted` (made by it already)."""
        h, w, c = self.input_shape_
        if c == 3 and isinstance(X, (torch.Tensor, np.ndarray)) and X.ndim == 3 and X.shape[0] == 3:
            # most likely one channels-first RGB image (a tensor, or its .numpy()); input_format_ would
            # turn its planes into 3 grey images and score each
            kind, one, grey = (("torch", "[1, 3, H, W] (X[None])", "[N, 1, H, W]") if isinstance(X, torch.Tensor)
                               else ("numpy", "[1, H, W, 3] (channels last)", "[N, H, W, 1]"))
            raise ValueError(f"X is a {kind} [3, H, W] array, read as 3 grayscale images by an RGB detector: pass "
                             f"one RGB image as {one}, grayscale images as {grey}")
        # any size and channel count, made as the training images (images of different sizes one by one)
        fmt = None if formatted else self.input_format_
        images = shaped_nhwc(X, None if fmt is None else fmt.apply)
        if images.shape[-1] != c:
            raise ValueError(f"X has {images.shape[-1]} channel(s), the detector was fitted on {c}")
        if images.shape[1:3] != (h, w):
            raise ValueError(f"X images are {images.shape[2]}x{images.shape[1]} px, "
                             f"the detector was fitted on {w}x{h} px (or fit with image_size=S to resize "
                             "every image to S x S)")
        return to_nchw(images)

    # ------------------------------------------------------------------ scoring
    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores [N] (float64; higher = more anomalous)."""
        self._check_fitted()
        return aggregate(self._per_view(X), self.aggregate).numpy()

    def decision_function_formatted(self, X) -> np.ndarray:
        """decision_function of images already made as input_format_ says (resized and cropped:
        con2 predict reads files that way), which it would otherwise resize again."""
        self._check_fitted()
        return aggregate(self._per_view(X, formatted=True), self.aggregate).numpy()

    def score_samples(self, X) -> np.ndarray:
        """scikit-learn convention: higher = more normal (the negated decision_function)."""
        return -self.decision_function(X)

    @property
    def fit_predict(self):
        """Not offered, as LocalOutlierFactor(novelty=True) does not offer it: hasattr is False."""
        raise AttributeError("Con2Detector has no fit_predict: it is a novelty detector whose bank holds the "
                             "training images, so their own scores would be biased low; fit on normal images, "
                             "then predict new ones: det.fit(X_normal).predict(X_new)")

    def predict(self, X) -> np.ndarray:
        """1 = anomaly (score > threshold_), 0 = normal."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def summary(self) -> str:
        """What this fitted detector is, in a few lines (`con2 info --detector FILE`)."""
        self._check_fitted()
        h, w, c = self.input_shape_
        arch = self.model_.architecture()
        src = self.source_run_
        lines = [f"from run {src['run']}: {src['dataset']}, normal class(es) "
                 f"{', '.join(repr(n) for n in src['normal_classes'])}" if src else
                 "fitted with Con2Detector.fit (no run)"]
        lines.append(f"model: ResNet18 width {arch['width']}, {c} channel(s), {w}x{h} input, trained with objective "
                     f"{self.objective}, context {self.context}")
        views = (f"{self.views} test-time views (crop area {self.view_cfg_.scale[0]:g}-{self.view_cfg_.scale[1]:g})"
                 if self.views else "one plain view")
        bank = (f"bank of {self.bank_.nnd.shape[1]} training images ({self.bank_dtype})" if self.bank_.nnd is not None
                else "Gaussian statistics of the training images")
        lines.append(f"scoring: {self.scorer} over {views}, aggregate {self.aggregate}, seed {self.seed}; {bank}")
        fpr = self._calibrated_for[1]
        lines.append(f"threshold {self.threshold_:.6g} at target FPR {fpr:g}: {int(self.labels_.sum())} of "
                     f"{len(self.labels_)} held-out normals above it")
        fmt = self.input_format_
        if fmt is None:
            lines.append(f"input: images must be {w}x{h} px")
        else:
            how = ("decoded at" if fmt.folder_decoding else "resized to") + f" {fmt.size[1]}x{fmt.size[0]}"
            how += " (the shorter side, then the centred square)" if fmt.keep_aspect else ""
            how += f", then the centred {fmt.center_crop}x{fmt.center_crop}" if fmt.center_crop else ""
            lines.append(f"input: images of any size {how}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ bundle
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in self.model_.encoder.state_dict().items()}
        b = self.bank_
        if b.nnd is not None:
            t["bank.nnd"] = b.nnd.cpu().contiguous()
            t["bank.nnd_norms"] = b.nnd_norms.cpu().contiguous()
        if b.gaussians is not None:
            t["bank.lh_mean"] = torch.stack([g.mean for g in b.gaussians]).cpu().contiguous()
            t["bank.lh_whitening"] = torch.stack([g.whitening for g in b.gaussians]).cpu().contiguous()
            t["bank.lh_logdet"] = torch.tensor([g.logdet for g in b.gaussians], dtype=torch.float64)
            t["bank.lh_shrinkage"] = torch.tensor([g.shrinkage for g in b.gaussians], dtype=torch.float64)
        t["calibration.scores"] = torch.from_numpy(np.ascontiguousarray(self.decision_scores_, dtype=np.float64))
        if getattr(self, "_calibration_views", None) is not None:
            t["calibration.views"] = self._calibration_views.cpu().contiguous()
        return t

    def _state(self) -> dict:
        return {
            "threshold": self.threshold_, "input_shape": list(self.input_shape_),
            "architecture": self.model_.architecture(), "view_config": _view_cfg_json(self.view_cfg_),
            "contexts": self.contexts_.name if self.contexts_ is not None else None,
            "plan": [[v.index, v.context, v.augmented] for v in self.bank_.plan],
            "input_format": None if self.input_format_ is None else self.input_format_.to_json(),
            "source_run": self.source_run_,
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector as one .safetensors bundle (see the module docstring)."""
        self._check_fitted()
        path = bundle_path(path)  # before the tensors are gathered: a bad path fails first
        return write_bundle(path, self._tensors(), self.get_params(), self._state())

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Con2Detector":
        """Load a bundle written by `save`; never unpickles."""
        from .run import resolve_device

        dev = resolve_device(device)  # a bad device is the caller's error, not the file's
        params, state, tensors = read_bundle(path)
        try:
            if isinstance(params.get("crop_scale"), list):  # JSON has no tuples
                params["crop_scale"] = tuple(params["crop_scale"])
            det = cls(**params)
            det.device = device
            model = Con2Model(**state["architecture"])
            enc = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
            model.encoder.load_state_dict(enc, strict=True)
            det.model_ = model.to(dev).eval()
            det.view_cfg_ = ViewConfig(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in state["view_config"].items()})
            det.contexts_ = ContextSet(state["contexts"]) if state["contexts"] else None
            det.input_shape_ = tuple(int(v) for v in state["input_shape"])
            det.input_format_ = _input_format(state, det)
            det.source_run_ = state.get("source_run")
            det.run_dir_ = None
            det.threshold_ = float(state["threshold"])
            plan = [View(int(i), int(c), bool(a)) for i, c, a in state["plan"]]
            _check_bundle_state(det, plan, tensors, model.feature_dim)
            gaussians = None
            if "bank.lh_mean" in tensors:
                gaussians = [Gaussian(m.to(dev), w.to(dev), float(ld), float(sh)) for m, w, ld, sh in zip(
                    tensors["bank.lh_mean"], tensors["bank.lh_whitening"], tensors["bank.lh_logdet"],
                    tensors["bank.lh_shrinkage"])]
            nnd = tensors.get("bank.nnd")
            norms = None
            if nnd is not None:  # recomputed, not trusted: stale norms would scale every similarity
                nnd = nnd.to(dev)
                norms = torch.stack([row_norms(b, f"the bank of view {i}").float() for i, b in enumerate(nnd)])
            h, w, c = det.input_shape_
            det.bank_ = FeatureBank(plan, nnd, norms, gaussians, (c, h, w))
            det.decision_scores_ = tensors["calibration.scores"].numpy()
            det.labels_ = (det.decision_scores_ > det.threshold_).astype(int)
            det._calibration_views = tensors.get("calibration.views")  # None in bundles saved before it was kept
            det._fitted_params = det._refit_params()
            det._calibrated_for = (det.aggregate, det._checked_target_fpr())
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise BundleError(f"{path} is an inconsistent con2 bundle: {type(exc).__name__}: {exc}") from exc
        return det


def _calibration(scores: np.ndarray, target_fpr: float) -> tuple[np.ndarray, float, np.ndarray]:
    """(scores, threshold, labels) of the held-out normals."""
    threshold = calibrate_threshold(scores, target_fpr)
    return scores, threshold, (scores > threshold).astype(int)


def _next_fit_dir(out: Path) -> Path:
    """out/fit-N with the next free N: each fit keeps its own training run (a refit, a clone in a
    grid search) instead of finding the folder taken."""
    taken = [int(p.name[4:]) for p in out.glob("fit-*") if p.name[4:].isdigit()] if out.is_dir() else []
    return out / f"fit-{max(taken, default=0) + 1}"


def _check_bundle_state(det: "Con2Detector", plan: list[View], tensors: dict, feature_dim: int) -> None:
    """The bundle's state is self-consistent (ValueError otherwise, reported as a BundleError)."""
    from .scoring import view_plan

    if len(det.input_shape_) != 3 or det.input_shape_[2] not in (1, 3):
        raise ValueError(f"input_shape must be [H, W, C] with C in (1, 3), got {list(det.input_shape_)}")
    if not np.isfinite(det.threshold_):
        raise ValueError(f"the threshold is {det.threshold_}")
    if [v.index for v in plan] != list(range(len(plan))) or not plan:
        raise ValueError("the view plan must list views 0, 1, ... in order")
    if plan != view_plan(det.views, det.contexts_):  # else the first score fails on the mismatch
        raise ValueError(f"its view plan ({len(plan)} views) is not that of views={det.views}")
    scorer_tensor = {"nnd": "bank.nnd", "lh": "bank.lh_mean"}[det.scorer]
    if scorer_tensor not in tensors:
        raise ValueError(f"no {det.scorer} bank in it ({scorer_tensor} is missing)")
    for name in ("bank.nnd", "bank.lh_mean"):
        t = tensors.get(name)
        if t is not None and (t.shape[0] != len(plan) or t.shape[-1] != feature_dim):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [{len(plan)}, ..., {feature_dim}]")
    views, scores = tensors.get("calibration.views"), tensors["calibration.scores"]
    if scores.dim() != 1 or len(scores) == 0:  # set_params(target_fpr=...) recalibrates on them
        raise ValueError(f"calibration.scores must hold the held-out normals' scores, got shape {tuple(scores.shape)}")
    if views is not None and (tuple(views.shape) != (len(scores), len(plan)) or views.dtype != torch.float64):
        raise ValueError(f"calibration.views is {views.dtype} {tuple(views.shape)}, expected float64 "
                         f"[{len(scores)}, {len(plan)}]")


def _input_format(state: dict, det: "Con2Detector") -> InputFormat | None:
    """A bundle's input format; bundles saved before it was kept: the image_size resize, or none."""
    if state.get("input_format") is not None:
        fmt = InputFormat.from_json(state["input_format"])
        if (*fmt.output_size, fmt.channels) != det.input_shape_:
            raise ValueError(f"the input format makes {fmt.output_size} x {fmt.channels} images, the input shape "
                             f"is {list(det.input_shape_)}")
        return fmt
    h, w, c = det.input_shape_
    return InputFormat(size=(h, w), channels=c) if det.image_size is not None else None


def _view_cfg_json(cfg: ViewConfig) -> dict:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
