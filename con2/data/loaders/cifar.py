"""CIFAR-10 and CIFAR-100: the class tables (CIFAR-100 by its 20 superclasses, with the standard fine ->
coarse label table), the arrays from an npz or torchvision's files, the loader of the official
train/test split (`load_cifar`) and the checks that the arrays look like CIFAR."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..decode import DataError
from ..split import OneClassSplit
from .common import (available_classes, check_has_images, check_lengths, npz_parts, npz_row_names, one_class_split,
                     read_npz, refuse_split_options, resolve_classes)


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


def _cifar_paths(cfg, which: str) -> tuple[Path, Path]:
    """(the npz, torchvision's folder) a CIFAR data set is read from: --data-file, else under --data-root."""
    npz = Path(cfg.data_file) if cfg.data_file else Path(cfg.data_root) / f"{which}.npz"
    return npz, Path(cfg.data_root) / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")


def check_cifar_source(cfg) -> None:
    """The npz or torchvision's files _cifar_arrays reads are there (DataError otherwise), unread."""
    npz, folder = _cifar_paths(cfg, cfg.dataset)
    if cfg.data_file and not npz.is_file():
        raise DataError(f"data file not found: {npz}")
    if not cfg.data_file and not npz.is_file() and not folder.is_dir():
        raise DataError(f"{cfg.dataset} not found: expected {npz} or torchvision's {folder}")


def _cifar_arrays(cfg, which: str) -> tuple[dict, str]:
    """(train/test images and labels, source) from an npz if one is there, else torchvision's files."""
    npz, folder = _cifar_paths(cfg, which)
    if cfg.data_file or npz.is_file():
        z = read_npz(npz, ("train_images", "train_labels", "test_images", "test_labels"))
        return z, str(npz)
    import torchvision

    ds_cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
    try:
        tr = ds_cls(cfg.data_root, train=True, download=False)
        te = ds_cls(cfg.data_root, train=False, download=False)
    except RuntimeError as e:
        raise DataError(
            f"{which} not found: expected {npz} or torchvision's {folder} ({e}); "
            f"download with `python -c \"import torchvision; torchvision.datasets."
            f"{ds_cls.__name__}('{cfg.data_root}', download=True)\"`") from e
    return {"train_images": tr.data, "train_labels": np.array(tr.targets),
            "test_images": te.data, "test_labels": np.array(te.targets)}, f"torchvision:{cfg.data_root}"


def load_cifar(cfg) -> OneClassSplit:
    """CIFAR-10: one class normal (index or name). CIFAR-100: one of the 20 superclasses normal."""
    which = cfg.dataset
    refuse_split_options(cfg, f"{which} has its official train/test split")
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
        raise DataError(f"--dataset {which} needs --normal-class; available: {available_classes(names)}")
    normal = resolve_classes(cfg.normal_class, names, which)
    parts = npz_parts(z, ("train", "test"), source)
    _check_cifar_file(which, source, parts, 100 if fine else len(names))
    if fine:
        parts = {s: (x, CIFAR100_FINE_TO_COARSE[y]) for s, (x, y) in parts.items()}
    # an npz's rows (its own order, not necessarily the official files'): named for the score files
    sources = ({s: npz_row_names(z, f"{s}_", len(y), Path(source)) for s, (_, y) in parts.items()}
               if not source.startswith("torchvision:") else None)
    return one_class_split(which, parts, normal, names, cfg.image_size, {"source": source, "split": "official"},
                           sources=sources)


def _check_cifar_file(which: str, source: str, parts: dict, n_labels: int) -> None:
    """The arrays look like CIFAR (another data set's npz, e.g. a MedMNIST file given as --data-file,
    would otherwise train as the class asked for): 32x32 RGB images and labels 0..n_labels-1."""
    other = " (other data: --dataset npz)"
    check_has_images(parts, source)
    for s, (x, y) in parts.items():
        check_lengths(x, y, f"{source}: {s} split")
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
    if which == "cifar100" and n_labels == 100 and labels.max() < len(CIFAR100_SUPERCLASSES):
        # superclass labels would be read as fine labels 0..19 and mapped to superclasses again
        raise DataError(f"{source}: its labels are all 0..{labels.max()}, as CIFAR-100's 20 superclass labels, not "
                        f"its fine labels 0..99: store superclass labels as train_coarse_labels / test_coarse_labels")
