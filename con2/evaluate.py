"""Evaluate a trained run on its one-class test split: both scorers, AUROC / AUPR / FPR95;
score any part of a run's split (`score_split`, behind `con2 score`).

`evaluate_run(run_dir)` writes into the run directory:
  metrics.json      the metrics of every scorer and the settings used
  scores.csv        per test sample: index, label (1 = anomaly), class name, source (a folder's
                    file or an npz's row, where the data names them), one column per scorer
  scores_views.npz  (per_view=True) the [Q, A] per-view scores of every scorer, and the labels
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import IO, Iterable

import numpy as np
import torch

from . import __version__
from .config import TrainConfig
from .data import OneClassSplit
from .files import check_writable_folder, replacing, write_json
from .metrics import binary_labels, calibrate_threshold, check_target_fpr, detection_metrics
from .run import context_set, load_run, run_split, view_config
from .scoring import SCORERS, Scorer, check_scorers
from .scoring import aggregate as aggregate_views  # `aggregate` names the option below

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
VIEWS_FILE = "scores_views.npz"


def scoring_view_config(cfg: TrainConfig, split: OneClassSplit, crop_scale: tuple[float, float] | None = None):
    """The run's training views, with the random crop's area range replaced by `crop_scale` if
    given: CSI's evaluation, where the 40 test-time views of the paper come from, fixes it at
    (0.54, 0.54); the paper's T_test is only said to be a subset of the training views T."""
    view_cfg = view_config(cfg, split)
    crop_scale = check_crop_pixels(crop_scale, view_cfg.size)
    return view_cfg if crop_scale is None else dataclasses.replace(view_cfg, scale=crop_scale)


def check_crop_pixels(crop_scale, size: int) -> tuple[float, float] | None:
    """check_crop_scale, and crops of at least a pixel of a size x size image: a crop that rounds to
    no pixel is not drawn, and torchvision's RandomResizedCrop then takes the whole image instead,
    the opposite of the small crops asked for."""
    crop_scale = check_crop_scale(crop_scale)
    if crop_scale is not None and crop_scale[0] * size * size < 1:
        raise ValueError(f"crop scale {crop_scale[0]:g} of a {size}x{size} px image is under one pixel (a crop "
                         f"that small falls back to the whole image): give a low end of at least "
                         f"{1 / (size * size):.3g}")
    return crop_scale


