"""Data-set loaders: every source is turned into a OneClassSplit (METHOD sections 8 and 10).

`load_split(cfg)` dispatches on `cfg.dataset`. All images are uint8 [N, H, W, C], C in {1, 3}.
The loaders live in con2.data.loaders, one module per source (medmnist, cifar, npz, digits,
folder) and the helpers they share (common); the names other code imports from here are
listed in __all__.

Splits, by source:

* MedMNIST (breast, pneumonia, oct, derma, blood) and CIFAR: the official train/val/test split.
  train = normal samples of train, val = normal samples of val (CIFAR has no val: empty),
  test = the whole test split.
* npz with only `images`/`labels`, and a folder without train/ test/ sub-folders: a seeded split
  (`cfg.split_seed`) of the *normal* samples only; every anomalous sample goes to test, because
  anomalies are never trained on and val is normal-only (threshold calibration).
  Normals: round(test_fraction * n) to test, round(val_fraction * n) to val, at least one
  (`cfg.val_fraction`, default 0), the rest to train. `cfg.n_train` instead fixes the number
  of training normals; test then gets all normals not in train or val.
  BR35H as METHOD section 10 suggests (1000 normal train; 500 normal + 1500 tumour test):
  `n_train=1000`, `--n-train 1000` (the default test_fraction 0.3 gives 1050 / 450 instead).
  On data with its own split these three, and `cfg.split_seed` without `cfg.max_train_samples`,
  would change nothing: set to other than their defaults, they are refused.
* digits (scikit-learn's 8x8 digits): a seeded per-class split, 60 % train / 10 % val / 30 % test
  (test = `cfg.test_fraction`, val = `cfg.val_fraction`; `n_train` does not apply and is refused),
  so anomalies in test are the test part of the other digits.
  Default normal digit "8", default size 16 px (see `loaders.digits.load_digits_split`).

Every split has at least 2 training normals (the S_LH scorer's Gaussian), and its parts share one
image size and channel count; a named data set's file (MedMNIST, CIFAR) is checked to look like it.

Resizing: when `cfg.image_size` is set, images are resized to a square of that size
(array data: bilinear with antialiasing; folder images: Pillow bicubic), aspect ratio not kept, or
with `--resize shorter-side` scaled on the shorter side and centre-cropped to the square;
then `cfg.center_crop` keeps the centred square of that size (the paper's MedMNIST / BR35H /
Pneumonia pre-processing is resize 256, centre-crop 224).
`cfg.max_train_samples` subsamples the training normals with `cfg.split_seed`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .decode import DataError
from .loaders.cifar import (CIFAR10_CLASSES, CIFAR100_FINE_TO_COARSE, CIFAR100_SUPERCLASSES, check_cifar_source,
                             load_cifar)
from .loaders.common import InapplicableOption, center_crop_split, limit_train, resize_images, resolve_classes
from .loaders.digits import DIGIT_NAMES, load_digits_split
from .loaders.folder import load_folder, memory_budget, training_class_folders
from .loaders.medmnist import MEDMNIST, load_medmnist
from .loaders.npz import _npz_class_table, load_npz
from .split import OneClassSplit

# the names other code imports from here (some of them the loaders')
__all__ = ["CIFAR100_FINE_TO_COARSE", "CIFAR100_SUPERCLASSES", "DataError", "InapplicableOption", "MEDMNIST",
           "check_data_source", "class_names", "load_split", "memory_budget", "normal_class_labels", "resize_images",
           "resolve_classes", "training_class_folders"]


# --------------------------------------------------------------------------- entry point

def load_split(cfg) -> OneClassSplit:
    """The one-class split named by `cfg` (a con2.config.TrainConfig)."""
    ds = cfg.dataset
    _check_source_options(cfg)
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
    split = center_crop_split(split, getattr(cfg, "center_crop", None))
    split = limit_train(split, cfg.max_train_samples, cfg.split_seed)
    _check_train_count(split, cfg)
    return split


def check_data_source(cfg) -> None:
    """The files cfg's data set is read from are there, its images unread: what every run of a
    sweep shares, checked once (a DataError naming what is missing). A MedMNIST file that is not
    here is downloaded by the first run, so only one given as --data-file is checked."""
    ds = cfg.dataset
    _check_source_options(cfg)
    if ds == "npz" or (ds in MEDMNIST and cfg.data_file):
        if not cfg.data_file:
            raise DataError("--dataset npz needs --data-file PATH.npz")
        if not Path(cfg.data_file).is_file():
            raise DataError(f"data file not found: {cfg.data_file}")
    elif ds in ("cifar10", "cifar100"):
        check_cifar_source(cfg)
    elif ds == "folder":
        training_class_folders(Path(cfg.data_root))


def _check_source_options(cfg) -> None:
    _refuse_unused_sources(cfg)
    if cfg.dataset != "folder" and cfg.reads_data_root() and Path(cfg.data_root).is_file():  # not ".../x.npz/x.npz"
        raise DataError(f"--data-root {cfg.data_root} is a file; give the folder it is in, or the file itself "
                        "as --data-file")


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
    elif split.seeded:
        fix = "add normal images, or lower --test-fraction / --val-fraction"
    else:
        fix = "add normal images to the training split, or choose another --normal-class"
    raise DataError(f"{split.name}: only {n} normal training image(s); at least {MIN_TRAIN_IMAGES} are needed "
                    f"(the S_LH scorer fits a Gaussian to their features): {fix}")


def _refuse_unused_sources(cfg) -> None:
    """--resolution, --data-file and --skip-bad-files where the data set uses none: refused, not ignored."""
    if cfg.resolution is not None and cfg.dataset not in MEDMNIST:
        raise InapplicableOption(f"--resolution picks a MedMNIST file ({', '.join(MEDMNIST)}); it does not apply "
                                 f"to --dataset {cfg.dataset} (--image-size resizes any data set)", ("resolution",))
    if cfg.data_file and cfg.dataset == "folder":
        raise InapplicableOption("--data-file does not apply to --dataset folder: give the image folder as "
                                 "--data-root", ("data_file",))
    if cfg.data_file and cfg.dataset == "digits":
        raise InapplicableOption("--data-file does not apply to --dataset digits (scikit-learn's digits, read "
                                 "from no file)", ("data_file",))
    if cfg.skip_bad_files and cfg.dataset != "folder":
        raise InapplicableOption(f"--skip-bad-files leaves out unreadable image files of --dataset folder; --dataset "
                                 f"{cfg.dataset} has no image files to leave out", ("skip_bad_files",))


# --------------------------------------------------------------------------- class tables

def normal_class_labels(cfg) -> tuple | None:
    """The label values cfg's --normal-class means (its data set's default when unset), so that two
    spellings of one class ("8", "08", 8, none for the default; a name or its index) compare equal; None where they
    cannot be told without the data (a folder's names are exact) or do not resolve."""
    from .loaders.digits import DIGITS_DEFAULT_CLASS

    defaults = {"digits": [DIGITS_DEFAULT_CLASS], **{k: v[0] for k, v in MEDMNIST.items()}}
    requested = cfg.normal_class or defaults.get(cfg.dataset)
    if cfg.dataset == "folder" or requested is None:
        return None
    try:
        return tuple(sorted(resolve_classes(requested, class_names(cfg), cfg.dataset)))
    except (DataError, OSError, ValueError, KeyError):
        return None


def class_names(cfg) -> dict | None:
    """{label: name} that cfg's --normal-class is resolved against (resolve_classes), read without
    the images; None for folder data, whose classes are its class folders' names, matched exactly."""
    ds = cfg.dataset
    if ds == "folder":
        return None
    if ds == "digits":
        return dict(DIGIT_NAMES)
    if ds == "cifar10":
        return dict(enumerate(CIFAR10_CLASSES))
    if ds == "cifar100":
        return dict(enumerate(CIFAR100_SUPERCLASSES))
    if ds in MEDMNIST:
        return dict(MEDMNIST[ds][1])
    if not cfg.data_file:
        raise DataError("--dataset npz needs --data-file PATH.npz")
    with np.load(cfg.data_file, allow_pickle=False) as z:
        labels = [np.ravel(z[k]) for k in ("labels", "train_labels", "val_labels", "test_labels") if k in z]
        return _npz_class_table(np.concatenate(labels), z, cfg.data_file)
