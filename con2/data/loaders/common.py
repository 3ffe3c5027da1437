"""Helpers the loaders share (con2.data.loaders.*): the check that refuses the seeded-split options on
data with its own split (`refuse_split_options`, raising `InapplicableOption`); checking the images
and labels read from a file; resolving --normal-class; resizing; the seeded split of the normals;
building the OneClassSplit from labelled parts (`one_class_split`); the centre crop and training subsample
that `load_split` applies last; reading an .npz file."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ...config import resolve_val_fraction
from ..decode import DataError, shorter_side_size
from ..images import center_crop_array
from ..split import OneClassSplit


# --------------------------------------------------------------------------- option checks

class InapplicableOption(DataError):
    """An option the data set does not use (con2.data.datasets' docstring): refused, not ignored.
    `fields` names the TrainConfig fields; con2.run loads the split of a run trained before the refusal
    without them (older con2 ignored them, so the run was trained on that split)."""

    def __init__(self, message: str, fields: tuple[str, ...]):
        super().__init__(message)
        self.fields = fields


def split_options_set(cfg) -> dict[str, str]:
    """The options of the seeded split (con2.data.datasets' docstring) set to other than their defaults:
    field -> flag."""
    default_test = next(f.default for f in dataclasses.fields(cfg) if f.name == "test_fraction")
    given = {"n_train": f"--n-train {cfg.n_train}"} if cfg.n_train is not None else {}
    if cfg.test_fraction != default_test:
        given["test_fraction"] = f"--test-fraction {cfg.test_fraction:g}"
    if cfg.split_val_fraction() != resolve_val_fraction(cfg.dataset, None):  # --val-fraction 0 is npz's default
        given["val_fraction"] = f"--val-fraction {cfg.val_fraction:g}"
    if cfg.split_seed != 0 and cfg.max_train_samples is None:  # with a subsample, the seed picks it
        given["split_seed"] = f"--split-seed {cfg.split_seed}"
    return given


def refuse_split_options(cfg, has_split: str) -> None:
    """On data with its own split these options would change nothing: refused, not ignored.
    has_split: what the data has, e.g. "breastmnist has its official train/val/test split"."""
    given = split_options_set(cfg)
    if given:
        raise InapplicableOption(f"{' and '.join(given.values())} cannot apply: {has_split}, so there is no "
                                 f"seeded split to set (--n-train, --test-fraction, --val-fraction and "
                                 f"--split-seed split npz / folder data that has none, and all but --n-train "
                                 f"digits; --split-seed also picks a --max-train-samples subsample)", tuple(given))


# --------------------------------------------------------------------------- helpers

def nhwc_images(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 [N, H, W, C]; grayscale [N, H, W] gets a channel axis."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{where}: expected images [N, H, W] or [N, H, W, 1|3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, got {images.dtype}")
    return images


def label_vector(labels: np.ndarray, where: str = "labels") -> np.ndarray:
    """int64 [N] class labels (MedMNIST stores them as (N, 1)); NaN or fractional labels are an error."""
    y = np.asarray(labels)
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):  # (N, 2) flattened would pair wrongly with images
        raise DataError(f"{where}: labels must be one per image, shape (N,) or (N, 1), got {y.shape}")
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise DataError(f"{where}: labels must be whole numbers; {int(bad.sum())} are not "
                            f"(first: {y[bad][0]!r} at index {int(np.flatnonzero(bad)[0])})")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def npz_row_names(z, prefix: str, n: int, path: Path) -> list[str]:
    """Where each row of `{prefix}images` came from, for the score files: the file's own names
    (`{prefix}filenames`, as BR35H's file has) where it has them for every row, else the row."""
    key = f"{prefix}filenames"
    if key in z and z[key].shape == (n,):
        return [f"{path.name}:{v.decode(errors='replace') if isinstance(v, bytes) else v}" for v in z[key].tolist()]
    return [f"{path.name}:{prefix}images[{i}]" for i in range(n)]


def npz_parts(z, parts, where) -> dict:
    """{part: (images, labels)} from the `{part}_images` / `{part}_labels` arrays of an npz, each checked."""
    return {s: (nhwc_images(z[f"{s}_images"], f"{where}:{s}_images"),
                label_vector(z[f"{s}_labels"], f"{where}:{s}_labels")) for s in parts}


def check_lengths(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")


def check_has_images(parts: dict, source) -> None:
    """A file without images, or without training images, said as such before its (empty) labels
    are read as the list of classes."""
    if not any(len(xy[0]) for xy in parts.values() if xy is not None):
        raise DataError(f"{source}: the file holds no images")
    if "train" in parts and len(parts["train"][0]) == 0:
        raise DataError(f"{source}: train_images holds no images, so there is nothing to train on")


def check_parts_agree(parts: dict, source, resized: bool) -> None:
    """Every part shares the train part's H, W and C (checked after resizing): a model trained on one
    size cannot score another, and evaluation would say so only after training."""
    h, w, c = parts["train"].shape[1:]
    for part in ("val", "test"):
        ph, pw, pc = parts[part].shape[1:]
        if (ph, pw, pc) != (h, w, c):
            fix = ("; --image-size S resizes every part to S x S" if (ph, pw) != (h, w) and not resized else
                   "; give every part the same channel count" if pc != c else "")
            raise DataError(f"{source}: the {part} images are {pw}x{ph} px with {pc} channel(s), the train images "
                            f"{w}x{h} px with {c}: every part must share one size and channel count{fix}")


def resolve_classes(requested, class_names: dict, dataset: str) -> tuple:
    """Class indices for `requested` (indices as strings/ints, or names, case-insensitive)."""
    by_name = {str(v).lower(): k for k, v in class_names.items()}
    out = []
    for r in requested:
        key = str(r).strip()
        if key.lstrip("-").isdigit() and int(key) in class_names:
            out.append(int(key))
        elif key.lower() in by_name:
            out.append(by_name[key.lower()])
        else:
            raise DataError(f"{dataset}: unknown normal class {key!r}; available: {available_classes(class_names)}")
    return tuple(sorted(set(out)))


def available_classes(class_names: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(class_names.items()))


def _empty_like(images: np.ndarray) -> np.ndarray:
    return np.zeros((0,) + images.shape[1:], np.uint8)


def resize_images(images: np.ndarray, size: int | tuple[int, int] | None, keep_aspect: bool = False) -> np.ndarray:
    """Resize uint8 [N, H, W, C] to size x size, or (H, W) (bilinear, antialiased), in chunks to
    bound memory. The resize of every array data set (MedMNIST, CIFAR, npz, digits). keep_aspect
    (--resize shorter-side): the shorter side to size, then the centred size x size."""
    if size is None:
        return images
    if keep_aspect and images.shape[1] != images.shape[2]:  # a square size: the run's, (S, S) or S
        side = size if isinstance(size, int) else int(size[0])
        return center_crop_array(resize_images(images, shorter_side_size(*images.shape[1:3], side)), side)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if images.shape[1:3] == (h, w):
        return images
    if len(images) == 0:  # an empty split (no val images) still takes the new shape
        return np.zeros((0, h, w, images.shape[-1]), np.uint8)
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), h, w, images.shape[-1]), np.uint8)
    for i in range(0, len(images), 4096):
        x = torch.tensor(images[i:i + 4096]).permute(0, 3, 1, 2).float()  # a copy: memmaps are read-only
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + 4096] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def center_crop_split(split: OneClassSplit, size: int | None) -> OneClassSplit:
    if size is None:
        return split
    # recorded for the sources that decode the files again (DALI, file-reading workers): resize, then crop
    meta = {**split.meta, "pre_crop_size": [int(v) for v in split.train.shape[1:3]], "center_crop": int(size)}
    return dataclasses.replace(split, train=center_crop_array(split.train, size), meta=meta,
                               val=center_crop_array(split.val, size), test=center_crop_array(split.test, size))


