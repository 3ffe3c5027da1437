"""Score image files with a trained run, `con2 predict --run RUN_DIR IMAGE_OR_FOLDER...`, or with a
detector bundle exported from one, `con2 predict --detector FILE ...` (no training data needed).

Files are decoded as the run's data set was (con2.data.decode.decode_image: 16-bit grayscale
scaled, not clipped), converted to the run's channel count (grey to RGB by repetition as the loaders
do, colour to grey by Pillow's luma) and resized as the run's images were: folder data sets with
Pillow's bicubic filter, array data sets (MedMNIST, CIFAR, npz, digits) with the loaders' antialiased
bilinear resize (aspect ratio not kept, or with --resize shorter-side kept: the shorter side to the
size, then the centred square), to the size before the run's centre crop, then cropped. So a
file gets the score its pixels would get inside `con2 evaluate`. The threshold is calibrated on the
run's val normals at `target_fpr` (default 0.05; con2.metrics.calibrate_threshold) unless one is given:
the two are alternatives, so giving both is refused. A bundle keeps the run's pre-processing
(con2.data.input_format) and its val normals' per-view scores, so it scores and calibrates as the
run would.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.decode import IMAGE_NAMES, NEAR_BLACK, DataError, list_images, not_a_file
from .data.input_format import InputFormat

DEFAULT_TARGET_FPR = 0.05


def list_inputs(inputs: Sequence[str | Path], skip_bad: bool = False) -> list[Path]:
    """The image files given and those under the folders given; an entry of a folder that is not a
    readable file (a dangling symlink, a FIFO) is an error naming it, as training names it, not a
    file left out of the output without a word (with skip_bad: listed, for _read to skip and name)."""
    files: list[Path] = []
    for item in inputs:
        if not str(item).strip():  # Path("") is the current folder: every image under it
            raise ValueError("an input path is empty; give image files or folders")
        p = Path(item)
        if p.is_dir():
            found = list_images(p, strict=not skip_bad, keep_odd=skip_bad)
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder ({IMAGE_NAMES})")
            files += found
        elif p.is_file():
            files.append(p)
        elif p.is_symlink() or p.exists():  # a link whose target is gone, a FIFO: not a name that does not exist
            if not skip_bad:
                raise DataError(f"cannot read image {p}: {not_a_file(p)}")
            files.append(p)  # _read names and skips it, never opening it
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def read_images(files: Sequence[Path], size: tuple[int, int], channels: int, folder: bool,
                keep_aspect: bool = False, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] made as the run's loader made its images (module docstring; keep_aspect:
    --resize shorter-side); an unreadable file is an error naming it; one far from the shape of the
    run's images (source_size: theirs before the loader resized them; None: `size`), or near black,
    a warning naming it."""
    fmt = InputFormat(size=size, channels=channels, keep_aspect=keep_aspect, folder_decoding=folder,
                      source_size=source_size or size)
    images, odd = _read(files, fmt)
    _warn_odd(odd, len(files), size, stacklevel=3)
    return images


