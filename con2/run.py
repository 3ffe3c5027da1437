"""A run directory and what its config defines: the device, contexts, view size and model, the
saved weights with the settings they were trained with, and a fingerprint of the training images.

Layout (written by con2.train): config.json, metrics.jsonl, checkpoint.pt (written while training,
kept at the end for --resume / --epochs more), and at the end model.safetensors + model.json.
Everything that reads a run (evaluate, score, predict, report, the detector) goes through load_run,
which refuses weights of another run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import MIN_IMAGE_SIDE, TrainConfig, context_spelling, lift_legacy_extra, resolve_val_fraction
from .data import ContextSet, OneClassSplit, ViewConfig, load_split
from .data.datasets import DataError, InapplicableOption
from .data.images import FolderImages, ImageSet
from .data.keys import image_keys
from .files import folder_in_use, read_json, read_safetensors, replacing, tensor_digest, utf8_name, write_json
from .model import Con2Model

MODEL_FORMAT = "con2-model/1"
# The settings that make a run what it is: a resume must keep them, and a run's weights must have
# been trained with them. Paths, device, pipeline, compile and checkpointing may change.
IDENTITY_KEYS = ("dataset", "context", "objective", "normal_class", "image_size", "resize", "center_crop", "resolution",
                 "epochs", "batch_size", "lr", "weight_decay", "temperature", "amp", "seed", "width",
                 "split_seed", "test_fraction", "val_fraction", "n_train", "max_train_samples")


def run_identity(cfg: TrainConfig) -> dict:
    """The settings that define a run; val_fraction as the split uses it (None and the default agree)."""
    return {k: cfg.split_val_fraction() if k == "val_fraction" else getattr(cfg, k) for k in IDENTITY_KEYS}


def identity_mismatch(saved: dict, cfg: TrainConfig) -> str | None:
    """'key was X, now Y' for every identity setting that differs ('; '-joined), else None. Keys the
    saved identity lacks (written by an older con2) are not compared."""
    now = json.loads(json.dumps(run_identity(cfg)))  # lists / tuples as JSON has them
    saved, _ = lift_legacy_extra(saved)  # configs written before val_fraction / n_train were fields
    if isinstance(saved.get("context"), str):  # written before the spelling was normalised
        saved["context"] = context_spelling(saved["context"])
    if "val_fraction" in saved:  # a whole config holds the field as set, an identity as resolved
        saved["val_fraction"] = resolve_val_fraction(saved.get("dataset"), saved["val_fraction"])
    wrong = [f"{key} was {saved[key]!r}, now {now[key]!r}" for key in IDENTITY_KEYS
             if key in saved and saved[key] != now[key] and not (key == "normal_class" and _same_classes(saved, cfg))]
    return "; ".join(wrong) or None


def _same_classes(saved: dict, cfg: TrainConfig) -> bool:
    """Whether the saved normal classes and cfg's are one set spelled two ways ("8" and the
    default, "08", a name and its index)."""
    from .data.datasets import normal_class_labels

    then = dataclasses.replace(cfg, normal_class=saved.get("normal_class"))
    labels = normal_class_labels(cfg)
    return labels is not None and labels == normal_class_labels(then)



def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        # an int is a CUDA device index, as torch.device(0) reads it
        device = torch.device(name) if isinstance(name, (str, torch.device, int)) and not isinstance(name, bool) \
            else None
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N): {exc}") from None
    if device is None:  # torch's own message lists every overload of torch.device
        raise ValueError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda"):  # meta holds no data: a model moved there is gone
        raise ValueError(f"--device {name!r}: con2 runs on cpu or cuda[:N] only")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def context_set(cfg: TrainConfig) -> ContextSet | None:
    """The training contexts; None for the SimCLR baseline (original context only)."""
    return None if cfg.objective == "simclr" else ContextSet(cfg.context)


def training_size(cfg: TrainConfig, split: OneClassSplit) -> int:
    """The side of the views the network sees: the centred crop when the run crops (the paper's
    resize 256, crop 224 trains on 224 px views), else --image-size (views are resized to it from
    images of any size), else the images' own size, which must then be square (a view is square)."""
    if cfg.center_crop or cfg.image_size:
        return cfg.center_crop or cfg.image_size
    h, w = split.train.shape[1:3]
    if h != w or h < MIN_IMAGE_SIDE:
        fix = ("--image-size S (resize) or --center-crop S" if min(h, w) >= MIN_IMAGE_SIDE
               else f"--image-size S (resize; S >= {MIN_IMAGE_SIDE})")  # a crop cannot grow them
        raise DataError(f"{split.name}: the images are {w}x{h} px; training needs square images of at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}: pass {fix}")
    return h


def view_config(cfg: TrainConfig, split: OneClassSplit) -> ViewConfig:
    return ViewConfig(size=training_size(cfg, split))


def build_model(cfg: TrainConfig, split: OneClassSplit) -> Con2Model:
    return Con2Model(in_channels=split.channels, image_size=training_size(cfg, split), width=cfg.width)