def check_crop_scale(crop_scale) -> tuple[float, float] | None:
    """(low, high) as floats with 0 < low <= high <= 1, or None; else a ValueError naming it."""
    if crop_scale is None:
        return None
    try:
        lo, hi = (float(v) for v in crop_scale)
    except (TypeError, ValueError):
        raise ValueError(f"crop scale must be two numbers (low, high), got {crop_scale!r}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
    return lo, hi


def check_view_options(views, crop_scale, aggregate: str = "mean", views_flag: str = "--views ",
                       crop_flag: str = "--crop-scale", aggregate_flag: str = "--aggregate") -> None:
    """Refuse a crop range or a max aggregate with 0 views: their one plain view makes no crops and
    has nothing to aggregate, so the option would be ignored (and, before this check, recorded in
    metrics.json as if applied). The *_flag arguments: how the caller's options are written (the
    CLI's flags, Con2Detector's parameters)."""
    if views != 0:
        return
    if crop_scale is not None:
        raise ValueError(f"{crop_flag} sets the area of the test-time crops, but {views_flag}0 makes none (one plain "
                         f"view of each image); drop {crop_flag}, or give {views_flag}2 or more")
    if aggregate != "mean":
        sep = " " if aggregate_flag.startswith("--") else ""
        raise ValueError(f"{aggregate_flag}{sep}{aggregate} combines the scores of test-time views, but "
                         f"{views_flag}0 makes one (a plain view of each image); drop {aggregate_flag}, or give "
                         f"{views_flag}2 or more")


def class_name(split: OneClassSplit, c) -> str:
    """The name of class index `c` in the split's class table (the index as text where it has none)."""
    return split.class_names.get(int(c), str(int(c)))


def scorer_for_run(model, cfg: TrainConfig, split: OneClassSplit, views: int = 40, scorers: Iterable[str] = SCORERS,
                   aggregate: str = "mean", seed: int = 0, batch_size: int = 256, bank_dtype: str = "float32",
                   progress: bool = True, crop_scale: tuple[float, float] | None = None) -> Scorer:
    """A Scorer with the train bank of `split` encoded by `model` under the run's views and contexts
    (the test-time crops' area range set by `crop_scale`, see scoring_view_config)."""
    check_view_options(views, crop_scale, aggregate)
    return Scorer(model, scoring_view_config(cfg, split, crop_scale), context_set(cfg), split.train, views=views,
                  scorers=scorers, aggregate=aggregate, seed=seed, batch_size=batch_size, bank_dtype=bank_dtype,
                  progress=progress)


def evaluate_model(model, cfg: TrainConfig, split: OneClassSplit, views: int = 40,
                   scorers: Iterable[str] = SCORERS, aggregate: str = "mean", seed: int = 0,
                   batch_size: int = 256, bank_dtype: str = "float32", target_fpr: float = 0.05,
                   progress: bool = True, crop_scale: tuple[float, float] | None = None
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, {scorer: [Q] test scores, scorer + '_views': [Q, A]}) of a model on a split."""
    scorers = check_scorers(scorers)
    target_fpr = check_target_fpr(target_fpr)  # here, not after hours of scoring
    labels = binary_labels(split.test_labels, f"{split.name}: test labels")  # found here, not after the scoring
    if len(labels) == 0:
        raise ValueError(f"{split.name}: the test split is empty; there is nothing to evaluate")
    if labels.min() == labels.max():
        raise ValueError(f"{split.name}: the test split needs normal and anomalous samples to be evaluated")
    t0 = time.perf_counter()
    scorer = scorer_for_run(model, cfg, split, views, scorers, aggregate, seed, batch_size, bank_dtype, progress,
                            crop_scale)
    per_view = scorer.score_views(split.test, scorers)
    val_scores = scorer.score(split.val, scorers) if len(split.val) else None
    # numpy scalars (a sweep's np.arange views) as Python numbers: the metrics are written as JSON
    # normal_classes are indices of the class table (folder data: sorted folder names); the names say which
    # classes they are. crop_scale is None for --views 0: its one plain view makes no crops.
    metrics: dict = {
        "dataset": split.name, "normal_classes": [int(c) for c in split.normal_classes],
        "normal_class_names": [class_name(split, c) for c in split.normal_classes],
        "context": cfg.context, "objective": cfg.objective, "views": int(views), "aggregate": aggregate,
        "scoring_seed": int(seed), "crop_scale": list(scorer.encoder.view_cfg.scale) if views else None,
        "bank_dtype": bank_dtype,
        "con2_version": __version__, "torch_version": torch.__version__,
        "device": str(scorer.encoder.device), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "n_train": int(len(split.train)), "n_val": int(len(split.val)),
        "n_test": int(len(labels)), "n_test_anomalous": int(labels.sum()),
    }
    scores: dict[str, np.ndarray] = {}
    for s in scorers:
        test = aggregate_views(per_view[s], aggregate).numpy()
        scores[s] = test
        scores[f"{s}_views"] = per_view[s].numpy()
        m = detection_metrics(labels, test)
        if val_scores is not None:
            t = calibrate_threshold(val_scores[s].numpy(), target_fpr)
            flagged = test > t
            m["threshold"] = {"target_fpr": target_fpr, "value": t, "calibrated_on": f"{len(split.val)} val normals",
                              "test_fpr": float(flagged[labels == 0].mean()),
                              "test_tpr": float(flagged[labels == 1].mean())}
        metrics[s] = m
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics, scores


def evaluate_run(run_dir: str | Path, views: int = 40, scorers: Iterable[str] = SCORERS, aggregate: str = "mean",
                 device: str = "auto", seed: int = 0, batch_size: int = 256, bank_dtype: str = "float32",
                 target_fpr: float = 0.05, per_view: bool = False, split: OneClassSplit | None = None,
                 progress: bool = True, write: bool = True, crop_scale: tuple[float, float] | None = None) -> dict:
    """Score a finished run's test split with every scorer; writes metrics.json and scores.csv."""

    run_dir = Path(run_dir)
    check_view_options(views, crop_scale, aggregate)  # before the model and data are loaded
    cfg, model = load_run(run_dir, device=device)
    if write:
        check_writable_folder(run_dir, f"the evaluation writes {METRICS_FILE} and {SCORES_FILE} into it")
    split = run_split(run_dir, cfg, split)
    metrics, scores = evaluate_model(model, cfg, split, views, scorers, aggregate, seed, batch_size, bank_dtype,
                                     target_fpr, progress, crop_scale)
    metrics = {"run": str(run_dir), **metrics}
    if write:
        write_results(run_dir, metrics, scores, split, per_view)
    return metrics


@dataclasses.dataclass
class SplitScores:
    """One scorer's scores of one part of a run's split, each traceable to its image.

    scores [Q] aggregated over the views (higher = more anomalous), per_view [Q, A]; labels
    (1 = anomaly), classes and files (a folder's file or an npz's row; None for the other array data sets)
    per image, in split order."""

    part: str
    scorer: str
    aggregate: str
    scores: np.ndarray
    per_view: np.ndarray
    labels: list[int]
    classes: list[str]
    files: list[str] | None

    def write_csv(self, out: IO[str], per_view: bool = False) -> None:
        """One row per image: index, label, class, file (folder data, an npz's row), score (and each view's)."""
        w = csv.writer(out)
        extra = [f"view{i}" for i in range(self.per_view.shape[1])] if per_view else []
        w.writerow(["index", "label", "class", *(["file"] if self.files else []), f"{self.scorer}_{self.aggregate}",
                    *extra])
        for i, s in enumerate(self.scores):
            row = [i, self.labels[i], self.classes[i], *([self.files[i]] if self.files else []), repr(float(s))]
            if per_view:
                row += [repr(float(v)) for v in self.per_view[i]]
            w.writerow(row)


def score_split(run_dir: str | Path, part: str = "test", scorer: str = "nnd", views: int = 40,
                aggregate: str = "mean", device: str = "auto", seed: int = 0, batch_size: int = 256,
                bank_dtype: str = "float32", progress: bool = True, crop_scale: tuple[float, float] | None = None,
                split: OneClassSplit | None = None) -> SplitScores:
    """Score the `part` ("test", "val" or "train") images of a trained run's split with one scorer,
    the bank built from its train images under the run's views (what `con2 score` writes)."""
    if part not in ("test", "val", "train"):
        raise ValueError(f"part must be test, val or train, got {part!r}")
    scorers = check_scorers(scorer)  # a name, or a sequence of one
    if len(scorers) != 1:
        raise ValueError(f"score_split scores with one scorer ('nnd' or 'lh'), got {scorer!r}; "
                         "evaluate_run(run, scorers=...) scores with several")
    (scorer,) = scorers
    check_view_options(views, crop_scale, aggregate)
    cfg, model = load_run(run_dir, device=device)
    split = run_split(run_dir, cfg, split)
    images = split.part(part)
    if not len(images):
        raise ValueError(f"the {part} split of {run_dir} is empty")
    labels, classes, files = sample_columns(split, part)  # checked before the scoring
    if part == "train":
        warnings.warn("the train images are scored against the bank built from themselves (in-sample): their "
                      "scores sit lower than any unseen image's (with --views 0 each finds itself, nnd -1), so "
                      "they are no reference for thresholds or plots; --split val scores held-out normal images")
    per_view = scorer_for_run(model, cfg, split, views, (scorer,), aggregate, seed, batch_size, bank_dtype, progress,
                              crop_scale).score_views(images)[scorer]
    return SplitScores(part, scorer, aggregate, aggregate_views(per_view, aggregate).numpy(), per_view.numpy(),
                       labels, classes, files)


def write_results(run_dir: Path, metrics: dict, scores: dict, split: OneClassSplit, per_view: bool = False) -> None:
    names = [s for s in SCORERS if s in scores]
    labels, classes, files = sample_columns(split, "test")
    # metrics.json goes first and comes back last: an interruption in between leaves new scores
    # without metrics (which con2 report names), never new scores beside the old evaluation's metrics
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    # a non-UTF-8 file or class name is written as its bytes (see con2.cli.output.write_output)
    with replacing(run_dir / SCORES_FILE) as tmp, open(tmp, "w", newline="", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "label", "class", *(["file"] if files else []), *names])
        for i in range(len(labels)):
            w.writerow([i, labels[i], classes[i], *([files[i]] if files else []),
                        *(repr(float(scores[s][i])) for s in names)])
    if per_view:
        with replacing(run_dir / VIEWS_FILE) as tmp, open(tmp, "wb") as fh:  # a file: savez adds .npz to a name
            np.savez(fh, labels=labels, views=metrics["views"], aggregate=metrics["aggregate"],
                     **{s: scores[f"{s}_views"] for s in names})
    else:  # an older file would no longer belong to the metrics written next to it
        (run_dir / VIEWS_FILE).unlink(missing_ok=True)
    write_json(run_dir / METRICS_FILE, metrics)


