"""Typed configuration and the paper's per-data-set presets (METHOD section 6)."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "breast", "pneumonia", "oct", "derma", "blood", "cifar10", "cifar100", "npz", "folder")
CONTEXTS = ("invert", "flip", "equalize")
OBJECTIVES = ("con2", "context", "content", "simclr")
PIPELINES = ("auto", "tensor", "dali", "workers")
# How --image-size S resizes: "stretch" to S x S; "shorter-side" scales the shorter side to S
# keeping the aspect ratio, then keeps the centred S x S (torchvision's Resize(S) + CenterCrop(S)).
RESIZE_MODES = ("stretch", "shorter-side")
# The scoring choices (con2.scoring uses them): here so that building the CLI's parser imports no torch.
SCORERS = ("nnd", "lh")
AGGREGATES = ("mean", "max")
BANK_DTYPE_NAMES = ("float32", "float16")
# Each view is one encoder pass over every bank and test image: the paper uses 40; beyond this a
# score costs days and the S_LH Gaussians (one d x d matrix per view) no longer fit in memory.
MAX_VIEWS = 1024

# METHOD section 6: batch size in samples (a batch gives 4x as many views).
PAPER_BATCH_SIZE = {
    "breast": 64, "oct": 128, "pneumonia": 128, "derma": 128, "blood": 128,
    "cifar10": 512, "cifar100": 512, "npz": 128, "folder": 128, "digits": 64,
}
PAPER_EPOCHS = 2048
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer and the loss hold lr and temperature in float32
MIN_TEMPERATURE = 1e-6  # con2.ops.reference.TEMPERATURE_RANGE (not imported: config stays free of torch)
# The smallest side views are trained at: ResNet18 (CIFAR stem) halves it three times.
MIN_IMAGE_SIDE = 8
# METHOD section 6: "MedMNIST, BR35H, Pneumonia: resize 256, center-crop 224" (as --image-size,
# --center-crop); for npz / folder data the paper's pre-processing depends on the data set, so it is
# left to the user (BR35H and Pneumonia: the same 256 / 224, Kvasir: 224, Melanoma: 128).
PAPER_PREPROCESSING = {ds: (256, 224) for ds in ("breast", "pneumonia", "oct", "derma", "blood")}

# TrainConfig fields by type, checked before any range check (a str compared with an int would fail
# with Python's own message; a float width with torch's); the optional ones may also be None.
_INT_FIELDS = ("epochs", "batch_size", "seed", "split_seed", "width", "checkpoint_every", "workers")
_OPTIONAL_INT_FIELDS = ("image_size", "center_crop", "resolution", "n_train", "max_train_samples")
_NUMBER_FIELDS = ("lr", "weight_decay", "temperature", "test_fraction")
_OPTIONAL_NUMBER_FIELDS = ("val_fraction",)
_BOOL_FIELDS = ("amp", "compile", "skip_bad_files")


def is_int(value) -> bool:
    """An int or numpy integer; not a bool (True is no count) and not a float, even 2.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_seed(value) -> bool:
    """An integer in [0, 2**63): what torch's generators take (64 bits, signed)."""
    return is_int(value) and 0 <= value < 2**63


