"""Data-set loaders: every source is turned into a OneClassSplit (METHOD sections 8 and 10).

`load_split(cfg)` dispatches on `cfg.dataset`. All images are uint8 [N, H, W, C], C in {1, 3}.

Splits, by source:

* MedMNIST (breast, pneumonia, oct, derma, blood) and CIFAR: the official train/val/test split.
  train = normal samples of train, val = normal samples of val (CIFAR has no val: empty),
  test = the whole test split.
* npz with only `images`/`labels`, and a folder without train/ test/ sub-folders: a seeded split
  (`cfg.split_seed`) of the *normal* samples only; every anomalous sample goes to test, because
  anomalies are never trained on and val is normal-only (threshold calibration).
  Normals: round(test_fraction * n) to test, round(val_fraction * n) to val
  (`cfg.val_fraction`, default 0), the rest to train. `cfg.n_train` instead fixes the number
  of training normals; test then gets all normals not in train or val.
  BR35H as METHOD section 10 suggests (1000 normal train; 500 normal + 1500 tumour test):
  `n_train=1000`, `--n-train 1000` (the default test_fraction 0.3 gives 1050 / 450 instead).
  On data with its own split these three, and `cfg.split_seed` without `cfg.max_train_samples`,
  would change nothing: set to other than their defaults, they are refused.
* digits (scikit-learn's 8x8 digits): a seeded per-class split, 60 % train / 10 % val / 30 % test
  (test = `cfg.test_fraction`, val = `cfg.val_fraction`; `n_train` does not apply and is refused),
  so anomalies in test are the test part of the other digits.
  Default normal digit "8", default size 16 px (see `load_digits_split`).

Every split has at least 2 training normals (the S_LH scorer's Gaussian), and its parts share one
image size and channel count; a named data set's file (MedMNIST, CIFAR) is checked to look like it.

Resizing: when `cfg.image_size` is set, images are resized to a square of that size
(array data: bilinear with antialiasing; folder images: Pillow bicubic, aspect ratio not kept);
then `cfg.center_crop` keeps the centred square of that size (the paper's MedMNIST / BR35H /
Pneumonia pre-processing is resize 256, centre-crop 224).
`cfg.max_train_samples` subsamples the training normals with `cfg.split_seed`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..config import resolve_val_fraction
from .decode import IMAGE_SUFFIXES, DataError, list_images, map_files, read_header
from .images import FolderImages, center_crop_array
from .split import OneClassSplit




# --------------------------------------------------------------------------- class tables

MEDMNIST = {
    # flag -> (default normal labels or None when the user must choose, class names)
    "breast": ((1,), {0: "malignant", 1: "normal, benign"}),
    "pneumonia": ((0,), {0: "normal", 1: "pneumonia"}),
    "oct": ((3,), {0: "choroidal neovascularization", 1: "diabetic macular edema", 2: "drusen", 3: "normal"}),
    "derma": (None, {0: "actinic keratoses and intraepithelial carcinoma", 1: "basal cell carcinoma",
                     2: "benign keratosis-like lesions", 3: "dermatofibroma", 4: "melanoma",
                     5: "melanocytic nevi", 6: "vascular lesions"}),
    "blood": (None, {0: "basophil", 1: "eosinophil", 2: "erythroblast", 3: "immature granulocytes",
                     4: "lymphocyte", 5: "monocyte", 6: "neutrophil", 7: "platelet"}),
}
MEDMNIST_RESOLUTIONS = (28, 64, 128, 224)
MEDMNIST_CHANNELS = {"breast": 1, "pneumonia": 1, "oct": 1, "derma": 3, "blood": 3}
# The official (train, val, test) sizes: a file with another flag's sizes is that flag's file.
MEDMNIST_SPLIT_SIZES = {"breast": (546, 78, 156), "pneumonia": (4708, 524, 624), "oct": (97477, 10832, 1000),
                        "derma": (7007, 1003, 2005), "blood": (11959, 1712, 3421)}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)
# The standard CIFAR-100 fine label (index) -> superclass (value) table.
CIFAR100_FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)

DIGITS_DEFAULT_CLASS = "8"  # the digit raw-pixel nearest neighbour finds hardest (AUROC ~0.98, not 1.0)
DIGITS_DEFAULT_SIZE = 16


# --------------------------------------------------------------------------- entry point

def load_split(cfg) -> OneClassSplit:
    """The one-class split named by `cfg` (a con2.config.TrainConfig)."""
    ds = cfg.dataset
    _refuse_unused_sources(cfg)
    if ds in MEDMNIST:
        split = load_medmnist(cfg)
    elif ds in ("cifar10", "cifar100"):
        split = load_cifar(cfg)
    elif ds == "npz":
        split = load_npz(cfg)
    elif ds == "folder":
        split = load_folder(cfg)
    elif ds == "digits":
        split = load_digits_split(cfg)
    else:
        raise DataError(f"unknown dataset {ds!r}")
    split = _center_crop_split(split, getattr(cfg, "center_crop", None))
    split = _limit_train(split, cfg.max_train_samples, cfg.split_seed)
    _check_train_count(split, cfg)
    return split


# --------------------------------------------------------------------------- option checks

# The S_LH scorer fits a Gaussian to the training features: one image has no covariance, and
# evaluation would fail only after training.
MIN_TRAIN_IMAGES = 2


def _check_train_count(split: OneClassSplit, cfg) -> None:
    n = len(split.train)
    if n >= MIN_TRAIN_IMAGES:
        return
    if cfg.max_train_samples is not None and cfg.max_train_samples < MIN_TRAIN_IMAGES:
        fix = "raise --max-train-samples"
    elif cfg.n_train is not None and cfg.n_train < MIN_TRAIN_IMAGES:
        fix = "raise --n-train"
    elif split.meta.get("split") == "seeded":
        fix = "add normal images, or lower --test-fraction / --val-fraction"
    else:
        fix = "add normal images to the training split, or choose another --normal-class"
    raise DataError(f"{split.name}: only {n} normal training image(s); at least {MIN_TRAIN_IMAGES} are needed "
                    f"(the S_LH scorer fits a Gaussian to their features): {fix}")


class InapplicableOption(DataError):
    """An option the data set does not use (module docstring): refused, not ignored. `fields` names
    the TrainConfig fields; con2.run loads the split of a run trained before the refusal without them
    (older con2 ignored them, so the run was trained on that split)."""

    def __init__(self, message: str, fields: tuple[str, ...]):
        super().__init__(message)
        self.fields = fields


def _refuse_unused_sources(cfg) -> None:
    """--resolution and --data-file where the data set reads neither: refused, not ignored."""
    if cfg.resolution is not None and cfg.dataset not in MEDMNIST:
        raise InapplicableOption(f"--resolution picks a MedMNIST file ({', '.join(MEDMNIST)}); it does not apply "
                                 f"to --dataset {cfg.dataset} (--image-size resizes any data set)", ("resolution",))
    if cfg.data_file and cfg.dataset == "folder":
        raise InapplicableOption("--data-file does not apply to --dataset folder: give the image folder as "
                                 "--data-root", ("data_file",))
    if cfg.data_file and cfg.dataset == "digits":
        raise InapplicableOption("--data-file does not apply to --dataset digits (scikit-learn's digits, read "
                                 "from no file)", ("data_file",))


def _split_options_set(cfg) -> dict[str, str]:
    """The options of the seeded split (module docstring) set to other than their defaults: field -> flag."""
    default_test = next(f.default for f in dataclasses.fields(cfg) if f.name == "test_fraction")
    given = {"n_train": f"--n-train {cfg.n_train}"} if cfg.n_train is not None else {}
    if cfg.test_fraction != default_test:
        given["test_fraction"] = f"--test-fraction {cfg.test_fraction:g}"
    if cfg.split_val_fraction() != resolve_val_fraction(cfg.dataset, None):  # --val-fraction 0 is npz's default
        given["val_fraction"] = f"--val-fraction {cfg.val_fraction:g}"
    if cfg.split_seed != 0 and cfg.max_train_samples is None:  # with a subsample, the seed picks it
        given["split_seed"] = f"--split-seed {cfg.split_seed}"
    return given


def _refuse_split_options(cfg, has_split: str) -> None:
    """On data with its own split these options would change nothing: refused, not ignored.
    has_split: what the data has, e.g. "breastmnist has its official train/val/test split"."""
    given = _split_options_set(cfg)
    if given:
        raise InapplicableOption(f"{' and '.join(given.values())} cannot apply: {has_split}, so there is no "
                                 f"seeded split to set (--n-train, --test-fraction, --val-fraction and "
                                 f"--split-seed split npz / folder data that has none; --split-seed also picks "
                                 f"a --max-train-samples subsample)", tuple(given))


# --------------------------------------------------------------------------- helpers

def _as_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 [N, H, W, C]; grayscale [N, H, W] gets a channel axis."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{where}: expected images [N, H, W] or [N, H, W, 1|3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, got {images.dtype}")
    return images


def _labels(labels: np.ndarray, where: str = "labels") -> np.ndarray:
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


def _check_lengths(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")


def _check_has_images(parts: dict, source) -> None:
    """A file without images, or without training images, said as such before its (empty) labels
    are read as the list of classes."""
    if not any(len(xy[0]) for xy in parts.values() if xy is not None):
        raise DataError(f"{source}: the file holds no images")
    if "train" in parts and len(parts["train"][0]) == 0:
        raise DataError(f"{source}: train_images holds no images, so there is nothing to train on")


def _check_parts_agree(parts: dict, source, resized: bool) -> None:
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


def _resolve_classes(requested, class_names: dict, dataset: str) -> tuple:
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
            raise DataError(f"{dataset}: unknown normal class {key!r}; available: {_available(class_names)}")
    return tuple(sorted(set(out)))


def _available(class_names: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(class_names.items()))


def _empty_like(images: np.ndarray) -> np.ndarray:
    return np.zeros((0,) + images.shape[1:], np.uint8)


def resize_images(images: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 [N, H, W, C] to size x size, or (H, W) (bilinear, antialiased), in chunks to
    bound memory. The resize of every array data set (MedMNIST, CIFAR, npz, digits)."""
    if size is None:
        return images
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


