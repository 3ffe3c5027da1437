"""The generic npz file (--dataset npz): train_/test_ (optionally val_) images and labels, or images and
labels only (then the seeded split of the normals), and its class table (`_npz_class_table`: the
file's `class_names`, else the label values)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..decode import DataError
from ..split import OneClassSplit
from .common import (available_classes, check_has_images, check_lengths, label_vector, nhwc_images, npz_parts,
                     npz_row_names, one_class_split, read_npz, refuse_split_options, resolve_classes, seeded_normal_split)


def load_npz(cfg) -> OneClassSplit:
    """An array file with train_/test_ (optionally val_) images+labels, or images+labels only.

    With images/labels only the seeded split of con2.data.datasets' docstring is used. Normal classes are
    given by label value; optional `class_names` (str array) names the labels in order.
    """
    if not cfg.data_file:
        raise DataError("--dataset npz needs --data-file PATH.npz")
    path = Path(cfg.data_file)
    z = read_npz(path, ())
    if all(k in z for k in ("train_images", "train_labels", "test_images", "test_labels")):
        refuse_split_options(cfg, f"{path} has its own split (train_images / test_images)")
        if ("val_images" in z) != ("val_labels" in z):
            have, lack = ("val_images", "val_labels") if "val_images" in z else ("val_labels", "val_images")
            raise DataError(f"{path}: has {have} but no {lack}")
        parts = npz_parts(z, [s for s in ("train", "val", "test") if f"{s}_images" in z], path)
        for s, (x, y) in parts.items():
            check_lengths(x, y, f"{path}: {s} split")
        check_has_images(parts, path)
        all_labels = np.concatenate([y for _, y in parts.values()])
        split_kind = "given"
    elif "images" in z and "labels" in z:
        images, labels = nhwc_images(z["images"], f"{path}:images"), label_vector(z["labels"], f"{path}:labels")
        check_lengths(images, labels, str(path))
        check_has_images({"all": (images, labels)}, path)
        all_labels = labels
        split_kind = "seeded"
    else:
        raise DataError(f"{path}: needs keys train_images/train_labels/test_images/test_labels or images/labels "
                        f"(has: {', '.join(sorted(z)) or 'none'})")
    names = _npz_class_table(all_labels, z, path)
    if not cfg.normal_class:
        raise DataError(f"--dataset npz needs --normal-class; available: {available_classes(names)}")
    normal = resolve_classes(cfg.normal_class, names, path.name)
    meta = {"source": str(path), "split": split_kind}
    if split_kind == "seeded":
        idx = seeded_normal_split(labels, normal, cfg)
        parts = {s: (images[i], labels[i]) for s, i in idx.items()}
        meta.update(split_seed=cfg.split_seed, test_fraction=cfg.test_fraction,
                    n_train=cfg.n_train, val_fraction=cfg.split_val_fraction())
        row_names = npz_row_names(z, "", len(labels), path)
        sources = {s: [row_names[j] for j in i] for s, i in idx.items()}
    else:
        sources = {s: npz_row_names(z, f"{s}_", len(y), path) for s, (_, y) in parts.items()}
    # MedMNIST, CIFAR and digits are square: only an npz's images may need --resize shorter-side
    return one_class_split(path.stem, parts, normal, names, cfg.image_size, meta, cfg.resize == "shorter-side",
                           sources)


def _npz_class_table(labels: np.ndarray, z, path) -> dict:
    """{label: name} of an npz file's classes: its `class_names` where given (class_names[i] names
    label i, so it must cover every label: 1-based labels would shift every name by one), else the label."""
    table = {v: str(v) for v in sorted(int(v) for v in np.unique(labels))}
    if "class_names" not in z:
        return table
    given = z["class_names"]
    if given.ndim != 1:
        raise DataError(f"{path}:class_names must be one name per class (1-D), got shape {given.shape}")
    # names saved as bytes (dtype S) are text, not "b'cat'"
    given = [s.decode(errors="replace") if isinstance(s, bytes) else str(s) for s in given.tolist()]
    uncovered = [v for v in table if not 0 <= v < len(given)]
    if uncovered:
        raise DataError(f"{path}: class_names names {len(given)} classes (labels 0..{len(given) - 1}), but the "
                        f"labels also hold {', '.join(map(str, uncovered[:5]))}; class_names[i] names label i")
    names = {v: given[v] for v in table}
    twice = sorted(n for n, k in Counter(names.values()).items() if k > 1)
    if twice:
        raise DataError(f"{path}: class_names gives {', '.join(map(repr, twice))} to more than one label")
    return names