def one_class_split(name, parts: dict, normal: tuple, class_names: dict, image_size, meta: dict,
                    keep_aspect: bool = False, sources: dict | None = None) -> OneClassSplit:
    """Build the split from labelled parts {"train": (x, y), "val": (x, y) or None, "test": (x, y)},
    resized to image_size (keep_aspect: resize_images'); sources: {part: [each row's origin]}, kept
    in step with the images (OneClassSplit.sources)."""
    for part, xy in parts.items():
        if xy is not None:
            check_lengths(xy[0], xy[1], f"{name}: {part} split")
    tr_x, tr_y = parts["train"]
    te_x, te_y = parts["test"]
    va = parts.get("val")
    is_normal = lambda y: np.isin(y, normal)  # noqa: E731

    def normals(x, y):  # not a masked copy when every sample is normal (a held folder part)
        keep = is_normal(y)
        return (x, y) if keep.all() else (x[keep], y[keep])

    def kept(part, y):  # the origins of a part's normal rows (train / val keep only those)
        names = (sources or {}).get(part)
        return None if names is None else [n for n, k in zip(names, is_normal(y)) if k]

    origins = {"train": kept("train", tr_y), "val": kept("val", va[1]) if va is not None else None,
               "test": (sources or {}).get("test")}
    train, train_y = normals(tr_x, tr_y)
    if len(train) == 0:
        names = ", ".join(repr(class_names.get(c, c)) for c in normal)
        raise DataError(f"{name}: normal class {names} has no training samples; "
                        f"classes available: {available_classes(class_names)}")
    val, val_y = normals(*va) if va is not None else (_empty_like(train), np.zeros(0, np.int64))
    images = {s: resize_images(x, image_size, keep_aspect) for s, x in (("train", train), ("val", val), ("test", te_x))}
    check_parts_agree(images, meta.get("source", name), image_size is not None)
    # the images' own size, before the resize: what con2 predict compares a file's shape with
    meta = {**meta, "source_size": [int(v) for v in train.shape[1:3]]}
    return OneClassSplit(
        name=name,
        train=images["train"],
        val=images["val"],
        test=images["test"],
        test_labels=(~is_normal(te_y)).astype(np.int64),
        normal_classes=tuple(normal),
        class_names=dict(class_names),
        test_classes=te_y.astype(np.int64),
        train_classes=np.asarray(train_y, np.int64),
        val_classes=np.asarray(val_y, np.int64),
        meta=meta,
        sources={p: list(v) for p, v in origins.items() if v is not None},
    )


