"""Image folders (--dataset folder): <root>/<class>/... or <root>/{train,val,test}/<class>/... The listing
of class folders and header scan (`_list_images`, `_read_header`, `_check_sizes`), the memory budget
that decides which parts are decoded into memory and which on access (`memory_budget`, `_parts_held`),
the near-black image warning (`_warn_if_dark`) and the loader (`load_folder`)."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..decode import (IMAGE_NAMES, IMAGE_SUFFIXES, NEAR_BLACK, DataError, is_image_file, list_images, map_files,
                      not_a_file, read_header)
from ..images import FolderImages
from ..split import OneClassSplit
from .common import one_class_split, refuse_split_options, seeded_normal_split


def _class_dirs(root: Path) -> dict[str, list[Path]]:
    return {d.name: _list_images(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}


SPLIT_FOLDERS = ("train", "val", "test")


def _has_split_tree(root: Path) -> bool:
    """<root>/train/<class>/... and <root>/test/<class>/... (val/ optional): a split of its own."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def training_class_folders(root: Path) -> list[str]:
    """The classes of an image folder that hold training images (under train/ when it has its own
    split): what a one-class sweep's `--classes all` trains, one normal class at a time."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    where = root / "train" if _has_split_tree(root) else root
    classes = [c for c, files in _class_dirs(where).items() if files]
    if not classes:
        raise DataError(f"{where}: no class sub-folders with images")
    return classes


def _warn_of_unread_entries(root: Path) -> None:
    """A split tree reads <root>/{train,val,test}/<class>/...: name what it leaves out (a valid/ folder
    holding the val normals, images loose in test/), which would otherwise vanish without a word."""
    others = sorted(d.name + "/" for d in root.iterdir()
                    if d.is_dir() and d.name not in SPLIT_FOLDERS and not d.name.startswith("."))
    loose = [f"{s}/{p.name}" for s in SPLIT_FOLDERS if (root / s).is_dir()
             for p in sorted((root / s).iterdir()) if p.is_file() and is_image_file(p)]
    if others:
        warnings.warn(f"{root}: {', '.join(others)} not read: the split folders are train/, val/ and test/ "
                      "(rename a validation folder to val/ to calibrate on it)")
    if loose:
        warnings.warn(f"{root}: {len(loose)} image(s) directly in a split folder are not read ({', '.join(loose[:3])}"
                      f"{', ...' if len(loose) > 3 else ''}): images go in class folders, as in test/<class>/")


def _list_images(folder: Path) -> list[Path]:
    """list_images, plus image-named entries that are not files (symlinks whose target is gone,
    FIFOs): list_images passes them over, but they are images the folder lacks, so like any
    unreadable file they are named, or with --skip-bad-files skipped and counted (_read_header)."""
    files = list_images(folder)
    listed = set(files)
    odd = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p not in listed
           and not p.is_file() and not p.is_dir()
           and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files + odd) if odd else files


def _read_header(path: Path):
    """read_header of a file; an entry that is not one is named as what it is (opening a FIFO would
    wait for a writer forever)."""
    if not path.is_file():
        raise DataError(f"{path}: {not_a_file(path)}")
    return read_header(path, value_kind=True)


def _check_value_kinds(header: dict) -> str | None:
    """32-bit integer and float images are read by their value range (read_header's value_kind): a folder
    whose images are read in different ways (maxima of 240 and 260: as-is and as 16-bit) would hold
    images of unrelated brightness, so it is refused, naming one file of each way."""
    first = {}
    for f, h in header.items():
        if h[2] is not None:
            first.setdefault(h[2], f)
    if len(first) > 1:
        ways = "; ".join(f"{f} as {kind}" for kind, f in first.items())
        raise DataError(f"the folder's 32-bit integer or float images are read in different ways by their value "
                        f"range ({ways}), so their brightness would not compare; convert them to 8- or 16-bit "
                        "images of one scale")
    return next(iter(first), None)  # how its 32-bit images are read (the DALI pipeline reads them otherwise)


def _path_of(skipped: tuple) -> str:
    return str(skipped[0])


def _why_skipped(skipped: list[tuple]) -> str:
    """The first skipped file (in name order) with why: map_files' reason names the file first."""
    path, why = min(skipped, key=_path_of)
    return why if str(path) in why else f"{path}: {why}"


def _check_sizes(sizes: list[tuple[int, int]], files: list) -> tuple[int, int]:
    """The common (H, W) of images of these (H, W) sizes; all must share one (else --image-size is needed)."""
    h, w = tuple(sizes[0]) if sizes else (1, 1)
    for (hi, wi), f in zip(sizes, files):
        if (hi, wi) != (h, w):
            raise DataError(f"images differ in size ({files[0]} is {w}x{h}, {f} is {wi}x{hi}); "
                            f"pass --image-size to resize them all")
    return h, w


def _parts_held(pipeline: str, counts: dict, image_bytes: int) -> set:
    """The parts of a folder decoded into memory: train, val and test in turn, each while the held
    parts fit memory_budget() together, except train, which --pipeline tensor always holds (it trains
    from memory) and --pipeline dali never does (DALI decodes the files itself). The others are
    decoded on access."""
    budget, used, held = memory_budget(), 0, set()
    for part in ("train", "val", "test"):
        if part not in counts:
            continue
        size = counts[part] * image_bytes
        if part == "train" and pipeline in ("tensor", "dali"):
            take = pipeline == "tensor"
        else:
            take = used + size <= budget
        if take:
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
    if brightest < NEAR_BLACK:
        n_held, n_sampled = sum(len(a) for a in held), len(sampled)
        n_lazy = sum(len(imgs) for imgs in on_access)
        which = ("every image is" if not sampled else
                 f"every image checked ({n_held} held in memory, {n_sampled} of {n_lazy} decoded on access) is")
        warnings.warn(f"{root}: {which} darker than {NEAR_BLACK} / 255 after decoding (brightest pixel {brightest}); "
                      f"12-bit data stored in 16-bit files is read as 16-bit: rescale such files first")


def _class_folders(cfg, root: Path) -> tuple[bool, dict, list[str], tuple]:
    """(whether `root` has its own train/ and test/, {part: {class: files}}, the sorted class names,
    the normal classes' indices in them), every problem of the tree and of --normal-class named."""
    if not root.is_dir():
        raise DataError(f"--data-root {root} is a file, not a folder of class folders" if root.exists()
                        else f"image folder not found: {root}")
    has_tree = _has_split_tree(root)
    if (root / "train").is_dir() != (root / "test").is_dir():
        have, lack = ("train", "test") if (root / "train").is_dir() else ("test", "train")
        raise DataError(f"{root} has {have}/ but no {lack}/: give both (each with class folders), "
                        f"or neither for a seeded split of class folders")
    if has_tree:
        refuse_split_options(cfg, f"{root} has its own split (train/ and test/ folders)")
        trees = {s: _class_dirs(root / s) for s in SPLIT_FOLDERS if (root / s).is_dir()}
        _warn_of_unread_entries(root)
    else:
        trees = {"all": _class_dirs(root)}
    class_list = sorted({c for t in trees.values() for c in t})
    if not class_list:
        raise DataError(f"{root}: no class sub-folders found")
    by_case = {}
    for c in class_list:
        by_case.setdefault(c.lower(), []).append(c)
    for same in (v for v in by_case.values() if len(v) > 1):  # train/normal beside test/Normal
        warnings.warn(f"{root}: class folders {' and '.join(map(repr, same))} differ only in case, so they are "
                      "different classes (one normal, the other anomalous); give them one name")
    if not cfg.normal_class:
        raise DataError(f"--dataset folder needs --normal-class (one or more class folder names); available: "
                        f"{', '.join(class_list)}")
    unknown = [c for c in cfg.normal_class if c not in class_list]
    if unknown:
        raise DataError(f"{root}: no class folder {unknown[0]!r}; available: {', '.join(class_list)}")
    normal = tuple(sorted(class_list.index(c) for c in cfg.normal_class))
    # a normal class without images would leave training to the others without a word
    normal_tree, where = (trees["train"], root / "train") if has_tree else (trees["all"], root)
    absent = [c for c in cfg.normal_class if c not in normal_tree]
    if absent:  # a class of test/ (or val/) only: nothing of it to train on
        raise DataError(f"{where} has no class folder {absent[0]!r} (it is only under "
                        f"{', '.join(s + '/' for s in trees if absent[0] in trees[s])}); classes to train on: "
                        f"{', '.join(sorted(normal_tree)) or 'none'}")
    empty = [c for c in cfg.normal_class if not normal_tree.get(c)]
    if empty:
        raise DataError(f"{where}: normal class folder {empty[0]!r} holds no images ({IMAGE_NAMES}); "
                        "give it some, or leave it out of --normal-class")
    return has_tree, trees, class_list, normal


def _listed_parts(cfg, has_tree: bool, trees: dict, class_list: list[str], normal: tuple) -> dict:
    """{part: (files, labels)} before any decoding, so that one pass serves all parts: the folders'
    own train / val / test, or the seeded split of the class folders."""
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
        idx = seeded_normal_split(labels, normal, cfg)
        listed = {s: ([files[i] for i in ix], labels[ix]) for s, ix in idx.items()}
    return listed


def load_folder(cfg) -> OneClassSplit:
    """An image-folder tree: <root>/<class>/... or <root>/{train,val,test}/<class>/...

    cfg.normal_class names one or more class folders. Without train/ and test/ the seeded split of
    con2.data.datasets' docstring is used (normals split, the other classes all to test). Images are decoded
    with Pillow (DICOM with pydicom, con2.data.decode): all grayscale -> 1 channel, any colour image ->
    every image RGB. With cfg.image_size every image is resized to that square (bicubic, aspect not kept, or
    with --resize shorter-side scaled on the shorter side and centre-cropped); without it all images must
    already share one size. Unreadable files raise a DataError naming the file, or with
    cfg.skip_bad_files are dropped and counted in meta["skipped_files"].

    Each part (train, val, test) is decoded into memory once when it fits memory_budget()
    (_parts_held); otherwise it is a FolderImages that decodes on access, so a folder larger than
    memory still trains (DALI or worker processes) and scores (chunk by chunk).
    """
    root = Path(cfg.data_root)
    has_tree, trees, class_list, normal = _class_folders(cfg, root)
    listed = _listed_parts(cfg, has_tree, trees, class_list, normal)

    # Headers first (cheap): they size the decoded parts, which decides which are held in memory.
    all_files = [f for s in listed for f in listed[s][0]]
    headers, skipped = map_files(_read_header, all_files, cfg.skip_bad_files, "reading")
    header = {f: h for f, h in zip(all_files, headers) if h is not None}
    value_kind = _check_value_kinds(header)
    channels = 3 if any(h[0] == 3 for h in header.values()) else 1
    hw = ((cfg.image_size, cfg.image_size) if cfg.image_size
          else _check_sizes([h[1] for h in header.values()], [str(f) for f in header]))
    counts = {s: sum(f in header for f in files) for s, (files, _) in listed.items()}
    held = _parts_held(cfg.pipeline, counts, hw[0] * hw[1] * channels)

    # per part: a FolderImages of the readable files, decoded into memory when held
    parts, part_files = {}, {}
    for s, (files, labels) in listed.items():
        ok = [i for i, f in enumerate(files) if f in header]
        images = FolderImages([files[i] for i in ok], hw, channels, resize=bool(cfg.image_size),
                              keep_aspect=cfg.resize == "shorter-side")
        if s in held:
            images, bad = images.load(cfg.skip_bad_files)
            skipped += bad
            bad = {str(f) for f, _ in bad}
            ok = [i for i in ok if str(files[i]) not in bad]
        part_files[s] = [str(files[i]) for i in ok]
        parts[s] = (images, labels[ok])
    if skipped and not np.isin(parts["train"][1], normal).any():
        raise DataError(f"{root}: no readable training image of normal class {', '.join(cfg.normal_class)} "
                        f"({len(skipped)} unreadable file(s) skipped, e.g. {_why_skipped(skipped)})")
    if channels == 3 and not any(header[Path(f)][0] == 3 for s in parts for f in part_files[s]):
        # the only colour files were among those skipped: the rest are grayscale, as if they had never been
        parts = {s: (np.ascontiguousarray(a[..., :1]) if s in held
                     else FolderImages(a.files, a.hw, 1, resize=a.resize, keep_aspect=a.keep_aspect), y)
                 for s, (a, y) in parts.items()}
    _warn_if_dark(root, [parts[s][0] for s in held], [parts[s][0] for s in parts if s not in held])
    parts.setdefault("val", None)

    meta = {"source": str(root), "split": "given" if has_tree else "seeded", "resize": cfg.resize,
            "wide_values": value_kind,
            "skipped_files": len(skipped), "skipped_paths": [str(p) for p, _ in sorted(skipped, key=_path_of)],
            "skipped_first": _why_skipped(skipped) if skipped else None}
    if not has_tree:
        meta.update(split_seed=cfg.split_seed, test_fraction=cfg.test_fraction,
                    n_train=cfg.n_train, val_fraction=cfg.split_val_fraction())
    if "val" in part_files:
        meta["val_files"] = part_files["val"]
    split = one_class_split(root.name, parts, normal, dict(enumerate(class_list)), None, meta)
    split.train_files, split.test_files = part_files["train"], part_files["test"]
    return split
