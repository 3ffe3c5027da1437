"""`con2 score`, `evaluate`, `predict`, `export`, `sweep`, `report`: parsing and the commands' defaults
(output names, a sweep's classes); the work is in the API."""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import warnings
from pathlib import Path

from ..config import AGGREGATES, BANK_DTYPE_NAMES, SCORERS
from .options import (check_bundle_file, named_path, positive_fraction, positive_int, seed_int, unit_fraction,
                      view_count)
from .output import check_output, to_stdout, write_output


def _scoring_options(p: argparse.ArgumentParser, scorer_choice: bool = False) -> None:
    p.add_argument("--views", type=view_count, default=40,
                   help="test-time views: even A >= 2 (half original, half context), or 0 for one plain view")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="over views (mean = paper)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per encoder call")
    p.add_argument("--bank-dtype", choices=BANK_DTYPE_NAMES, default="float32", help="storage of the NND bank")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the test-time view draws")
    p.add_argument("--crop-scale", type=positive_fraction, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="area range of the test-time random crops (default: the training views', 0.08 1; "
                        "CSI's evaluation: 0.54 0.54)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    if scorer_choice:
        p.add_argument("--scorer", choices=SCORERS, default="nnd",
                       help="nnd: nearest-neighbour cosine to the training bank (S_NND, default); "
                            "lh: Gaussian likelihood (S_LH)")


def _run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="a trained run directory (con2 train --out)")


def _check_run(run: Path) -> None:
    """--run names a folder: else con2.run.load_run would call it an unfinished run missing its
    config.json, and suggest training or resuming what is only a mistyped path or a file."""
    if not run.exists():
        raise FileNotFoundError(f"--run {run} does not exist; give the folder `con2 train --out` wrote")
    if not run.is_dir():
        raise NotADirectoryError(f"--run {run} is a file, not a run folder; give the folder `con2 train --out` wrote")
    if (run / "manifest.json").is_file() and not (run / "config.json").is_file():
        raise ValueError(f"--run {run} is a sweep folder; its runs are its class-*-seed* sub-folders")


def _run_inputs(run: Path | None) -> list[str]:
    """The files a run's scoring reads besides the run (its data file): an --out must not replace them."""
    if run is None:
        return []
    from ..files import read_json

    try:
        return [str(read_json(run / "config.json").get("data_file") or "")]
    except (OSError, ValueError):  # the run's own checks name a missing or damaged config.json
        return []


# ----------------------------------------------------------------------------- score

def _score(args) -> None:
    from ..evaluate import score_split

    _check_run(args.run)
    check_output(args.out, run=args.run, inputs=_run_inputs(args.run))
    result = score_split(args.run, args.split, args.scorer, args.views, args.aggregate, args.device, args.seed,
                         args.batch_size, args.bank_dtype, not args.quiet, args.crop_scale)
    write_output(lambda out: result.write_csv(out, args.per_view), args.out)
    if not to_stdout(args.out):
        print(f"wrote {len(result.scores)} {args.split} scores to {args.out} (higher = more anomalous)",
              file=sys.stderr)


# ----------------------------------------------------------------------------- evaluate

def _evaluate(args) -> None:
    from ..evaluate import evaluate_run, format_metrics

    _check_run(args.run)
    m = evaluate_run(args.run, views=args.views, scorers=args.scorers, aggregate=args.aggregate, device=args.device,
                     seed=args.seed, batch_size=args.batch_size, bank_dtype=args.bank_dtype,
                     target_fpr=0.05 if args.target_fpr is None else args.target_fpr, per_view=args.per_view,
                     progress=not args.quiet, crop_scale=args.crop_scale)
    if args.target_fpr is not None and not m["n_val"]:  # given, and nothing to calibrate on: said, not ignored
        warnings.warn(f"--target-fpr {args.target_fpr:g}: the run has no val normals, so no threshold was "
                      "calibrated (train with --val-fraction F to hold some out)")
    views = (f"{m['views']} test-time views (crop area {m['crop_scale'][0]:g}-{m['crop_scale'][1]:g})" if m["views"]
             else "one plain view of each image (no crops)")
    print(f"{m['dataset']}: {m['n_test']} test images ({m['n_test_anomalous']} anomalous), {views}, "
          f"aggregate {m['aggregate']}")
    print(format_metrics(m))
    print(f"wrote {Path(args.run) / 'metrics.json'}")


# ----------------------------------------------------------------------------- predict

# set when the detector was exported: given with --detector, they would be ignored
BUNDLE_FIXED = ("scorer", "views", "bank_dtype", "seed", "crop_scale")
PREDICT_DEFAULTS = {"scorer": "nnd", "views": 40, "aggregate": "mean", "bank_dtype": "float32", "seed": 0}