def _center_crop_split(split: OneClassSplit, size: int | None) -> OneClassSplit:
    if size is None:
        return split
    # recorded for the sources that decode the files again (DALI, file-reading workers): resize, then crop
    meta = {**split.meta, "pre_crop_size": [int(v) for v in split.train.shape[1:3]], "center_crop": int(size)}
    return dataclasses.replace(split, train=center_crop_array(split.train, size), meta=meta,
                               val=center_crop_array(split.val, size), test=center_crop_array(split.test, size))


def _one_class(name, parts: dict, normal: tuple, class_names: dict, image_size, meta: dict) -> OneClassSplit:
    """Build the split from labelled parts {"train": (x, y), "val": (x, y) or None, "test": (x, y)}."""
    for part, xy in parts.items():
        if xy is not None:
            _check_lengths(xy[0], xy[1], f"{name}: {part} split")
    tr_x, tr_y = parts["train"]
    te_x, te_y = parts["test"]
    va = parts.get("val")
    is_normal = lambda y: np.isin(y, normal)  # noqa: E731

    def normals(x, y):  # not a masked copy when every sample is normal (a held folder part)
        keep = is_normal(y)
        return x if keep.all() else x[keep]

    train = normals(tr_x, tr_y)
    if len(train) == 0:
        names = ", ".join(repr(class_names.get(c, c)) for c in normal)
        raise DataError(f"{name}: normal class {names} has no training samples; "
                        f"classes available: {_available(class_names)}")
    val = normals(*va) if va is not None else _empty_like(train)
    images = {s: resize_images(x, image_size) for s, x in (("train", train), ("val", val), ("test", te_x))}
    _check_parts_agree(images, meta.get("source", name), image_size is not None)
    return OneClassSplit(
        name=name,
        train=images["train"],
        val=images["val"],
        test=images["test"],
        test_labels=(~is_normal(te_y)).astype(np.int64),
        normal_classes=tuple(normal),
        class_names=dict(class_names),
        test_classes=te_y.astype(np.int64),
        meta=meta,
    )


