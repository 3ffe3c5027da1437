"""scikit-learn's 8x8 digits (--dataset digits): the default normal digit and image size, and the loader
of its seeded per-class split (`load_digits_split`)."""
from __future__ import annotations

import numpy as np

from ..split import OneClassSplit
from .common import InapplicableOption, held_out_count, one_class_split, resolve_classes

DIGITS_DEFAULT_CLASS = "8"  # the digit raw-pixel nearest neighbour finds hardest (AUROC ~0.98, not 1.0)
DIGITS_DEFAULT_SIZE = 16
DIGIT_NAMES = {i: str(i) for i in range(10)}


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
    normal = resolve_classes(cfg.normal_class or [DIGITS_DEFAULT_CLASS], DIGIT_NAMES, "digits")
    rng = np.random.default_rng(cfg.split_seed)
    val_fraction = cfg.split_val_fraction()
    idx = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(cfg.test_fraction * len(members)))
        n_val = held_out_count(val_fraction, len(members))
        for part, sel in zip(("test", "val", "train"), np.split(members, [n_test, n_test + n_val])):
            idx[part].append(sel)
    parts = {s: (images[np.sort(np.concatenate(v))], labels[np.sort(np.concatenate(v))]) for s, v in idx.items()}
    size = cfg.image_size or DIGITS_DEFAULT_SIZE
    return one_class_split("digits", parts, normal, DIGIT_NAMES, size,
                           {"source": "sklearn.datasets.load_digits", "split": "seeded per class",
                            "split_seed": cfg.split_seed})
