"""Score image files with a trained run: `con2 predict --run RUN_DIR IMAGE_OR_FOLDER...`.

Files are decoded as the run's data set was (con2.data.decode.decode_image: 16-bit grayscale
scaled, not clipped), converted to the run's channel count (grey to RGB by repetition as the loaders
do, colour to grey by Pillow's luma) and resized as the run's images were: folder data sets with
Pillow's bicubic filter, array data sets (MedMNIST, CIFAR, npz, digits) with the loaders' antialiased
bilinear resize (aspect ratio not kept, or with --resize shorter-side kept: the shorter side to the
size, then the centred square), to the size before the run's centre crop, then cropped. So a
file gets the score its pixels would get inside `con2 evaluate`. The threshold is calibrated on the
run's val normals at `target_fpr` (default 0.05; con2.metrics.calibrate_threshold) unless one is given:
the two are alternatives, so giving both is refused.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.decode import NEAR_BLACK, DataError, list_images, not_a_file

DEFAULT_TARGET_FPR = 0.05


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files given and those under the folders given; an entry of a folder that is not a
    readable file (a dangling symlink, a FIFO) is an error naming it, as training names it, not a
    file left out of the output without a word."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p, strict=True)
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.is_symlink():  # a link whose target is gone, not a name that does not exist
            raise DataError(f"cannot read image {p}: {not_a_file(p)}")
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def read_images(files: Sequence[Path], size: tuple[int, int], channels: int, folder: bool,
                keep_aspect: bool = False, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] made as the run's loader made its images (module docstring; keep_aspect:
    --resize shorter-side); an unreadable file is an error naming it; one far from the shape of the
    run's images (source_size: theirs before the loader resized them; None: `size`), or near black,
    a warning naming it."""
    images, odd = _read(files, size, channels, folder, keep_aspect, source_size)
    _warn_odd(odd, len(files), size)
    return images


def _read(files: Sequence[Path], size: tuple[int, int], channels: int, folder: bool,
          keep_aspect: bool = False, source_size: tuple[int, int] | None = None,
          skip_bad: bool = False) -> tuple[np.ndarray, dict]:
    """read_images' images, and {"stretched": [...], "dark": [...], "unreadable": [(file, why)]}: the
    files far from the run's shape, those near black and, with skip_bad, those left out because they
    cannot be read (else the first is an error); not yet warned about."""
    from PIL import Image

    from .data.datasets import resize_images
    from .data.decode import DataError, decode_image, read_header

    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    odd = _no_odd_files()
    read = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        try:
            try:
                arr = decode_image(f, size if folder else None, keep_aspect)
                hw = read_header(f)[1] if folder else arr.shape[:2]  # folders are decoded at the run's size
            except DataError as exc:  # its message names the file
                raise DataError(f"cannot read image {exc}") from exc
            except Exception as exc:  # any decoder failure, as the folder loader's map_files reports it
                raise DataError(f"cannot read image {f}: {type(exc).__name__}: {exc}") from exc
        except DataError as exc:
            if not skip_bad:
                raise
            odd["unreadable"].append((f, str(exc)))
            continue
        read[i] = True
        if problem := _shape_problem(hw, source_size or size, keep_aspect):
            odd["stretched"].append(f"{f} ({hw[1]}x{hw[0]} px: {problem})")
        if (brightest := int(arr.max())) < NEAR_BLACK:
            odd["dark"].append(f"{f} (brightest pixel {brightest})")
        if arr.shape[-1] != channels:
            arr = (np.repeat(arr, 3, axis=-1) if channels == 3
                   else np.asarray(Image.fromarray(arr).convert("L"), dtype=np.uint8)[..., None])
        out[i] = resize_images(arr[None], size, keep_aspect)[0]  # no-op for folders (decoded at the size)
    return (out if read.all() else out[read]), odd


def _no_odd_files() -> dict[str, list]:
    """_read's record of the files to warn about, empty."""
    return {"stretched": [], "dark": [], "unreadable": []}


def _warn_odd(odd: dict, n: int, size: tuple[int, int]) -> None:
    def listed(names):
        return "; ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    if odd["stretched"]:
        warnings.warn(f"{len(odd['stretched'])} of {n} images are resized to the run's {size[1]}x{size[0]} px "
                      f"input from a very different shape, so their scores may mean little: "
                      f"{listed(odd['stretched'])}", stacklevel=3)
    if odd["unreadable"]:
        warnings.warn(f"left out {len(odd['unreadable'])} of {n} files that cannot be read (--skip-bad-files): "
                      f"{listed([why.removeprefix('cannot read image ') for _, why in odd['unreadable']])}",
                      stacklevel=3)
    if odd["dark"]:  # as the folder loader warns of a training set: 12-bit scans in 16-bit files
        warnings.warn(f"{len(odd['dark'])} of {n} images are near black after decoding (every pixel under "
                      f"{NEAR_BLACK} / 255), so their scores may mean little; 12-bit data stored in 16-bit files "
                      f"is read as 16-bit: rescale such files first: {listed(odd['dark'])}", stacklevel=3)


# An image this far from the run's image size is scored as a distorted picture: the resize keeps no
# aspect ratio, and upscaling a few pixels invents the rest.
MAX_ASPECT_CHANGE = 2.0
MIN_SIDE_FRACTION = 0.25