def _predict(args) -> None:
    from ..predict import predict_files, predict_with_detector

    if args.run is not None:
        _check_run(args.run)
    fmt = args.format or ("json" if not to_stdout(args.out) and Path(args.out).suffix.lower() == ".json" else "csv")
    check_output(args.out, example=f"predictions.{fmt}", run=args.run,
                 inputs=[*args.inputs, args.detector or "", *_run_inputs(args.run)])
    if args.detector is not None:
        given = [f"--{k.replace('_', '-')}" for k in BUNDLE_FIXED if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: set in the detector bundle when it was exported (con2 export); "
                             "export the run again with other values")
        check_bundle_file(args.detector)
        rows = predict_with_detector(args.detector, args.inputs, target_fpr=args.target_fpr,
                                     threshold=args.threshold, aggregate=args.aggregate, device=args.device,
                                     batch_size=args.batch_size, progress=not args.quiet,
                                     skip_bad_files=args.skip_bad_files)
    else:
        opts = {k: PREDICT_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in PREDICT_DEFAULTS}
        rows = predict_files(args.run, args.inputs, **opts, target_fpr=args.target_fpr, threshold=args.threshold,
                             device=args.device, batch_size=args.batch_size, progress=not args.quiet,
                             crop_scale=args.crop_scale, skip_bad_files=args.skip_bad_files)

    def write(out):
        if fmt == "json":
            # ensure_ascii (the default) writes a non-UTF-8 name's surrogates as \udcXX escapes: valid
            # JSON that json.load turns back into the same str, so os.fsencode gives the file's bytes
            json.dump(rows, out, indent=2)
            out.write("\n")
        else:
            w = csv.DictWriter(out, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    write_output(write, args.out)
    if not to_stdout(args.out):
        print(f"wrote {len(rows)} predictions to {args.out} ({fmt})", file=sys.stderr)


# ----------------------------------------------------------------------------- export

def _export(args) -> None:
    from ..bundle import bundle_path, is_bundle
    from ..detector import Con2Detector
    from ..evaluate import check_view_options

    if str(args.out) == "-":
        raise ValueError("--out -: a bundle is a binary file written in one step; give a file path")
    _check_run(args.run)
    # as given: a Path drops a trailing /
    check_output(args.out, example="detector.safetensors", run=args.run, inputs=_run_inputs(args.run))
    out = bundle_path(args.out)
    if out.is_file() and out.resolve().parent == args.run.resolve() and not is_bundle(out):
        raise ValueError(f"--out {args.out} would replace the run's own {out.name}; give another file name "
                         f"(e.g. {args.run / 'detector.safetensors'})")
    check_view_options(args.views, args.crop_scale, args.aggregate)
    det = Con2Detector.from_run(args.run, scorer=args.scorer, views=args.views, aggregate=args.aggregate,
                                target_fpr=args.target_fpr, seed=args.seed, bank_dtype=args.bank_dtype,
                                crop_scale=args.crop_scale, device=args.device, score_batch_size=args.batch_size,
                                progress=not args.quiet)
    path = det.save(out)
    above = int(det.labels_.sum())
    views = f"{det.views} test-time views" if det.views else "one plain view"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {det.scorer} over {views}, "
          f"threshold {det.threshold_:.6g} ({above} of {len(det.labels_)} val normals above it, target FPR "
          f"{args.target_fpr:g}); no training data needed to use it: con2 predict --detector {shlex.quote(str(path))} IMAGES...")


# ----------------------------------------------------------------------------- sweep

def _sweep(args) -> None:
    from ..config import TrainConfig, default_folder_name
    from ..sweep import run_sweep
    from .train_cmd import config_from_args

    if args.normal_class is not None:
        raise ValueError("con2 sweep takes --classes, not --normal-class")
    if args.seed is not None:
        raise ValueError("con2 sweep takes --seeds, not --seed")
    from ..sweep import dataset_classes

    named = TrainConfig(**{k: getattr(args, k) for k in ("dataset", "context", "objective", "data_root", "data_file")
                           if getattr(args, k) is not None})  # unset ones: the defaults
    classes = dataset_classes(named) if args.classes == ["all"] else args.classes
    out = args.out or f"runs/sweep-{default_folder_name(named)}"
    # the base config; normal class, seed and run directory are set per run by the sweep
    args.out, args.normal_class = str(Path(out) / "base"), [classes[0]]
    base = config_from_args(args)
    run_sweep(base, classes, args.seeds, out, views=args.views, aggregate=args.aggregate,
              eval_batch_size=args.eval_batch_size, progress=not args.quiet, debug=args.debug)
    print((Path(out) / "results.md").read_text(errors="surrogateescape"))  # a non-UTF-8 class name as its bytes
    print(f"wrote {Path(out) / 'results.md'}, results.csv, runs.csv, manifest.json")


