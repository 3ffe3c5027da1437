"""MedMNIST (breast, pneumonia, oct, derma, blood): the class tables, where the official file is expected
(`medmnist_path`), its download through the optional `medmnist` package, the loader of the official
train/val/test split (`load_medmnist`) and the checks that the file is the flag's MedMNIST file."""
from __future__ import annotations

from pathlib import Path

from ..decode import DataError
from ..split import OneClassSplit
from .common import (available_classes, check_has_images, check_lengths, npz_parts, npz_row_names, one_class_split,
                     read_npz, refuse_split_options, resolve_classes)


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


def medmnist_path(cfg) -> Path:
    """Where the official file is expected: <data_root>/<flag>mnist[_<res>].npz (or cfg.data_file)."""
    if cfg.data_file:
        return Path(cfg.data_file)
    res = cfg.resolution or 28
    if res not in MEDMNIST_RESOLUTIONS:
        raise DataError(f"--resolution must be one of {MEDMNIST_RESOLUTIONS}, got {res}")
    suffix = "" if res == 28 else f"_{res}"
    return Path(cfg.data_root) / f"{cfg.dataset}mnist{suffix}.npz"


def _medmnist_download(flag: str, path: Path, res: int) -> str:
    """Fetch the official file through the optional `medmnist` package; why that failed ("" if it
    did not), for the missing-file error."""
    try:
        import medmnist  # optional dependency
    except ImportError:
        return ""
    try:
        info = medmnist.INFO[f"{flag}mnist"]
        cls = getattr(medmnist, info["python_class"])
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {} if res == 28 else {"size": res}
        cls(split="train", download=True, root=str(path.parent), **kwargs)
    except Exception as exc:  # no network, a read-only folder, a bad checksum, an old version without `size`
        return f"; medmnist could not download it ({type(exc).__name__}: {exc})"
    return "" if path.is_file() else f"; medmnist downloaded into {path.parent} but wrote no {path.name}"


def load_medmnist(cfg) -> OneClassSplit:
    flag = cfg.dataset
    default_normal, names = MEDMNIST[flag]
    if cfg.normal_class:
        normal = resolve_classes(cfg.normal_class, names, flag)
    elif default_normal is None:
        raise DataError(f"--dataset {flag} needs --normal-class; available: {available_classes(names)}")
    else:
        normal = default_normal
    refuse_split_options(cfg, f"{flag}mnist has its official train/val/test split")
    path = medmnist_path(cfg)
    res = cfg.resolution or 28
    failed = _medmnist_download(flag, path, res) if not path.is_file() and not cfg.data_file else ""
    hint = ("; put the official MedMNIST file there (https://zenodo.org/records/10519652) or "
            "`pip install medmnist` with network access to download it" + failed)
    z = read_npz(path, tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")), hint)
    parts = npz_parts(z, ("train", "val", "test"), path)
    _check_medmnist_file(cfg, path, parts)
    sources = {s: npz_row_names(z, f"{s}_", len(y), path) for s, (_, y) in parts.items()}  # for the score files
    return one_class_split(f"{flag}mnist", parts, normal, names, cfg.image_size,
                           {"source": str(path), "split": "official", "resolution": int(parts["train"][0].shape[1])},
                           sources=sources)


def _check_medmnist_file(cfg, path: Path, parts: dict) -> None:
    """The file is the flag's MedMNIST file, as far as can be told (another data set's file, e.g. the
    breast file given for pneumonia, would otherwise train as if it were): its images, the resolution
    asked for (--resolution, or 28 px for the default file name), labels within the flag's classes, and
    not another flag's official split sizes."""
    flag = cfg.dataset
    what = f"{flag}mnist"
    other = " (other data: --dataset npz)"
    check_has_images(parts, path)
    for s, (x, y) in parts.items():
        check_lengths(x, y, f"{path}: {s} split")
    h, w, c = parts["train"][0].shape[1:]
    if c != MEDMNIST_CHANNELS[flag]:
        raise DataError(f"{path}: its images have {c} channel(s), {what}'s have {MEDMNIST_CHANNELS[flag]}: "
                        f"is it the {what} file?{other}")
    res = cfg.resolution or (None if cfg.data_file else 28)  # a --data-file of any MedMNIST resolution
    if res is not None and (h, w) != (res, res):
        if cfg.resolution:
            name = f"{what}.npz" if res == 28 else f"{what}_{res}.npz"  # MedMNIST's names (medmnist_path)
            fix = (f"give the {res} px file ({name}), or leave --resolution out to train at the file's "
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