def _seeded_normal_split(labels: np.ndarray, normal: tuple, cfg) -> dict:
    """Indices {"train", "val", "test"}: normals split by fractions, every anomaly to test (module docstring)."""
    rng = np.random.default_rng(cfg.split_seed)
    normal_idx = rng.permutation(np.flatnonzero(np.isin(labels, normal)))
    n = len(normal_idx)
    n_val = int(round(cfg.split_val_fraction() * n))
    if cfg.n_train is not None:
        n_train = int(cfg.n_train)
        if not 0 < n_train <= n - n_val:
            raise DataError(f"n_train={n_train} must be in 1..{n - n_val} ({n} normal samples, {n_val} for val)")
        n_test = n - n_train - n_val
    else:
        n_test = int(round(cfg.test_fraction * n))
    test_normal, val, train = np.split(normal_idx, [n_test, n_test + n_val])
    anomalies = np.flatnonzero(~np.isin(labels, normal))
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(np.concatenate([test_normal, anomalies]))}


def _limit_train(split: OneClassSplit, max_n: int | None, seed: int) -> OneClassSplit:
    if max_n is None or len(split.train) <= max_n:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.train), max_n, replace=False))
    split.train = split.train[keep]
    if split.train_files is not None:
        split.train_files = [split.train_files[i] for i in keep]
    split.meta["max_train_samples"] = max_n
    return split


def _load_npz(path: Path, required: tuple, hint: str = "") -> dict:
    """All arrays of an .npz, checking the required keys are there."""
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


# --------------------------------------------------------------------------- MedMNIST

def medmnist_path(cfg) -> Path:
    """Where the official file is expected: <data_root>/<flag>mnist[_<res>].npz (or cfg.data_file)."""
    if cfg.data_file:
        return Path(cfg.data_file)
    res = cfg.resolution or 28
    if res not in MEDMNIST_RESOLUTIONS:
        raise DataError(f"--resolution must be one of {MEDMNIST_RESOLUTIONS}, got {res}")
    suffix = "" if res == 28 else f"_{res}"
    return Path(cfg.data_root) / f"{cfg.dataset}mnist{suffix}.npz"