def held_out_count(fraction: float, n: int) -> int:
    """round(fraction * n), but at least one image for a fraction above 0: a --val-fraction asked
    for gives val normals (0.01 of 50 rounded to none, and con2 predict then asked for a val fraction)."""
    count = int(round(fraction * n))
    return max(count, 1) if fraction > 0 and n > 1 else count


def seeded_normal_split(labels: np.ndarray, normal: tuple, cfg) -> dict:
    """Indices {"train", "val", "test"}: normals split by fractions, every anomaly to test
    (con2.data.datasets' docstring)."""
    rng = np.random.default_rng(cfg.split_seed)
    normal_idx = rng.permutation(np.flatnonzero(np.isin(labels, normal)))
    n = len(normal_idx)
    n_val = held_out_count(cfg.split_val_fraction(), n)
    if cfg.n_train is not None:
        n_train = int(cfg.n_train)
        if not 0 < n_train <= n - n_val:
            raise DataError(f"--n-train {n_train} must be in 1..{n - n_val} ({n} normal samples, {n_val} for val)")
        n_test = n - n_train - n_val
    else:
        n_test = int(round(cfg.test_fraction * n))
        if n_test + n_val >= n:  # else "the class has no training samples", of a class that has some
            raise DataError(f"--test-fraction {cfg.test_fraction:g} and a val fraction of "
                            f"{cfg.split_val_fraction():g} hold out {n_test} + {n_val} of the {n} normal samples, "
                            "leaving none to train on; lower them")
    test_normal, val, train = np.split(normal_idx, [n_test, n_test + n_val])
    anomalies = np.flatnonzero(~np.isin(labels, normal))
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(np.concatenate([test_normal, anomalies]))}


def limit_train(split: OneClassSplit, max_n: int | None, seed: int) -> OneClassSplit:
    if max_n is None or len(split.train) <= max_n:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.train), max_n, replace=False))
    split.train = split.train[keep]
    if split.train_classes is not None:
        split.train_classes = split.train_classes[keep]
    if split.train_files is not None:
        split.train_files = [split.train_files[i] for i in keep]
    if "train" in split.sources:
        split.sources["train"] = [split.sources["train"][i] for i in keep]
    split.meta["max_train_samples"] = max_n
    return split


def read_npz(path: Path, required: tuple, hint: str = "") -> dict:
    """All arrays of an .npz, checking the required keys are there."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz data file (--dataset folder reads a folder of images)")
    if not path.is_file():
        raise DataError(f"data file not found: {path}{hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # corrupt or not an npz
        import zipfile

        what = "not an .npz file (not a zip archive)" if not zipfile.is_zipfile(path) else str(e)
        raise DataError(f"cannot read {path}: {what}") from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)} (has: {', '.join(sorted(arrays)) or 'none'})")
    return arrays
