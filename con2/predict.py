"""Score image files with a trained run: `con2 predict --run RUN_DIR IMAGE_OR_FOLDER...`.

Files are read with Pillow, converted to the run's channel count (L or RGB) and resized to the
run's training image size (bicubic, aspect ratio not kept). The threshold is calibrated on the
run's val normals at `target_fpr` (con2.metrics.calibrate_threshold) unless one is given.
"""
from __future__ import annotations

import math

from pathlib import Path
from typing import Sequence

import numpy as np

from .data.datasets import IMAGE_SUFFIXES


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def read_images(files: Sequence[Path], size: tuple[int, int], channels: int) -> np.ndarray:
    """uint8 [N, H, W, C]; an unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {f}: {exc}") from exc
        out[i] = arr.reshape(size[0], size[1], channels)
    return out


def predict_files(run_dir, inputs, scorer: str = "nnd", views: int = 40, aggregate: str = "mean",
                  target_fpr: float = 0.05, threshold: float | None = None, device: str = "auto", seed: int = 0,
                  batch_size: int = 256, bank_dtype: str = "float32", progress: bool = True,
                  crop_scale: tuple[float, float] | None = None) -> list[dict]:
    """[{file, score, anomaly, threshold}] for every image under `inputs`."""
    from .data import load_split
    from .data.datasets import center_crop_array
    from .evaluate import run_scorer
    from .metrics import calibrate_threshold
    from .train import load_run

    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    files = list_inputs(inputs)
    cfg, model = load_run(run_dir, device=device)
    split = load_split(cfg)
    # the run's pre-processing: resize (to the pre-crop size when the run crops), then the centred crop
    size = (cfg.image_size,) * 2 if cfg.image_size and cfg.center_crop else split.train.shape[1:3]
    images = center_crop_array(read_images(files, size, split.channels), cfg.center_crop)
    if threshold is None and not len(split.val):
        raise ValueError(f"{split.name} has no val normals to calibrate a threshold on; pass --threshold")
    s = run_scorer(model, cfg, split, views, (scorer,), aggregate, seed, batch_size, bank_dtype, progress, crop_scale)
    if threshold is None:
        threshold = calibrate_threshold(s.score(split.val)[scorer].numpy(), target_fpr)
    scores = s.score(images)[scorer].numpy()
    return [{"file": str(f), "score": float(v), "anomaly": int(v > threshold), "threshold": float(threshold)}
            for f, v in zip(files, scores)]