def sample_columns(split, part: str) -> tuple[list[int], list[str], list[str] | None]:
    """Per image of `part`: label (1 = anomaly), class name ("" where the loader kept none) and
    source file (an npz's row, "file.npz:name" or "file.npz:images[row]"; None for the other array
    data sets), so a score row can be traced back to its image."""
    n = len(split.part(part))
    if part == "test":
        labels = binary_labels(split.test_labels, f"{split.name}: test labels").tolist()
        classes = [class_name(split, c) for c in split.test_classes] if split.test_classes is not None else [""] * n
        files = split.test_files
    else:  # train / val hold normal images only: of one of the normal classes, which the loaders record
        labels = [0] * n
        files = split.train_files if part == "train" else split.meta.get("val_files")
        known = split.train_classes if part == "train" else split.val_classes
        if known is not None and len(known) == n:
            classes = [class_name(split, c) for c in known]
        else:  # a split built without them (Con2Detector's, older callers')
            classes = [class_name(split, split.normal_classes[0]) if len(split.normal_classes) == 1 else ""] * n
    if files is None:
        files = split.sources.get(part)
    if files is not None and len(files) != n:  # e.g. --max-train-samples kept files and images in step
        raise ValueError(f"{part} split: {len(files)} file names for {n} images")
    return labels, classes, files