def _read(files: Sequence[Path], fmt: InputFormat, skip_bad: bool = False) -> tuple[np.ndarray, dict]:
    """The files as the model's input images (made as `fmt` says, centre crop included), and
    {"stretched": [...], "dark": [...], "unreadable": [(file, why)]}: the files far from the run's
    shape, those near black and, with skip_bad, those left out because they cannot be read (else
    the first is an error); not yet warned about."""
    from .data.decode import DataError, MissingDependency, decode_image, read_header

    size, folder = fmt.size, fmt.folder_decoding
    out = np.empty((len(files), *fmt.output_size, fmt.channels), dtype=np.uint8)
    odd = _no_odd_files()
    read = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        try:
            try:
                if not Path(f).is_file():  # a folder's dangling link or FIFO (list_inputs' skip_bad): never opened
                    raise DataError(f"{f}: {not_a_file(Path(f))}")
                arr = decode_image(f, size if folder else None, fmt.keep_aspect)
                # the file's own shape, for the warning: folders are decoded at the run's size
                hw = (read_header(f)[1] if folder else arr.shape[:2]) if fmt.source_size else None
            except MissingDependency:
                raise
            except DataError as exc:  # its message names the file
                raise DataError(f"cannot read image {exc}") from exc
            except Exception as exc:  # any decoder failure, as the folder loader's map_files reports it
                raise DataError(f"cannot read image {f}: {type(exc).__name__}: {exc}") from exc
        except DataError as exc:
            if not skip_bad or isinstance(exc, MissingDependency):  # not a bad file: it would drop them all
                raise
            odd["unreadable"].append((f, str(exc)))
            continue
        read[i] = True
        if fmt.source_size and (problem := _shape_problem(hw, fmt.source_size, fmt.keep_aspect)):
            odd["stretched"].append(f"{f} ({hw[1]}x{hw[0]} px: {problem})")
        if (brightest := int(arr.max())) < NEAR_BLACK:
            odd["dark"].append(f"{f} (brightest pixel {brightest})")
        out[i] = fmt.apply(arr[None])[0]  # the resize a no-op for folders (decoded at the size)
    return (out if read.all() else out[read]), odd


def _no_odd_files() -> dict[str, list]:
    """_read's record of the files to warn about, empty."""
    return {"stretched": [], "dark": [], "unreadable": []}


def _warn_odd(odd: dict, n: int, size: tuple[int, int], stacklevel: int) -> None:
    """Warn of the files _read found odd; stacklevel: the caller's frame, as warnings counts it from here."""
    def listed(names):
        return "; ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    if odd["stretched"]:
        warnings.warn(f"{len(odd['stretched'])} of {n} images are resized to the run's {size[1]}x{size[0]} px "
                      f"input from a very different shape, so their scores may mean little: "
                      f"{listed(odd['stretched'])}", stacklevel=stacklevel)
    if odd["unreadable"]:
        warnings.warn(f"left out {len(odd['unreadable'])} of {n} files that cannot be read (--skip-bad-files): "
                      f"{listed([why.removeprefix('cannot read image ') for _, why in odd['unreadable']])}",
                      stacklevel=stacklevel)
    if odd["dark"]:  # as the folder loader warns of a training set: 12-bit scans in 16-bit files
        warnings.warn(f"{len(odd['dark'])} of {n} images are near black after decoding (every pixel under "
                      f"{NEAR_BLACK} / 255), so their scores may mean little; 12-bit data stored in 16-bit files "
                      f"is read as 16-bit: rescale such files first: {listed(odd['dark'])}", stacklevel=stacklevel)


# An image this far from the run's image size is scored as a distorted picture: a stretching resize
# keeps no aspect ratio, and upscaling a few pixels invents the rest.
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
    from .evaluate import check_view_options, scorer_for_run
    from .metrics import calibrate_threshold
    from .run import load_run, run_split

    target_fpr = _check_threshold_options(threshold, target_fpr)
    check_view_options(views, crop_scale, aggregate)
    files = list_inputs(inputs, skip_bad_files)
    cfg, model = load_run(run_dir, device=device)
    split = run_split(run_dir, cfg)
    if threshold is None and not len(split.val):
        raise ValueError(f"{split.name} has no val normals to calibrate a threshold on; pass --threshold, or "
                         f"{split.how_to_get_val_normals()}")

    def scorer_and_threshold():
        s = scorer_for_run(model, cfg, split, views, (scorer,), aggregate, seed, batch_size, bank_dtype, progress,
                           crop_scale)
        t = threshold if threshold is not None else calibrate_threshold(s.score(split.val)[scorer].numpy(), target_fpr)
        return (lambda images: s.score(images)[scorer].numpy()), t

    return _score_files(files, InputFormat.of_run(cfg, split), scorer_and_threshold, skip_bad_files)


