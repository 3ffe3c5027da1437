"""The paper's table rows (METHOD section 9) as runnable configurations."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    name: str
    dataset: str
    context: str
    paper: float | None  # AUROC % (S_NND) reported by the paper
    objective: str = "con2"
    resolution: int | None = None
    image_size: int | None = None   # resize to this square, then
    center_crop: int | None = None  # keep the centred square (paper: 256 -> 224)
    data_file: str | None = None
    normal_class: tuple[str, ...] | None = None
    n_train: int | None = None  # seeded npz split: train normals (BR35H: 1000)
    extra: dict = field(default_factory=dict)  # the paper's other numbers, for the report
    paper_lh: float | None = None
    scorer: str = "nnd"  # the scorer the paper's number is for


def _rows() -> list[Row]:
    rows = []
    for res in (28, 64):
        for ctx, paper in (("invert", 81.7), ("flip", 81.7), ("equalize", 72.2)):
            rows.append(Row(f"breast{res}-{ctx}", "breast", ctx, paper, resolution=res if res != 28 else None))
    # the paper's own pre-processing (METHOD section 6): resize 256, centre-crop 224, ImageNet stem,
    # from the 28 px file (breast224-*) and from the 64 px one (breast224from64-*; the paper's source
    # resolution is not stated, and MedMNIST+'s 224 px file could not be obtained here)
    for ctx, paper in (("invert", 81.7), ("flip", 81.7), ("equalize", 72.2)):
        rows.append(Row(f"breast224-{ctx}", "breast", ctx, paper, image_size=256, center_crop=224))
        rows.append(Row(f"breast224from64-{ctx}", "breast", ctx, paper, resolution=64, image_size=256,
                        center_crop=224))
    # the paper's Pneumonia set is the Kaggle chest X-ray release of Kermany et al. (5,863 images at
    # full resolution, 1,341 train normals); PneumoniaMNIST is its 28 px MedMNIST version with the
    # train split re-cut (1,214 train normals) and the same 624-image test split (234 normal, 390 pneumonia)
    for ctx, paper in (("invert", 91.1), ("flip", 92.8), ("equalize", 93.9)):
        rows.append(Row(f"pneumonia-{ctx}", "pneumonia", ctx, paper))
        rows.append(Row(f"pneumonia224-{ctx}", "pneumonia", ctx, paper, image_size=256, center_crop=224))
    rows.append(Row("br35h-invert", "npz", "invert", 100.0, data_file="br35h_64.npz", normal_class=("0",),
                    n_train=1000))
    # the paper's pre-processing (resize 256, centre-crop 224) from the derived 64 px file
    rows.append(Row("br35h224-invert", "npz", "invert", 100.0, data_file="br35h_64.npz", normal_class=("0",),
                    image_size=256, center_crop=224, n_train=1000))
    for ctx, paper, lh in (("flip", 95.3, 94.7), ("invert", 94.6, 93.7)):
        for c in range(10):
            rows.append(Row(f"cifar10-{ctx}-c{c}", "cifar10", ctx, None, data_file=f"cifar10_c{c}.npz",
                            normal_class=(str(c),), extra={"paper_mean": paper, "paper_mean_lh": lh}))
    # baselines and ablations (paper values: SimCLR / SSD on the medical sets)
    for ds, simclr, ssd in (("breast", 74.7, 44.6), ("pneumonia", 91.0, 90.9)):
        rows.append(Row(f"{ds}-simclr-nnd", ds, "invert", simclr, objective="simclr"))
        rows.append(Row(f"{ds}-simclr-lh", ds, "invert", ssd, objective="simclr", scorer="lh"))
        rows.append(Row(f"{ds}-context-only", ds, "invert", None, objective="context"))
        rows.append(Row(f"{ds}-content-only", ds, "invert", None, objective="content"))
    return rows


ROWS = {r.name: r for r in _rows()}


def row_config(row: Row, data_root: str, **fields):
    """The TrainConfig of a row's data and objective (seed, schedule and the rest from `fields`)."""
    from con2.config import TrainConfig

    return TrainConfig(dataset=row.dataset, context=row.context, objective=row.objective, data_root=data_root,
                       resolution=row.resolution, image_size=row.image_size, center_crop=row.center_crop,
                       normal_class=list(row.normal_class) if row.normal_class else None,
                       data_file=str(Path(data_root) / row.data_file) if row.data_file else None,
                       n_train=row.n_train, **fields)