# ----------------------------------------------------------------------------- report

def _report(args) -> None:
    from ..report import build_report

    if str(args.out) == "-":
        raise ValueError("--out -: the report is an HTML page written to a file; give a file path (e.g. report.html)")
    _check_run(args.run)
    out = args.out if args.out is not None else args.run / "report.html"  # build_report's default, checked too
    check_output(out, example="report.html", run=args.run, inputs=_run_inputs(args.run))
    path = build_report(args.run, out=out, views=args.views, device=args.device,
                        max_points=args.max_points, progress=not args.quiet)
    print(f"wrote {path}")


def register(sub) -> None:
    p = sub.add_parser("score", help="anomaly scores of a run's test (or val/train) images")
    _run_dir(p)
    _scoring_options(p, scorer_choice=True)
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="which part of the run's split (train: in-sample, each image is in the bank it is scored against)")
    p.add_argument("--per-view", action="store_true", help="also write every view's score")
    p.add_argument("--out", type=named_path, default=None, help="CSV file (default, or -: standard output)")
    p.set_defaults(func=_score)

    p = sub.add_parser("evaluate", help="AUROC / AUPR / FPR95 of both scorers on the run's test split")
    _run_dir(p)
    _scoring_options(p)
    p.add_argument("--scorers", nargs="+", choices=SCORERS, default=list(SCORERS), help="default: all")
    p.add_argument("--target-fpr", type=unit_fraction, default=None,
                   help="threshold calibrated on val normals (default 0.05)")
    p.add_argument("--per-view", action="store_true", help="also write scores_views.npz")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="score image files and label them with a calibrated threshold")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a trained run directory (con2 train --out)")
    source.add_argument("--detector", type=Path,
                        help="a detector bundle (con2 export): scores without the training data; its scorer, "
                             "views, bank dtype, seed and crop scale are the bundle's")
    p.add_argument("inputs", nargs="+", type=named_path, help="image files or folders of images")
    _scoring_options(p, scorer_choice=True)
    # None: not given (a bundle refuses those it fixes); a run's defaults are PREDICT_DEFAULTS
    p.set_defaults(**{k: None for k in PREDICT_DEFAULTS})
    # default None, not 0.05: --threshold refuses a --target-fpr that was given, not the default
    p.add_argument("--target-fpr", type=unit_fraction, default=None,
                   help="false-positive rate on the run's val normals that sets the threshold (default 0.05; "
                        "with --detector, the bundle's threshold)")
    p.add_argument("--threshold", type=float, default=None,
                   help="use this threshold instead of calibrating one (not with --target-fpr)")
    p.add_argument("--format", choices=("csv", "json"), default=None,
                   help="of the output (default: json for an --out ending in .json, else csv)")
    p.add_argument("--out", type=named_path, default=None, help="output file (default, or -: standard output)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="leave out files that cannot be read (named in a warning) instead of stopping")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="a detector bundle of a run (one .safetensors file): model, feature bank, "
                                      "calibrated threshold, pre-processing; predicts without the training data")
    _run_dir(p)
    _scoring_options(p, scorer_choice=True)
    p.add_argument("--target-fpr", type=unit_fraction, default=0.05,
                   help="false-positive rate on the run's val normals that sets the threshold (default 0.05)")
    p.add_argument("--out", type=named_path, required=True, help="the bundle file to write (e.g. detector.safetensors)")
    p.set_defaults(func=_export)

    from .train_cmd import add_train_options

    p = sub.add_parser("sweep", help="train + evaluate every (normal class, seed); resumable")
    add_train_options(p, sweep=True)
    p.add_argument("--classes", nargs="+", required=True, help="normal classes, or 'all'")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds of each class (default 0 1 2)")
    p.add_argument("--out", type=named_path, default=None,
                   help="sweep folder: manifest, runs, tables (default runs/sweep-<dataset>-<context>-<objective>)")
    p.add_argument("--views", type=view_count, default=40, help="test-time views of the evaluation (default 40)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="over views (mean = paper)")
    p.add_argument("--eval-batch-size", type=positive_int, default=256, help="images per encoder call when scoring")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks (of each failed run, too)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("report", help="a self-contained HTML report of a run")
    _run_dir(p)
    p.add_argument("--out", type=named_path, default=None, help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--views", type=view_count, default=None,
                   help="test-time views of the evaluation shown: the run's (con2 evaluate), or 40 if it has none; "
                        "another count than the run's is refused")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--max-points", type=positive_int, default=300, help="samples per group in the PCA")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=_report)