def _medmnist_download(flag: str, path: Path, res: int) -> bool:
    """Fetch the official file through the optional `medmnist` package; False when that is impossible."""
    try:
        import medmnist  # optional dependency
        info = medmnist.INFO[f"{flag}mnist"]
        cls = getattr(medmnist, info["python_class"])
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {} if res == 28 else {"size": res}
        cls(split="train", download=True, root=str(path.parent), **kwargs)
    except Exception:  # not installed, no network, old version without `size`
        return False
    return path.is_file()


def load_medmnist(cfg) -> OneClassSplit:
    flag = cfg.dataset
    default_normal, names = MEDMNIST[flag]
    if cfg.normal_class:
        normal = _resolve_classes(cfg.normal_class, names, flag)
    elif default_normal is None:
        raise DataError(f"--dataset {flag} needs --normal-class; available: {_available(names)}")
    else:
        normal = default_normal
    _refuse_split_options(cfg, f"{flag}mnist has its official train/val/test split")
    path = medmnist_path(cfg)
    res = cfg.resolution or 28
    if not path.is_file() and not cfg.data_file:
        _medmnist_download(flag, path, res)
    hint = ("; put the official MedMNIST file there (https://zenodo.org/records/10519652) or "
            "`pip install medmnist` with network access to download it")
    z = _load_npz(path, tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")), hint)
    parts = {s: (_as_nhwc(z[f"{s}_images"], f"{path}:{s}_images"), _labels(z[f"{s}_labels"], f"{path}:{s}_labels"))
             for s in ("train", "val", "test")}
    _check_medmnist_file(cfg, path, parts)
    return _one_class(f"{flag}mnist", parts, normal, names, cfg.image_size,
                      {"source": str(path), "split": "official", "resolution": int(parts["train"][0].shape[1])})


def _check_medmnist_file(cfg, path: Path, parts: dict) -> None:
    """The file is the flag's MedMNIST file, as far as can be told (another data set's file, e.g. the
    breast file given for pneumonia, would otherwise train as if it were): its images, the resolution
    asked for (--resolution, or 28 px for the default file name), labels within the flag's classes, and
    not another flag's official split sizes."""
    flag = cfg.dataset
    what = f"{flag}mnist"
    other = " (other data: --dataset npz)"
    _check_has_images(parts, path)
    for s, (x, y) in parts.items():
        _check_lengths(x, y, f"{path}: {s} split")
    h, w, c = parts["train"][0].shape[1:]
    if c != MEDMNIST_CHANNELS[flag]:
        raise DataError(f"{path}: its images have {c} channel(s), {what}'s have {MEDMNIST_CHANNELS[flag]}: "
                        f"is it the {what} file?{other}")
    res = cfg.resolution or (None if cfg.data_file else 28)  # a --data-file of any MedMNIST resolution
    if res is not None and (h, w) != (res, res):
        if cfg.resolution:
            fix = (f"give the {res} px file ({what}_{res}.npz), or leave --resolution out to train at the file's "
                   f"size (--image-size resizes)")
            raise DataError(f"{path}: its images are {w}x{h} px, not the {res}x{res} px of --resolution {res}: {fix}")
        raise DataError(f"{path}: its images are {w}x{h} px, not the 28x28 px of MedMNIST's {path.name}; "
                        f"a file of another resolution is named {what}_<res>.npz, read with --resolution <res>")
    n_classes = len(MEDMNIST[flag][1])
    for s, (_, y) in parts.items():
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"{path}: {s}_labels run {y.min()}..{y.max()}, but {what} has {n_classes} classes "
                            f"(0..{n_classes - 1}): is it the {what} file?{other}")
    sizes = tuple(len(parts[s][0]) for s in ("train", "val", "test"))
    like = next((f for f, n in MEDMNIST_SPLIT_SIZES.items() if n == sizes and f != flag), None)
    if like:
        raise DataError(f"{path}: its {'/'.join(map(str, sizes))} train/val/test images are the official {like}mnist "
                        f"split, not {what}'s {'/'.join(map(str, MEDMNIST_SPLIT_SIZES[flag]))}: "
                        f"pass the {what} file, or --dataset {like}")


# --------------------------------------------------------------------------- CIFAR