def save_model(model: Con2Model, run_dir: Path, cfg: TrainConfig, fingerprint: dict | None = None) -> None:
    """The final model as safetensors (no pickle) plus its architecture as JSON; both carry the
    run's identity settings, so weights copied in from another run are refused by load_run, and the
    fingerprint of the training images, so scoring other data under the run is refused by run_split."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    identity = json.dumps(run_identity(cfg), sort_keys=True)
    meta = {"format": MODEL_FORMAT, "identity": identity}
    if fingerprint is not None:
        meta["data"] = json.dumps(fingerprint, sort_keys=True)
    meta["sha256"] = tensor_digest(state, meta)  # damage to the file is found by load_run, not scored
    with replacing(run_dir / "model.safetensors", make_folder=False) as tmp:  # a vanished run is not made anew
        save_file(state, str(tmp), metadata=meta)
    info = {"format": MODEL_FORMAT, "con2_version": __version__, "architecture": model.architecture(),
            "identity": json.loads(identity), **({"data": fingerprint} if fingerprint is not None else {})}
    write_json(run_dir / "model.json", info, make_folder=False)


def run_finished(run_dir: str | Path) -> bool:
    """Whether training of the run in `run_dir` ran to the end (its final model is written)."""
    return (Path(run_dir) / "model.safetensors").exists() and (Path(run_dir) / "model.json").exists()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, Con2Model]:
    """The config and trained model of a finished run, in eval mode."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        hint = ("a detector bundle: load it with Con2Detector.load / --detector" if run_dir.suffix == ".safetensors"
                and run_dir.name != "model.safetensors" else f"give the run's folder, {run_dir.parent}")
        raise NotADirectoryError(f"{run_dir} is a file, not a run folder ({hint})")
    for name in ("config.json", "model.json", "model.safetensors"):
        if not (run_dir / name).exists():
            if folder_in_use(run_dir):  # a --resume would be refused too
                raise FileNotFoundError(f"{run_dir} is being trained (a con2 train is writing it): its {name} is "
                                        "written when the training ends; wait for it")
            raise FileNotFoundError(
                f"{run_dir} is not a finished con2 run: {name} is missing (train it, or --resume it)"
            )
    try:
        cfg = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    except (TypeError, ValueError) as exc:  # read_json names a file that is not JSON; this, one with bad settings
        raise ValueError(str(exc) if "config.json" in str(exc) else f"{run_dir / 'config.json'}: {exc}") from None
    info = read_json(run_dir / "model.json")
    if info.get("format") != MODEL_FORMAT:
        raise ValueError(f"{run_dir}/model.json has format {info.get('format')!r}, expected {MODEL_FORMAT!r}")
    weights = run_dir / "model.safetensors"
    try:
        meta, state = read_safetensors(weights)
    except Exception as exc:  # safetensors raises its own error types for truncated / garbage files
        raise ValueError(f"{weights} is corrupt or not a safetensors file ({type(exc).__name__}: {exc})") from None
    if "sha256" in meta and meta["sha256"] != tensor_digest(state, meta):  # runs saved before it: unchecked
        raise ValueError(f"{weights} is corrupt: its SHA-256 does not match its contents (damaged or edited "
                         "since training); train the run again, or restore the file from a copy")
    try:
        identities = (("model.safetensors", json.loads(meta.get("identity", "{}"))),
                      ("model.json", dict(info.get("identity", {}))))
        architecture = dict(info["architecture"])
    except (ValueError, TypeError, KeyError) as exc:  # a hand-edited or damaged file
        raise ValueError(f"{run_dir}: model.json or model.safetensors is damaged: no readable identity / "
                         f"architecture ({type(exc).__name__}: {exc})") from None
    for source, saved in identities:
        wrong = identity_mismatch(saved, cfg)
        if wrong:
            raise ValueError(f"{run_dir}: {source} was trained with other settings than config.json "
                             f"({wrong}); the weights belong to another run")
    try:
        model = Con2Model(**architecture)
    except TypeError as exc:
        raise ValueError(f"{run_dir}/model.json: architecture {architecture} is not a con2 model's ({exc})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match a con2 model with {info['architecture']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    wrong_shape = next((k for k in expected if state[k].shape != expected[k].shape), None)
    if wrong_shape:
        raise ValueError(f"{weights} holds weights of another architecture: {wrong_shape} is "
                         f"{list(state[wrong_shape].shape)}, a model with {info['architecture']} has "
                         f"{list(expected[wrong_shape].shape)}")
    model.load_state_dict(state)
    return cfg, model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


def run_split(run_dir: str | Path, cfg: TrainConfig, split: OneClassSplit | None = None) -> OneClassSplit:
    """The data split of a finished run (loaded from its config unless given), after checking that
    its training images are the ones the saved model was trained on: a data file replaced since, a
    folder that gained images (the seeded split then moves training images into test) or weights
    copied from a run on other data would otherwise give silently wrong scores. Runs saved before
    the fingerprint was recorded are not checked."""
    run_dir = Path(run_dir)
    if split is None:
        try:
            split = split_as_trained(cfg)
        except DataError as exc:
            where = cfg.data_file or cfg.data_root
            if where and not Path(where).exists():  # moved since training: say how the run finds it again
                key = "data_file" if cfg.data_file else "data_root"
                raise DataError(f"{exc}. If the data moved, set \"{key}\" in {run_dir / 'config.json'} to its new "
                                "place (the run checks that its training images are the same)") from None
            raise
    info = read_json(run_dir / "model.json")
    with utf8_name(run_dir / "model.safetensors") as name, safe_open(name, framework="pt") as fh:
        meta = fh.metadata() or {}
    recorded = [("model.json", info["data"])] if "data" in info else []
    if "data" in meta:
        try:
            recorded.append(("model.safetensors", json.loads(meta["data"])))
        except ValueError:
            recorded.append(("model.safetensors", None))
    damaged = next((src for src, fp in recorded if not (isinstance(fp, dict) and {"count", "shape", "hash"} <= set(fp))),
                   None)
    if damaged:  # a hand-edited or damaged file: not a KeyError from the comparison below
        raise ValueError(f"{run_dir}: the training-data fingerprint in {damaged} is damaged (count, shape and hash "
                         "expected); train the run again, or restore the file from a copy")
    if recorded:
        now = data_fingerprint(split)
        for source, saved in recorded:
            if fingerprints_differ(saved, now):
                raise DataError(
                    f"{run_dir}: the training images differ from those its model was trained on ({source}: "
                    f"{saved['count']} images of {saved['shape']}; now {now['count']} of {now['shape']}, or other "
                    f"pixels): the data changed since training ({cfg.data_file or cfg.data_root}), or the "
                    f"weights belong to another run{_listing_note(split)}")
    return split


def split_as_trained(cfg: TrainConfig) -> OneClassSplit:
    """The split a run was trained on. Older con2 ignored options the data does not use (a seeded
    split's --test-fraction on MedMNIST, --resolution on a folder, ...), which training now refuses:
    the split of such a run is the one loaded without them."""
    if cfg.dataset == "npz" and not cfg.data_file:  # training refuses this; Con2Detector.fit records it
        raise DataError("this run was trained by Con2Detector.fit on images in memory, not on a data file: "
                        "score with the detector itself (decision_function; save / load keep it)")
    while True:  # each retry resets at least one more field to its default, so this ends
        try:
            return load_split(cfg)
        except InapplicableOption as exc:
            defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.name in exc.fields}
            if all(getattr(cfg, k) == v for k, v in defaults.items()):
                raise
            cfg = dataclasses.replace(cfg, **defaults)


