"""`con2 train`, `con2 info`, `con2 demo`."""
from __future__ import annotations

import argparse
import dataclasses
import re
import time
import warnings
from pathlib import Path

from ..config import (CONTEXTS, DATASETS, OBJECTIVES, PAPER_EPOCHS, PIPELINES, RESIZE_MODES, TrainConfig, apply_preset,
                      default_folder_name)
from .options import check_bundle_file, named_path

_D = TrainConfig()  # the defaults the help texts name


def add_train_options(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Options shared by train and sweep; defaults None so presets can tell what was set. A sweep
    sets the class and seed of each run (--classes, --seeds): its help leaves theirs out."""
    per_run = (lambda text: argparse.SUPPRESS) if sweep else (lambda text: text)
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default digits")
    p.add_argument("--context", default=None,
                   help=f"one of {', '.join(CONTEXTS)}, or a comma list for composed contexts (default invert)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="con2 (paper, default), context / content (loss ablations), simclr (baseline)")
    p.add_argument("--normal-class", nargs="+", default=None,
                   help=per_run("the class(es) trained on as normal, by name or index (folder data: by class "
                                "folder name; required unless the data set has a default: digits, breast, "
                                "pneumonia, oct)"))
    p.add_argument("--data-root", default=None, help=f"folder of the data files (default {_D.data_root})")
    p.add_argument("--data-file", default=None, help="the .npz for --dataset npz (or a MedMNIST / CIFAR file elsewhere than --data-root)")
    p.add_argument("--image-size", type=int, default=None, help="resize every image to this square")
    p.add_argument("--resize", choices=RESIZE_MODES, default=None,
                   help="how --image-size S is reached: stretch to S x S (default), or shorter-side: the shorter "
                        "side to S keeping the aspect ratio, then the centred S x S (torchvision's Resize(S))")
    p.add_argument("--center-crop", type=int, default=None,
                   help="then keep the centred square of this size (the paper's MedMNIST pre-processing: "
                        "--image-size 256 --center-crop 224)")
    p.add_argument("--resolution", type=int, choices=(28, 64, 128, 224), default=None,
                   help="MedMNIST file resolution")
    p.add_argument("--epochs", type=int, default=None, help=f"default {_D.epochs}; --preset paper: {PAPER_EPOCHS}")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"samples per step (default {_D.batch_size}; --preset paper: the data set's), each giving "
                        "2 views in each context: 4 views with one --context")
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate, cosine decay (default {_D.lr:g})")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"AdamW weight decay (default {_D.weight_decay:g})")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"of both contrastive terms (default {_D.temperature:g})")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on the GPU")
    p.add_argument("--seed", type=int, default=None, help=per_run(f"initialisation and view draws (default {_D.seed})"))
    p.add_argument("--width", type=int, default=None, help=f"ResNet18 base width (default {_D.width} = paper)")
    p.add_argument("--device", default=None, help="auto (default: cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--pipeline", choices=PIPELINES, default=None,
                   help="where the views are made (default auto; `con2 info` lists what is available)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"DataLoader processes of --pipeline workers (default {_D.workers}; 0: in the training "
                        "process); the views are the same for any number")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"epochs between checkpoints (default {_D.checkpoint_every})")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="--dataset folder: leave out unreadable images (counted in a warning) instead of stopping")
    p.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of the split of data without its own split, and of --max-train-samples' "
                        f"subset (default {_D.split_seed})")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="normals held out for test in the seeded split of npz / folder data, and of each "
                        "digit for digits (default 0.3)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="normals held out for val (threshold calibration) in that split (default 0; digits 0.1)")
    p.add_argument("--n-train", type=int, default=None,
                   help="in that split, exactly this many normals to train and the rest to test and val, "
                        "instead of --test-fraction (BR35H protocol: 1000)")
    p.add_argument("--max-train-samples", type=int, default=None, help="train on a random subset of this many normals")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--preset", choices=("paper", "quick"), default=None,
                   help="paper: the paper's epochs, batch size and pre-processing for the data set; "
                        "quick: a few short epochs. Options given explicitly win")


# every TrainConfig field has its option (dashes for underscores)
_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the command line. With --resume, the run's saved config.json is the
    base and only what the command line sets (itself or through --preset) replaces it, so
    `--resume --out RUN` alone continues RUN; a changed identity setting is then refused by train."""
    explicit = {f for f in _FIELDS if getattr(args, f, None) is not None}
    if {"n_train", "test_fraction"} <= explicit:  # the split takes one or the other, never both
        raise ValueError("--n-train and --test-fraction are alternatives: --n-train N trains on N normals and "
                         "holds out the rest; give one of them")
    cfg = TrainConfig(**{f: getattr(args, f) for f in explicit})
    if "out" not in explicit:
        cfg.out = f"runs/{default_folder_name(cfg)}-s{cfg.seed}"
    elif not str(cfg.out).strip():  # "" would train into the current folder
        raise ValueError("--out is empty; give the run's folder (e.g. runs/my-run)")
    before = dataclasses.asdict(cfg)
    cfg = apply_preset(cfg, args.preset, explicit)
    chosen = explicit | {"out"} | {k for k, v in dataclasses.asdict(cfg).items() if before[k] != v}
    saved = Path(cfg.out) / "config.json"
    if getattr(args, "resume", False) and not saved.exists() and "dataset" not in explicit:
        # a mistyped --out would otherwise start the default run (digits) in its place
        if (Path(cfg.out) / "checkpoint.pt").exists():
            raise ValueError(f"--resume: {cfg.out} has a checkpoint.pt but no config.json; give the run's settings "
                             "again (at least --dataset): the checkpoint's own are checked against them")
        raise ValueError(f"--resume: {cfg.out} holds no run to continue (no config.json there); check the path, "
                         "or give the settings of the run to start (at least --dataset)")
    if getattr(args, "resume", False) and saved.exists():
        from ..files import read_json

        cfg = dataclasses.replace(TrainConfig.from_dict(read_json(saved)),
                                  **{k: getattr(cfg, k) for k in chosen})
    if "data_root" in explicit and not cfg.reads_data_root():  # else it is ignored without a word
        source = ("scikit-learn's digits, read from no file" if cfg.dataset == "digits" else
                  f"it reads --data-file {cfg.data_file}" if cfg.data_file else "give its file as --data-file")
        raise ValueError(f"--data-root does not apply to --dataset {cfg.dataset} ({source})")
    if "context" in explicit and cfg.objective == "simclr":  # else a flip baseline and an invert one look different
        warnings.warn(f"--objective simclr trains on the original images only (METHOD section 5); "
                      f"--context {cfg.context} is not used")
    return cfg.validate()


# sysexits' EX_TEMPFAIL ("try again later"): a job script tells a run paused by --time-limit (resubmit
# it with --resume) from a finished one (0) and a failed one (2; 130 after Ctrl-C)
EXIT_PAUSED = 75


def parse_duration(text: str) -> float:
    """Seconds from '5400', '90m', '3h50m' or '1h2m3s' (a batch-queue slot, a lent GPU call)."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or m is None or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 5400, 90m, 3h50m)")
    if m.group(3) and (m.group(1) or m.group(2)) and not text.strip().endswith("s"):  # "1h30": 30 what?
        raise argparse.ArgumentTypeError(f"{text!r}: give the unit of {m.group(3)}, as in 1h30m or 2m30s "
                                         "(a number alone is seconds only on its own)")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * h + 60 * mi + se
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the time limit must be positive, got {text!r}")
    return seconds


def _train(args):
    from ..run import run_finished
    from ..train import resume_command, train

    cfg = config_from_args(args)
    deadline = time.time() + args.time_limit if args.time_limit else None
    # a reader of the output leaving (`con2 train | head`) does not stop it: con2.cli.main wraps it
    run_dir = train(cfg, resume=args.resume, deadline=deadline, progress=not args.quiet)
    if run_finished(run_dir):
        print(f"trained model in {run_dir}")
        return 0
    print(f"time limit reached; checkpoint saved. Continue with {resume_command(run_dir)}")
    return EXIT_PAUSED


def _info(args):
    if args.detector is not None:
        from ..detector import Con2Detector

        check_bundle_file(args.detector)
        det = Con2Detector.load(args.detector, device="cpu")
        print(f"con2 detector bundle {args.detector} ({args.detector.stat().st_size / 2**20:.1f} MiB)")
        print(det.summary())
        return
    from ..info import info_text

    print(info_text())


def _demo(args):
    from ..demo import run_demo

    out = args.out or ("runs/demo" if args.seed == 0 else f"runs/demo-s{args.seed}")  # a run keeps its seed
    run_demo(out=out, epochs=args.epochs, normal_class=args.normal_class, seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a Con2 model on normal images")
    add_train_options(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<context>-<objective>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--time-limit", type=parse_duration, default=None, metavar="DURATION",
                   help="checkpoint and leave after this much wall time (5400, 90m, 3h50m), with exit status "
                        f"{EXIT_PAUSED} if the run is not finished; --resume continues")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (by default a bar on a terminal, a line a minute into a log file)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_train)

    p = sub.add_parser("info", help="versions, devices and which optional parts are available")
    p.add_argument("--detector", type=Path, default=None,
                   help="describe this detector bundle (con2 export) instead: source, scoring, threshold, input")
    p.set_defaults(func=_info)

    from ..demo import DEMO

    p = sub.add_parser("demo", help="train on scikit-learn's digits and compare with the untrained encoder")
    p.add_argument("--out", type=named_path, default=None,
                   help="run directory (default runs/demo, runs/demo-s<seed> for seed > 0)")
    p.add_argument("--epochs", type=int, default=None, help=f"default {DEMO['epochs']}")
    p.add_argument("--normal-class", default=None, help=f"the normal digit (default {DEMO['normal_class'][0]})")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.set_defaults(func=_demo)