def predict_with_detector(detector, inputs, target_fpr: float | None = None, threshold: float | None = None,
                          aggregate: str | None = None, device: str = "auto", batch_size: int | None = None,
                          progress: bool | None = None, skip_bad_files: bool = False) -> list[dict]:
    """predict_files' rows from a detector bundle (`con2 export`, Con2Detector.save; a path, or a
    fitted Con2Detector, which is left as it is): no training data needed. Files are read as the
    detector's input format says (a run's pre-processing; a fitted detector's image_size, else its
    input size, other sizes warned of). The threshold is the one given, the detector's own, or
    recalibrated at `target_fpr` (or for another `aggregate`) from the held-out normals' per-view
    scores it keeps. batch_size / progress None: the detector's own."""
    import copy

    from .detector import Con2Detector

    target_fpr = _check_threshold_options(threshold, target_fpr, default=None)
    files = list_inputs(inputs, skip_bad_files)
    if isinstance(detector, Con2Detector):
        det = copy.copy(detector)  # set_params below recalibrates this copy, not the caller's detector
    else:
        det = Con2Detector.load(detector, device=device)
    live = {"score_batch_size": batch_size, "progress": progress, "aggregate": aggregate}
    live = {k: v for k, v in live.items() if v is not None}
    if target_fpr is not None:
        live.update(target_fpr=target_fpr, contamination=None)
    if aggregate not in (None, "mean") and det.views == 0:
        raise ValueError(f"--aggregate {aggregate} combines the scores of test-time views, but the detector scores "
                         "one plain view of each image (exported with --views 0); drop --aggregate")
    det.set_params(**live)
    h, w, c = det.input_shape_
    fmt = det.input_format_ or InputFormat(size=(h, w), channels=c, source_size=(h, w))
    return _score_files(files, fmt, lambda: (det.decision_function_formatted,
                                             det.threshold_ if threshold is None else threshold), skip_bad_files)


def _check_threshold_options(threshold, target_fpr, default=DEFAULT_TARGET_FPR):
    """The target FPR to calibrate at (`default` when none is given); a non-finite threshold, or a
    threshold and a target FPR together (one would be ignored without a word), refused."""
    from .metrics import check_target_fpr

    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--threshold must be a finite number, got {threshold}")
    if threshold is not None and target_fpr is not None:
        raise ValueError(f"--threshold {threshold:g} and --target-fpr {target_fpr} are alternatives (a threshold "
                         f"given, or one calibrated at that FPR on the val normals); give one of them")
    target_fpr = default if target_fpr is None else target_fpr
    return None if target_fpr is None else check_target_fpr(target_fpr)  # here, not after scoring


def _score_files(files: list[Path], fmt: InputFormat, scorer_and_threshold, skip_bad_files: bool) -> list[dict]:
    """The rows of predict_files. scorer_and_threshold() -> (score: uint8 [N, H, W, C] -> [N] scores,
    threshold) is called once the first chunk of files has been read, so that an unreadable file among
    them fails before the bank is built. The files are read a chunk at a time, so a folder larger than
    memory can be scored (a file's views are keyed by its pixels: its score does not depend on its chunk)."""
    from .data.images import CHUNK_BYTES

    rows = max(1, CHUNK_BYTES // (fmt.size[0] * fmt.size[1] * fmt.channels))
    parts, odd = [files[i:i + rows] for i in range(0, len(files), rows)], _no_odd_files()
    scored: list[Path] = []  # the files read, in order

    def images_of(part):
        images, found = _read(part, fmt, skip_bad_files)
        for k in odd:
            odd[k].extend(found[k])
        left_out = {f for f, _ in found["unreadable"]}
        scored.extend(f for f in part if f not in left_out)
        return images

    first = images_of(parts[0])
    score, threshold = scorer_and_threshold()

    def scores_of(images):  # a chunk whose every file was left out has nothing to score
        return score(images) if len(images) else np.zeros(0)

    scores = np.concatenate([scores_of(images_of(part) if i else first) for i, part in enumerate(parts)])
    _warn_odd(odd, len(files), fmt.size, stacklevel=4)  # predict_files' caller
    if not scored:
        raise DataError(f"none of the {len(files)} files could be read (the first: {odd['unreadable'][0][1]})")
    return [{"file": str(f), "score": float(v), "anomaly": int(v > threshold), "threshold": float(threshold)}
            for f, v in zip(scored, scores)]