def _listing_note(split: OneClassSplit) -> str:
    """A folder run's training files that earlier con2 did not list (DICOM files without a .dcm
    suffix, which older con2 left out): the likely reason its images now differ."""
    from .data.decode import IMAGE_SUFFIXES

    files = (split.train_files or []) + (split.test_files or [])  # a file of test/ shifts a seeded split too
    unnamed = [f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES]
    if not unnamed:
        return ""
    return (f"; among them {len(unnamed)} DICOM file(s) without a .dcm suffix such as {unnamed[0]}, which con2 "
            "now reads and earlier versions left out: move them aside to use this run, or train it again")


def data_fingerprint(split: OneClassSplit) -> dict:
    """What a resume checks the training images against: their count, shape and a hash of the pixels
    (data files may move; the images must not change). The last one of images decoded on access
    from files is remembered with them, so that a report that first evaluates its run reads a large
    folder once, not twice; an array in memory (cheap to hash, and mutable in place) is hashed each time."""
    global _last_fingerprint
    last, known = _last_fingerprint
    if last() is not split.train:
        images = ImageSet(split.train, "train images")  # chunk by chunk: a folder may be larger than memory
        sampled = every = 0
        for _, x in images.chunks(images.chunk_rows()):
            sampled += int(image_keys(x).sum())
            every += _pixel_digests(x)
        # "hash" keys at most 4096 values an image and missed large changes of larger images; it is kept
        # so that runs saved before "pixels" are still checked (fingerprints_differ compares saved keys)
        known = {"count": len(images), "shape": list(images.shape[1:]), "hash": sampled % 2**61,
                 "pixels": every % 2**61}
        if isinstance(split.train, FolderImages):
            _last_fingerprint = (weakref.ref(split.train), known)
    return dict(known)


def _pixel_digests(images: torch.Tensor) -> int:
    """The sum of the images' SHA-1 digests (their first 8 bytes): every pixel counts, the order does
    not (as for "hash"). SHA-1 as a checksum: the fastest hashlib has here (~1.6 GB/s, SHA-NI)."""
    arr = images.detach().cpu().contiguous().numpy()
    return sum(int.from_bytes(hashlib.sha1(memoryview(im).cast("B"), usedforsecurity=False).digest()[:8], "little")
               for im in arr)


def fingerprints_differ(saved: dict, now: dict) -> bool:
    """Whether the images of fingerprint `now` differ from `saved`'s, by the keys `saved` has (one
    written before a key was added is checked by the others)."""
    return any(now.get(key) != value for key, value in saved.items())


_last_fingerprint = (lambda: None, {})  # (weak reference to FolderImages train images, their fingerprint)
