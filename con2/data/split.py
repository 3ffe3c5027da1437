"""The one-class split every data set is turned into (METHOD section 8)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class OneClassSplit:
    """Images are uint8 [N, H, W, C] with C in {1, 3}; test_labels: 1 = anomaly, 0 = normal.

    train: normal samples of the train split only. val: normal samples of the val split
    (threshold calibration; may be empty). test: the whole test split.
    train_files / test_files: source file paths for folder data sets (None for array data sets; a
    folder's val files are in meta["val_files"], an npz's rows in `sources`).
    A part is a numpy array, or for an image folder larger than memory a con2.data.images.FolderImages
    (same dtype / shape / indexing, decoded on access; see `in_memory`).
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    val: np.ndarray
    normal_classes: tuple = ()
    class_names: dict = field(default_factory=dict)
    test_classes: np.ndarray | None = None  # original class label of each test image
    train_classes: np.ndarray | None = None  # and of each train / val image (several normal classes)
    val_classes: np.ndarray | None = None
    train_files: list | None = None
    test_files: list | None = None
    meta: dict = field(default_factory=dict)
    # {part: [where each image came from]} for array data that names its rows (an npz: "file.npz:name"
    # or "file.npz:images[row]"); folder data names its files in train_files / test_files instead
    sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("train", "test", "val"):
            arr = getattr(self, part)
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
                raise ValueError(
                    f"{self.name}: {part} images must be uint8 [N, H, W, C] with C in (1, 3), "
                    f"got {arr.dtype} {arr.shape}"
                )
        if len(self.train) == 0:
            raise ValueError(f"{self.name}: the normal class has no training samples")
        if len(self.test_labels) != len(self.test):
            raise ValueError(f"{self.name}: {len(self.test)} test images but {len(self.test_labels)} labels")

    def part(self, name: str) -> np.ndarray:
        """The images of part "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split part {name!r}; choose train, val or test")
        return getattr(self, name)

    @property
    def in_memory(self) -> bool:
        """Every part is decoded in memory (False: an image folder decoded on access)."""
        return all(isinstance(self.part(p), np.ndarray) for p in ("train", "val", "test"))

    @property
    def channels(self) -> int:
        return int(self.train.shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.train.shape[1])

    @property
    def seeded(self) -> bool:
        """con2 drew this split with --split-seed ("seeded", "seeded per class"), so --test-fraction
        and --val-fraction shape it; data with its own split ("official", "given") ignores them."""
        return str(self.meta.get("split", "")).startswith("seeded")

    @property
    def file_decoding(self) -> tuple[tuple[int, int], int | None]:
        """How a source that decodes the train files again (DALI, file-reading workers) makes a
        train image as the loader did: resize to (H, W), then the centred square of this side
        (None: no crop; con2.data.datasets records both when it crops)."""
        h, w = self.meta.get("pre_crop_size", self.train.shape[1:3])
        return (int(h), int(w)), self.meta.get("center_crop")

    def how_to_get_val_normals(self) -> str:
        """How to get val normals to calibrate a threshold on, for a split that has none: a seeded
        split holds some out with --val-fraction; data with its own split refuses that option."""
        return ("retrain with --val-fraction F (e.g. 0.1) to hold out val normals for it" if self.seeded else
                "retrain on data with val normal images (its own split has none, so --val-fraction cannot apply)")

    def summary(self) -> str:
        n_anom, notes = int(self.test_labels.sum()), self.notes()
        normal = ", ".join(repr(str(self.class_names.get(c, c))) for c in self.normal_classes)
        return (
            f"{self.name}"
            + (f" (normal: {normal}; every other class is anomalous)" if normal and not self.meta.get("calibration_only")
               else "")
            + f": {len(self.train)} normal train, {len(self.val)} normal val, "
            f"{len(self.test)} test ({len(self.test) - n_anom} normal / {n_anom} anomalous), "
            f"{self.train.shape[2]}x{self.train.shape[1]}x{self.channels}"
            + self._resized()
            + "".join(f"; {note}" for note in notes if note.startswith("skipped"))
            + ("".join(f"; {p} decoded from the files on access" for p in ("train", "val", "test")
                       if not isinstance(self.part(p), np.ndarray)))
            + "".join(f"; {note}" for note in notes if note.startswith("note:"))
        )

    def notes(self) -> list[str]:
        """What the summary says that a user must see even with --quiet: files left out, a test
        split that cannot be evaluated."""
        n_anom = int(self.test_labels.sum())
        notes = []
        if self.meta.get("skipped_files"):
            notes.append(f"skipped {self.meta['skipped_files']} unreadable file(s), first: "
                         f"{self.meta.get('skipped_first') or self.meta['skipped_paths'][0]}")
        if not (0 < n_anom < len(self.test) or self.meta.get("calibration_only")):
            notes.append("note: the test split needs normal and anomalous images for `con2 evaluate`")
        return notes

    def _resized(self) -> str:
        """How an array data set's images were resized to the run's (an upscale invents pixels)."""
        source, pre_crop = self.meta.get("source_size"), self.meta.get("pre_crop_size")
        made = pre_crop or list(self.train.shape[1:3])
        if not source or list(source) == list(made):
            return ""
        how = "upscaled" if made[0] * made[1] > source[0] * source[1] else "downscaled"
        crop = f", then centre-cropped to {self.train.shape[2]}x{self.train.shape[1]}" if pre_crop else ""
        return f" ({how} from {source[1]}x{source[0]} to {made[1]}x{made[0]}{crop})"


def to_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, C] / [N, H, W] numpy (the OneClassSplit layout) -> uint8 [N, C, H, W] tensor."""
    if isinstance(images, torch.Tensor):
        return images
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if not arr.flags.writeable:  # a memory map opened read-only: torch warns, and would share its memory
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