def _cifar_arrays(cfg, which: str) -> tuple[dict, str]:
    """(train/test images and labels, source) from an npz if one is there, else torchvision's files."""
    npz = Path(cfg.data_file) if cfg.data_file else Path(cfg.data_root) / f"{which}.npz"
    if cfg.data_file or npz.is_file():
        z = _load_npz(npz, ("train_images", "train_labels", "test_images", "test_labels"))
        return z, str(npz)
    import torchvision

    ds_cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
    try:
        tr = ds_cls(cfg.data_root, train=True, download=False)
        te = ds_cls(cfg.data_root, train=False, download=False)
    except RuntimeError as e:
        folder = "cifar-10-batches-py" if which == "cifar10" else "cifar-100-python"
        raise DataError(
            f"{which} not found: expected {npz} or torchvision's {Path(cfg.data_root) / folder} ({e}); "
            f"download with `python -c \"import torchvision; torchvision.datasets."
            f"{ds_cls.__name__}('{cfg.data_root}', download=True)\"`") from e
    return {"train_images": tr.data, "train_labels": np.array(tr.targets),
            "test_images": te.data, "test_labels": np.array(te.targets)}, f"torchvision:{cfg.data_root}"


def load_cifar(cfg) -> OneClassSplit:
    """CIFAR-10: one class normal (index or name). CIFAR-100: one of the 20 superclasses normal."""
    which = cfg.dataset
    _refuse_split_options(cfg, f"{which} has its official train/test split")
    z, source = _cifar_arrays(cfg, which)
    fine = False
    if which == "cifar10":
        names = dict(enumerate(CIFAR10_CLASSES))
    else:
        names = dict(enumerate(CIFAR100_SUPERCLASSES))
        if "train_coarse_labels" in z and "test_coarse_labels" in z:  # superclass labels stored: use them
            z = {**z, "train_labels": z["train_coarse_labels"], "test_labels": z["test_coarse_labels"]}
        else:  # fine labels 0..99 -> superclass
            fine = True
    if not cfg.normal_class:
        raise DataError(f"--dataset {which} needs --normal-class; available: {_available(names)}")
    normal = _resolve_classes(cfg.normal_class, names, which)
    parts = {s: (_as_nhwc(z[f"{s}_images"], f"{source}:{s}_images"), _labels(z[f"{s}_labels"], f"{source}:{s}_labels"))
             for s in ("train", "test")}
    _check_cifar_file(which, source, parts, 100 if fine else len(names))
    if fine:
        parts = {s: (x, CIFAR100_FINE_TO_COARSE[y]) for s, (x, y) in parts.items()}
    return _one_class(which, parts, normal, names, cfg.image_size, {"source": source, "split": "official"})


def _check_cifar_file(which: str, source: str, parts: dict, n_labels: int) -> None:
    """The arrays look like CIFAR (another data set's npz, e.g. a MedMNIST file given as --data-file,
    would otherwise train as the class asked for): 32x32 RGB images and labels 0..n_labels-1."""
    other = " (other data: --dataset npz)"
    _check_has_images(parts, source)
    for s, (x, y) in parts.items():
        _check_lengths(x, y, f"{source}: {s} split")
        h, w, c = x.shape[1:]
        if (h, w, c) != (32, 32, 3):
            raise DataError(f"{source}: its {s} images are {w}x{h} px with {c} channel(s), {which}'s are 32x32 RGB: "
                            f"is it a {which} file?{other}")
        if len(y) and (y.min() < 0 or y.max() >= n_labels):
            raise DataError(f"{source}: {s}_labels run {y.min()}..{y.max()}, but {which} labels are 0..{n_labels - 1}: "
                            f"is it a {which} file?{other}")
    labels = np.concatenate([y for _, y in parts.values()])
    if which == "cifar100" and n_labels == 100 and labels.max() < len(CIFAR10_CLASSES):
        # CIFAR-10's labels fit 0..99 too, and would be read as fine labels of 2 superclasses
        raise DataError(f"{source}: its labels are all 0..{labels.max()}, as in CIFAR-10, not CIFAR-100's fine "
                        f"labels 0..99: is it a cifar100 file? (CIFAR-10: --dataset cifar10)")


# --------------------------------------------------------------------------- generic npz