def _shape_problem(hw: tuple[int, int], size: tuple[int, int], keep_aspect: bool = False) -> str:
    """Why an H x W image is a poor fit for the run's `size` images ("" when it fits). keep_aspect
    (--resize shorter-side): not distorted but cropped, so what matters is how much is scored."""
    (h, w), (mh, mw) = hw, size
    change = (w / max(h, 1)) / (mw / mh)
    if max(change, 1 / max(change, 1e-12)) > MAX_ASPECT_CHANGE:
        if keep_aspect:
            return (f"aspect ratio {_ratio(w, h)}: the centred square scored is {min(h, w) / max(h, w, 1):.0%} "
                    "of the image")
        return f"aspect ratio {_ratio(w, h)}, the run's {_ratio(mw, mh)}"
    if h < mh * MIN_SIDE_FRACTION or w < mw * MIN_SIDE_FRACTION:
        return f"a side under 1/{1 / MIN_SIDE_FRACTION:g} of the run's"
    return ""


def _ratio(w: int, h: int) -> str:
    r = w / max(h, 1)
    return f"{r:.1f}:1".replace(".0:", ":") if r >= 1 else f"1:{1 / r:.1f}".removesuffix(".0")


def predict_files(run_dir, inputs, scorer: str = "nnd", views: int = 40, aggregate: str = "mean",
                  target_fpr: float | None = None, threshold: float | None = None, device: str = "auto", seed: int = 0,
                  batch_size: int = 256, bank_dtype: str = "float32", progress: bool = True,
                  crop_scale: tuple[float, float] | None = None, skip_bad_files: bool = False) -> list[dict]:
    """[{file, score, anomaly, threshold}] for every image under `inputs`: the threshold given, or the
    one calibrated on the run's val normals at `target_fpr` (None: DEFAULT_TARGET_FPR). An unreadable
    file is an error naming it; with skip_bad_files it is left out, named in a warning."""
    from .data.images import CHUNK_BYTES, center_crop_array
    from .evaluate import check_views_crop_scale, run_scorer
    from .metrics import calibrate_threshold, check_target_fpr
    from .run import load_run, run_split

    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    if threshold is not None and target_fpr is not None:  # the target would be ignored without a word
        raise ValueError(f"--threshold {threshold:g} and --target-fpr {target_fpr} are alternatives (a threshold "
                         f"given, or one calibrated at that FPR on the val normals); give one of them")
    target_fpr = check_target_fpr(DEFAULT_TARGET_FPR if target_fpr is None else target_fpr)  # not after scoring
    check_views_crop_scale(views, crop_scale)
    files = list_inputs(inputs)
    cfg, model = load_run(run_dir, device=device)
    split = run_split(run_dir, cfg)
    # the run's pre-processing: resize (to the pre-crop size when the run crops), then the centred crop
    size = tuple(int(v) for v in split.meta.get("pre_crop_size") or split.train.shape[1:3])
    if threshold is None and not len(split.val):
        # how to get val normals: a seeded split holds some out with --val-fraction; data with its own
        # split refuses that option, so it needs val images of its own
        retrain = ("retrain with --val-fraction F (e.g. 0.1) to hold out val normals for it" if split.seeded else
                   "retrain on data with val normal images (its own split has none, so --val-fraction cannot apply)")
        raise ValueError(f"{split.name} has no val normals to calibrate a threshold on; pass --threshold, or {retrain}")
    # the files a chunk at a time, so a folder larger than memory can be scored (a file's views are
    # keyed by its pixels: its score does not depend on the chunk it is read in)
    rows = max(1, CHUNK_BYTES // (size[0] * size[1] * split.channels))
    parts, odd = [files[i:i + rows] for i in range(0, len(files), rows)], _no_odd_files()
    scored: list[Path] = []  # the files read, in order
    source_size = split.meta.get("source_size")  # an array data set's images before the loader resized them

    def images_of(part):
        images, found = _read(part, size, split.channels, cfg.dataset == "folder", cfg.resize == "shorter-side",
                              tuple(source_size) if source_size else None, skip_bad_files)
        for k in odd:
            odd[k].extend(found[k])
        left_out = {f for f, _ in found["unreadable"]}
        scored.extend(f for f in part if f not in left_out)
        return center_crop_array(images, cfg.center_crop)

    first = images_of(parts[0])  # an unreadable file among the first fails before the bank is built
    s = run_scorer(model, cfg, split, views, (scorer,), aggregate, seed, batch_size, bank_dtype, progress, crop_scale)
    if threshold is None:
        threshold = calibrate_threshold(s.score(split.val)[scorer].numpy(), target_fpr)
    def scores_of(images):  # a chunk whose every file was left out has nothing to score
        return s.score(images)[scorer].numpy() if len(images) else np.zeros(0)

    scores = np.concatenate([scores_of(images_of(part) if i else first) for i, part in enumerate(parts)])
    _warn_odd(odd, len(files), size)
    if not scored:
        raise DataError(f"none of the {len(files)} files could be read (the first: {odd['unreadable'][0][1]})")
    return [{"file": str(f), "score": float(v), "anomaly": int(v > threshold), "threshold": float(threshold)}
            for f, v in zip(scored, scores)]