def is_number(value) -> bool:
    """An int, float or numpy number (NaN included: range checks reject it); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclass
class TrainConfig:
    dataset: str = "digits"
    context: str = "invert"  # one base context, or comma-separated for compositions
    objective: str = "con2"
    normal_class: list[str] | None = None
    data_root: str = "data"
    data_file: str | None = None  # the .npz of --dataset npz / cifar from an npz
    image_size: int | None = None  # None: the data's own size
    resize: str = "stretch"  # RESIZE_MODES: how image_size is reached from non-square images
    center_crop: int | None = None  # then a centred square of this size (paper: 256 -> 224)
    resolution: int | None = None  # MedMNIST file resolution (28, 64, 128, 224)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    temperature: float = 0.07
    amp: bool = False
    seed: int = 0
    width: int = 64  # ResNet18 base width; 64 is the paper's, smaller only for tests
    device: str = "auto"
    pipeline: str = "auto"
    workers: int = 2  # DataLoader processes of the workers pipeline (views do not depend on it)
    checkpoint_every: int = 10  # epochs
    skip_bad_files: bool = False
    split_seed: int = 0  # seeded split for npz/folder data without one
    test_fraction: float = 0.3
    val_fraction: float | None = None  # normals to val in a seeded split; None: 0 (npz, folder), 0.1 (digits)
    n_train: int | None = None  # a seeded npz / folder split: exactly this many train normals (BR35H: 1000)
    max_train_samples: int | None = None  # subsample the train set (quick runs)
    compile: bool = False
    out: str = "runs/run"

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise ValueError(msg)

        self._check_types()
        if self.dataset not in DATASETS:
            bad(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        for c in self.context.split(","):
            if c.strip() not in CONTEXTS:
                bad(f"unknown context {c!r}; choose from {', '.join(CONTEXTS)}")
        if self.objective not in OBJECTIVES:
            bad(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.resize not in RESIZE_MODES:
            bad(f"unknown --resize {self.resize!r}; choose from {', '.join(RESIZE_MODES)}")
        if self.resize != "stretch" and self.image_size is None:
            bad(f"--resize {self.resize} says how --image-size S is reached: give --image-size")
        if self.pipeline not in PIPELINES:
            bad(f"unknown pipeline {self.pipeline!r}; choose from {', '.join(PIPELINES)}")
        if self.epochs < 1:
            bad(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            bad(f"--batch-size must be >= 1, got {self.batch_size}")
        for name, value in (("lr", self.lr), ("temperature", self.temperature)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= FLOAT32_MAX):  # NaN too
                bad(f"--{name} must be a number > 0 that float32 can hold, got {value!r}")
        if self.lr > 1e37:  # AdamW's first step divides it by 1 - beta1 = 0.1, in float32 (max 3.4e38)
            bad(f"--lr must be at most 1e37 (AdamW's step size lr / (1 - 0.9) must fit float32), got {self.lr!r}")
        if self.temperature < MIN_TEMPERATURE:  # else the loss refuses it at the first step
            bad(f"--temperature must be >= {MIN_TEMPERATURE:g} (the loss kernels' range), got {self.temperature!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            bad(f"--weight-decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.width < 1:
            bad(f"--width must be >= 1, got {self.width}")
        if not (is_seed(self.seed) and is_seed(self.split_seed)):
            bad(f"--seed and --split-seed must be in [0, 2**63), got {self.seed} and {self.split_seed}")
        if self.workers < 0:
            bad(f"--workers must be >= 0 (0: views made in the training process), got {self.workers}")
        if self.checkpoint_every < 1:
            bad(f"--checkpoint-every must be >= 1 (epochs), got {self.checkpoint_every}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            bad(f"--max-train-samples must be >= 1, got {self.max_train_samples}")
        named = [str(c) for c in self.normal_class or []]
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:  # a run's identity would differ from the one naming each class once
            bad(f"--normal-class names {', '.join(twice)} more than once")
        if not 0 < self.test_fraction < 1:
            bad(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        val_fraction = self.val_fraction or 0.0
        if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
            bad(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
        if self.test_fraction + val_fraction >= 1:
            bad(f"--test-fraction {self.test_fraction} + --val-fraction {val_fraction} leave no normals to train on")
        if self.n_train is not None and self.n_train < 1:
            bad(f"--n-train must be >= 1, got {self.n_train}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIDE:
            bad(f"--image-size must be >= {MIN_IMAGE_SIDE}, got {self.image_size}")
        if self.center_crop is not None and self.center_crop < MIN_IMAGE_SIDE:
            bad(f"--center-crop must be >= {MIN_IMAGE_SIDE}, got {self.center_crop}")
        if self.center_crop is not None and self.image_size is not None and self.center_crop > self.image_size:
            bad(f"--center-crop {self.center_crop} is larger than --image-size {self.image_size}")
        # npz and folder classes are the data's: their loaders refuse a missing class, listing them
        if self.dataset in ("derma", "blood", "cifar10", "cifar100") and not self.normal_class:
            bad(f"--dataset {self.dataset} needs --normal-class")
        return self

    def _check_types(self) -> None:
        """TypeError naming the setting for a value of the wrong type; numpy scalars become Python
        ones (config.json is JSON)."""
        for fields, optional, ok, what, cast in (
                (_INT_FIELDS, _OPTIONAL_INT_FIELDS, is_int, "an integer", int),
                (_NUMBER_FIELDS, _OPTIONAL_NUMBER_FIELDS, is_number, "a number", float)):
            for name in fields + optional:
                value = getattr(self, name)
                if value is None and name in optional:
                    continue
                if not ok(value):
                    raise TypeError(f"--{name.replace('_', '-')} must be {what}, got {value!r} "
                                    f"({type(value).__name__})")
                if not isinstance(value, (int, float)):
                    setattr(self, name, cast(value))
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"--{name.replace('_', '-')} must be True or False, got {value!r} "
                                f"({type(value).__name__})")
            setattr(self, name, bool(value))
        if not isinstance(self.context, str):
            raise TypeError(f"--context must be a string such as 'invert' or 'invert,flip', got {self.context!r}")
        self.context = context_spelling(self.context)
        if isinstance(self.normal_class, str):  # a string would be read as one class per character
            raise TypeError(f"--normal-class must be a list of class names, got the string {self.normal_class!r}; "
                            f"write [{self.normal_class!r}]")

    def split_val_fraction(self) -> float:
        """The fraction of normals a seeded split puts in val (resolve_val_fraction)."""
        return resolve_val_fraction(self.dataset, self.val_fraction)

    def reads_data_root(self) -> bool:
        """Whether the images come from --data-root: a folder always; npz and digits never; the
        other data sets unless --data-file names their file."""
        return self.dataset == "folder" or (self.dataset not in ("npz", "digits") and not self.data_file)

    def with_absolute_paths(self) -> "TrainConfig":
        """The config as a run or a sweep records it: data paths absolute, so that evaluate / score /
        predict and a resumed sweep find the same data from any working directory (a moved file is
        named; changed pixels are refused)."""
        return dataclasses.replace(self, data_root=absolute_path(self.data_root),
                                   data_file=absolute_path(self.data_file))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d, legacy = lift_legacy_extra(d)
        if legacy:
            raise ValueError(f"unknown configuration keys: {', '.join('extra.' + k for k in sorted(legacy))}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**d)


def absolute_path(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def lift_legacy_extra(d: dict) -> tuple[dict, dict]:
    """(a copy of config dict d with the settings older con2 kept in d["extra"] (val_fraction,
    n_train) as top-level keys, and whatever else "extra" held)."""
    d = dict(d)
    legacy = dict(d.pop("extra", None) or {})
    for key in ("val_fraction", "n_train"):
        if key in legacy and d.get(key) is None:
            d[key] = legacy.pop(key)
    return d, legacy


def context_spelling(context: str) -> str:
    """One spelling of a context list: 'invert, flip' trains what 'invert,flip' does (and names a run
    folder without a space)."""
    return ",".join(c.strip() for c in context.split(","))


def default_folder_name(cfg: TrainConfig) -> str:
    """What a run (runs/NAME-sSEED) or a sweep (runs/sweep-NAME) is named without --out: data set,
    contexts ("invert+flip") and objective."""
    return f"{cfg.dataset}-{context_spelling(cfg.context).replace(',', '+')}-{cfg.objective}"


def resolve_val_fraction(dataset: str | None, val_fraction: float | None) -> float:
    """val_fraction, or the data set's default when None: 0.1 for digits, 0 for npz and folder."""
    if val_fraction is not None:
        return float(val_fraction)
    return 0.1 if dataset == "digits" else 0.0


def apply_preset(cfg: TrainConfig, preset: str | None, explicit: set[str]) -> TrainConfig:
    """Fill fields the user did not set explicitly from a preset ('paper' or 'quick'). The paper
    preset includes the paper's pre-processing where METHOD section 6 fixes it for the data set,
    unless the user set either of --image-size / --center-crop."""
    if preset is None:
        return cfg
    if preset == "paper":
        values = {"epochs": PAPER_EPOCHS, "batch_size": PAPER_BATCH_SIZE.get(cfg.dataset, 128),
                  "lr": 1e-3, "weight_decay": 1e-3, "checkpoint_every": 64}
        if cfg.dataset in PAPER_PREPROCESSING and not explicit & {"image_size", "center_crop"}:
            values["image_size"], values["center_crop"] = PAPER_PREPROCESSING[cfg.dataset]
    elif preset == "quick":
        values = {"epochs": 5, "batch_size": 32, "checkpoint_every": 1}
    else:
        raise ValueError(f"unknown preset {preset!r}; choose paper or quick")
    for k, v in values.items():
        if k not in explicit:
            setattr(cfg, k, v)
    return cfg