def load_npz(cfg) -> OneClassSplit:
    """An array file with train_/test_ (optionally val_) images+labels, or images+labels only.

    With images/labels only the seeded split of the module docstring is used. Normal classes are
    given by label value; optional `class_names` (str array) names the labels in order.
    """
    if not cfg.data_file:
        raise DataError("--dataset npz needs --data-file PATH.npz")
    path = Path(cfg.data_file)
    z = _load_npz(path, ())
    if all(k in z for k in ("train_images", "train_labels", "test_images", "test_labels")):
        _refuse_split_options(cfg, f"{path} has its own split (train_images / test_images)")
        if ("val_images" in z) != ("val_labels" in z):
            have, lack = ("val_images", "val_labels") if "val_images" in z else ("val_labels", "val_images")
            raise DataError(f"{path}: has {have} but no {lack}")
        parts = {s: (_as_nhwc(z[f"{s}_images"], f"{path}:{s}_images"), _labels(z[f"{s}_labels"], f"{path}:{s}_labels"))
                 for s in ("train", "val", "test") if f"{s}_images" in z}
        for s, (x, y) in parts.items():
            _check_lengths(x, y, f"{path}: {s} split")
        _check_has_images(parts, path)
        all_labels = np.concatenate([y for _, y in parts.values()])
        split_kind = "given"
    elif "images" in z and "labels" in z:
        images, labels = _as_nhwc(z["images"], f"{path}:images"), _labels(z["labels"], f"{path}:labels")
        _check_lengths(images, labels, str(path))
        _check_has_images({"all": (images, labels)}, path)
        all_labels = labels
        split_kind = "seeded"
    else:
        raise DataError(f"{path}: needs keys train_images/train_labels/test_images/test_labels or images/labels "
                        f"(has: {', '.join(sorted(z)) or 'none'})")
    names = _npz_class_table(all_labels, z)
    if not cfg.normal_class:
        raise DataError(f"--dataset npz needs --normal-class; available: {_available(names)}")
    normal = _resolve_classes(cfg.normal_class, names, path.name)
    meta = {"source": str(path), "split": split_kind}
    if split_kind == "seeded":
        idx = _seeded_normal_split(labels, normal, cfg)
        parts = {s: (images[i], labels[i]) for s, i in idx.items()}
        meta.update(split_seed=cfg.split_seed, test_fraction=cfg.test_fraction,
                    n_train=cfg.n_train, val_fraction=cfg.split_val_fraction())
    return _one_class(path.stem, parts, normal, names, cfg.image_size, meta)


def _npz_class_table(labels: np.ndarray, z) -> dict:
    """{label: name} of an npz file's classes: its `class_names` where given, else the label."""
    given = [str(s) for s in z["class_names"]] if "class_names" in z else None
    return {v: (given[v] if given and 0 <= v < len(given) else str(v))
            for v in sorted(int(v) for v in np.unique(labels))}


def class_names(cfg) -> dict | None:
    """{label: name} that cfg's --normal-class is resolved against (_resolve_classes), read without
    the images; None for folder data, whose classes are its class folders' names, matched exactly."""
    ds = cfg.dataset
    if ds == "folder":
        return None
    if ds == "digits":
        return {i: str(i) for i in range(10)}
    if ds == "cifar10":
        return dict(enumerate(CIFAR10_CLASSES))
    if ds == "cifar100":
        return dict(enumerate(CIFAR100_SUPERCLASSES))
    if ds in MEDMNIST:
        return dict(MEDMNIST[ds][1])
    with np.load(cfg.data_file, allow_pickle=False) as z:
        labels = [np.ravel(z[k]) for k in ("labels", "train_labels", "val_labels", "test_labels") if k in z]
        return _npz_class_table(np.concatenate(labels), z)


# --------------------------------------------------------------------------- digits

def load_digits_split(cfg) -> OneClassSplit:
    """scikit-learn's 8x8 digits (0..16 scaled to 0..255), one digit normal (default "8").

    Upscaled to 16 px by default (cfg.image_size overrides; 8 keeps the native size) so the
    network's feature maps do not shrink to 1x1 too early. Seeded per-class split:
    test_fraction (0.3) to test, 10 % (val_fraction) to val, the rest (60 %) to train.
    Digit 8 is the default because raw-pixel nearest neighbour does not already solve it.
    """
    from sklearn.datasets import load_digits

    if cfg.n_train is not None:  # the per-class split has no count of training normals to fix
        raise InapplicableOption(f"--n-train {cfg.n_train} does not apply to --dataset digits: its seeded split "
                                 f"puts --test-fraction and --val-fraction of every digit in test and val, the "
                                 f"rest in train", ("n_train",))
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    names = class_names(cfg)
    normal = _resolve_classes(cfg.normal_class or [DIGITS_DEFAULT_CLASS], names, "digits")
    rng = np.random.default_rng(cfg.split_seed)
    val_fraction = cfg.split_val_fraction()
    idx = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(cfg.test_fraction * len(members)))
        n_val = int(round(val_fraction * len(members)))
        for part, sel in zip(("test", "val", "train"), np.split(members, [n_test, n_test + n_val])):
            idx[part].append(sel)
    parts = {s: (images[np.sort(np.concatenate(v))], labels[np.sort(np.concatenate(v))]) for s, v in idx.items()}
    size = cfg.image_size or DIGITS_DEFAULT_SIZE
    return _one_class("digits", parts, normal, names, size,
                      {"source": "sklearn.datasets.load_digits", "split": "seeded per class",
                       "split_seed": cfg.split_seed})


# --------------------------------------------------------------------------- image folders

