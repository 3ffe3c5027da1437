"""Score image files with a trained run: `con2 predict --run RUN_DIR IMAGE_OR_FOLDER...`.

Files are decoded as the run's data set was (con2.data.decode.decode_image: 16-bit grayscale
scaled, not clipped), converted to the run's channel count (grey to RGB by repetition as the loaders
do, colour to grey by Pillow's luma) and resized as the run's images were: folder data sets with
Pillow's bicubic filter, array data sets (MedMNIST, CIFAR, npz, digits) with the loaders' antialiased
bilinear resize (aspect ratio not kept), to the size before the run's centre crop, then cropped. So a
file gets the score its pixels would get inside `con2 evaluate`. The threshold is calibrated on the
run's val normals at `target_fpr` (con2.metrics.calibrate_threshold) unless one is given.
"""
from __future__ import annotations

import math

from pathlib import Path
from typing import Sequence

import numpy as np

from .data.decode import list_images


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def read_images(files: Sequence[Path], size: tuple[int, int], channels: int, folder: bool) -> np.ndarray:
    """uint8 [N, H, W, C] made as the run's loader made its images (module docstring); an
    unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    from .data.datasets import resize_images
    from .data.decode import decode_image

    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            arr = decode_image(f, size if folder else None)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {f}: {exc}") from exc
        if arr.shape[-1] != channels:
            arr = (np.repeat(arr, 3, axis=-1) if channels == 3
                   else np.asarray(Image.fromarray(arr).convert("L"), dtype=np.uint8)[..., None])
        out[i] = resize_images(arr[None], size)[0]  # no-op for folders (decoded at the size)
    return out


def predict_files(run_dir, inputs, scorer: str = "nnd", views: int = 40, aggregate: str = "mean",
                  target_fpr: float = 0.05, threshold: float | None = None, device: str = "auto", seed: int = 0,
                  batch_size: int = 256, bank_dtype: str = "float32", progress: bool = True,
                  crop_scale: tuple[float, float] | None = None) -> list[dict]:
    """[{file, score, anomaly, threshold}] for every image under `inputs`."""
    from .data import load_split
    from .data.images import center_crop_array
    from .evaluate import run_scorer
    from .metrics import calibrate_threshold
    from .run import load_run

    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    files = list_inputs(inputs)
    cfg, model = load_run(run_dir, device=device)
    split = load_split(cfg)
    # the run's pre-processing: resize (to the pre-crop size when the run crops), then the centred crop
    size = tuple(int(v) for v in split.meta.get("pre_crop_size") or split.train.shape[1:3])
    images = center_crop_array(read_images(files, size, split.channels, cfg.dataset == "folder"), cfg.center_crop)
    if threshold is None and not len(split.val):
        raise ValueError(f"{split.name} has no val normals to calibrate a threshold on; pass --threshold")
    s = run_scorer(model, cfg, split, views, (scorer,), aggregate, seed, batch_size, bank_dtype, progress, crop_scale)
    if threshold is None:
        threshold = calibrate_threshold(s.score(split.val)[scorer].numpy(), target_fpr)
    scores = s.score(images)[scorer].numpy()
    return [{"file": str(f), "score": float(v), "anomaly": int(v > threshold), "threshold": float(threshold)}
            for f, v in zip(files, scores)]