def read_scores(run_dir: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {scorer: scores}) from a run's scores.csv; a damaged or hand-edited file is a
    ValueError naming it, the line and what is wrong, not a KeyError from inside its reader (con2 report plots them)."""
    path = Path(run_dir) / SCORES_FILE
    again = f"; rerun `con2 evaluate --run {run_dir}`"
    labels: list[int] = []
    columns: dict[str, list[float]] = {}
    # a name that is not UTF-8 is written as its bytes (write_results)
    with open(path, newline="", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
            names = [s for s in SCORERS if s in header]
            if "label" not in header or not names:
                what = "'label' column" if "label" not in header else f"score column ({' or '.join(SCORERS)})"
                raise ValueError(f"{path} has no {what} in its header{again}")
            columns = {s: [] for s in names}
            for row in reader:
                where = f"{path} line {reader.line_num}"
                try:
                    label = int(row["label"])
                except (TypeError, ValueError):
                    label = None
                if label not in (0, 1):
                    raise ValueError(f"{where}: label {_cell(row['label'])} is not 0 or 1{again}")
                labels.append(label)
                for s in names:
                    try:
                        v = float(row[s])
                    except (TypeError, ValueError):
                        raise ValueError(f"{where}: {s} score {_cell(row[s])} is not a number{again}") from None
                    if not math.isfinite(v):
                        raise ValueError(f"{where}: {s} score {row[s]} is not finite{again}")
                    columns[s].append(v)
        except csv.Error as exc:  # a NUL byte, an unclosed quote
            raise ValueError(f"{path} line {reader.line_num} is not valid CSV ({exc}){again}") from None
    if not labels:
        raise ValueError(f"{path} holds no scores{again}")
    if min(labels) == max(labels):
        raise ValueError(f"{path}: every row has label {labels[0]}; the plots need normal (0) and anomalous (1) "
                         f"samples{again}")
    return np.array(labels), {s: np.array(v) for s, v in columns.items()}


def _cell(value) -> str:
    return "(missing)" if value is None else repr(value)


def format_metrics(metrics: dict) -> str:
    """A small Markdown table of the metrics of every scorer."""
    lines = ["| scorer | AUROC (%) | AUPR (%) | FPR@95TPR (%) |", "|---|---|---|---|"]
    for s in SCORERS:
        if s in metrics:
            m = metrics[s]
            lines.append(f"| {s} | {m['auroc'] * 100:.2f} | {m['aupr'] * 100:.2f} | {m['fpr95'] * 100:.2f} |")
    return "\n".join(lines)