def _class_dirs(root: Path) -> dict[str, list[Path]]:
    return {d.name: _list_images(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _list_images(folder: Path) -> list[Path]:
    """list_images, plus image-named symlinks whose target is gone: list_images passes them over (not
    files), but they are images the folder lacks, so like any unreadable file they are named, or with
    --skip-bad-files skipped and counted (_read_header)."""
    files = list_images(folder)
    listed = set(files)
    dangling = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p not in listed
                and p.is_symlink() and not p.exists()
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files + dangling) if dangling else files


def _read_header(path: Path):
    """read_header, naming a dangling symlink as such rather than as a missing file."""
    try:
        return read_header(path)
    except OSError:
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path}: a dangling symlink (its target {os.readlink(path)} does not exist)") from None
        raise


def _check_sizes(sizes: list[tuple[int, int]], files: list) -> tuple[int, int]:
    """The common (H, W) of images of these (H, W) sizes; all must share one (else --image-size is needed)."""
    h, w = tuple(sizes[0]) if sizes else (1, 1)
    for (hi, wi), f in zip(sizes, files):
        if (hi, wi) != (h, w):
            raise DataError(f"images differ in size ({files[0]} is {w}x{h}, {f} is {wi}x{hi}); "
                            f"pass --image-size to resize them all")
    return h, w


def _parts_held(pipeline: str, counts: dict, image_bytes: int) -> set:
    """The parts of a folder decoded into memory: all for --pipeline tensor; else train, val and test
    in turn, each while the held parts fit memory_budget() together (train first: the tensor pipeline
    needs it), never train for --pipeline dali (DALI decodes the files itself). The others are
    decoded on access."""
    if pipeline == "tensor":
        return set(counts)
    budget, used, held = memory_budget(), 0, set()
    for part in ("train", "val", "test"):
        size = counts.get(part, 0) * image_bytes
        if part in counts and not (pipeline == "dali" and part == "train") and used + size <= budget:
            held.add(part)
            used += size
    return held


def memory_budget() -> int:
    """Bytes of decoded images an image folder may take in memory, else it is decoded on access:
    CON2_MEMORY_BUDGET_MB when set, else a quarter of the memory available now (a run holds more
    than its images: the scorers' chunks, the model, the views)."""
    env = os.environ.get("CON2_MEMORY_BUDGET_MB")
    if env:
        try:
            mib = float(env)
        except ValueError:
            mib = float("nan")
        if not (math.isfinite(mib) and mib >= 0):  # inf overflows int(); a negative budget means nothing
            raise DataError(f"CON2_MEMORY_BUDGET_MB must be a number of MiB, got {env!r} "
                            f"(finite and >= 0; 0 decodes every image folder on access)")
        return int(mib * 2**20)
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 2**62
    return available // 4


# Images of a folder part decoded on access that the near-black check decodes (evenly spaced).
DARK_CHECK_SAMPLES = 32


def _warn_if_dark(root: Path, held: list, on_access: list) -> None:
    """Warn when every image is near black (12-bit data in 16-bit files): all held images, and up to
    DARK_CHECK_SAMPLES evenly spaced images of each part decoded on access."""
    held = [a for a in held if len(a)]
    sampled = []  # the brightest pixel of each sampled image; a damaged one is left to fail where it is used
    for imgs in on_access:
        for i in np.unique(np.linspace(0, len(imgs) - 1, min(len(imgs), DARK_CHECK_SAMPLES)).round().astype(int)):
            try:
                sampled.append(int(imgs[int(i)].max()))
            except DataError:
                pass
    if not held and not sampled:
        return
    brightest = max([int(a.max()) for a in held] + sampled)
    if brightest < 32:
        n_held, n_sampled = sum(len(a) for a in held), len(sampled)
        n_lazy = sum(len(imgs) for imgs in on_access)
        which = ("every image is" if not sampled else
                 f"every image checked ({n_held} held in memory, {n_sampled} of {n_lazy} decoded on access) is")
        warnings.warn(f"{root}: {which} darker than 32 / 255 after decoding (brightest pixel {brightest}); "
                      f"12-bit data stored in 16-bit files is read as 16-bit: rescale such files first")


def load_folder(cfg) -> OneClassSplit:
    """An image-folder tree: <root>/<class>/... or <root>/{train,val,test}/<class>/...

    cfg.normal_class names one or more class folders. Without train/ and test/ the seeded split of
    the module docstring is used (normals split, the other classes all to test). Images are decoded
    with Pillow: all grayscale -> 1 channel, any colour image -> every image RGB. With cfg.image_size
    every image is resized to that square (bicubic, aspect not kept); without it all images must
    already share one size. Unreadable files raise a DataError naming the file, or with
    cfg.skip_bad_files are dropped and counted in meta["skipped_files"].

    Each part (train, val, test) is decoded into memory once when it fits memory_budget()
    (_parts_held); otherwise it is a FolderImages that decodes on access, so a folder larger than
    memory still trains (DALI or worker processes) and scores (chunk by chunk).
    """
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if not cfg.normal_class:
        raise DataError("--dataset folder needs --normal-class (one or more class folder names)")
    has_tree = (root / "train").is_dir() and (root / "test").is_dir()
    if (root / "train").is_dir() != (root / "test").is_dir():
        have, lack = ("train", "test") if (root / "train").is_dir() else ("test", "train")
        raise DataError(f"{root} has {have}/ but no {lack}/: give both (each with class folders), "
                        f"or neither for a seeded split of class folders")
    if has_tree:
        _refuse_split_options(cfg, f"{root} has its own split (train/ and test/ folders)")
        trees = {s: _class_dirs(root / s) for s in ("train", "val", "test") if (root / s).is_dir()}
    else:
        trees = {"all": _class_dirs(root)}
    class_list = sorted({c for t in trees.values() for c in t})
    if not class_list:
        raise DataError(f"{root}: no class sub-folders found")
    names = dict(enumerate(class_list))
    unknown = [c for c in cfg.normal_class if c not in class_list]
    if unknown:
        raise DataError(f"{root}: no class folder {unknown[0]!r}; available: {', '.join(class_list)}")
    normal = tuple(sorted(class_list.index(c) for c in cfg.normal_class))

    # Flatten every part to (files, labels) before decoding so one decode pass serves all parts.
    def flat(tree):
        files = [f for c in class_list for f in tree.get(c, [])]
        labels = np.array([class_list.index(c) for c in class_list for _ in tree.get(c, [])], np.int64)
        return files, labels

    if has_tree:
        listed = {s: flat(t) for s, t in trees.items()}
        # Only normal samples of train/val are used: decode just those.
        for s in ("train", "val"):
            if s in listed:
                f, y = listed[s]
                keep = np.isin(y, normal)
                listed[s] = ([p for p, k in zip(f, keep) if k], y[keep])
    else:
        files, labels = flat(trees["all"])
        idx = _seeded_normal_split(labels, normal, cfg)
        listed = {s: ([files[i] for i in ix], labels[ix]) for s, ix in idx.items()}

    # Headers first (cheap): they size the decoded parts, which decides which are held in memory.
    all_files = [f for s in listed for f in listed[s][0]]
    headers, skipped = map_files(_read_header, all_files, cfg.skip_bad_files, "reading")
    header = {f: h for f, h in zip(all_files, headers) if h is not None}
    channels = 3 if any(h[0] == 3 for h in header.values()) else 1
    hw = ((cfg.image_size, cfg.image_size) if cfg.image_size
          else _check_sizes([h[1] for h in header.values()], [str(f) for f in header]))
    counts = {s: sum(f in header for f in files) for s, (files, _) in listed.items()}
    held = _parts_held(cfg.pipeline, counts, hw[0] * hw[1] * channels)

    # per part: a FolderImages of the readable files, decoded into memory when held
    parts, part_files = {}, {}
    for s, (files, labels) in listed.items():
        ok = [i for i, f in enumerate(files) if f in header]
        images = FolderImages([files[i] for i in ok], hw, channels, resize=bool(cfg.image_size))
        if s in held:
            images, bad = images.load(cfg.skip_bad_files)
            skipped += bad
            bad = set(bad)
            ok = [i for i in ok if str(files[i]) not in bad]
        part_files[s] = [str(files[i]) for i in ok]
        parts[s] = (images, labels[ok])
    if skipped and not np.isin(parts["train"][1], normal).any():
        raise DataError(f"{root}: no readable training image of normal class {', '.join(cfg.normal_class)} "
                        f"({len(skipped)} unreadable file(s) skipped, e.g. {skipped[0]})")
    if channels == 3 and not any(header[Path(f)][0] == 3 for s in parts for f in part_files[s]):
        # the only colour files were among those skipped: the rest are grayscale, as if they had never been
        parts = {s: (np.ascontiguousarray(a[..., :1]) if s in held else FolderImages(a.files, a.hw, 1, resize=a.resize), y)
                 for s, (a, y) in parts.items()}
    _warn_if_dark(root, [parts[s][0] for s in held], [parts[s][0] for s in parts if s not in held])
    parts.setdefault("val", None)

    meta = {"source": str(root), "split": "given" if has_tree else "seeded",
            "skipped_files": len(skipped), "skipped_paths": [str(p) for p in skipped]}
    if not has_tree:
        meta.update(split_seed=cfg.split_seed, test_fraction=cfg.test_fraction,
                    n_train=cfg.n_train, val_fraction=cfg.split_val_fraction())
    if "val" in part_files:
        meta["val_files"] = part_files["val"]
    split = _one_class(root.name, parts, normal, names, None, meta)
    split.train_files, split.test_files = part_files["train"], part_files["test"]
    return split
