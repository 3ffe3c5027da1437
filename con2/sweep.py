"""One-class sweeps: every (normal class, seed) of a data set, trained and evaluated, then tabulated.

The sweep folder holds `manifest.json` (the base config, the evaluation settings and every run's
status and metrics), one run directory per (class, seed), and at the end `results.md` /
`results.csv` (per class: AUROC mean ± std over seeds for each scorer; last row: mean ± std over
all classes and seeds) and `runs.csv` (one row per run). The tables cover every run the folder holds:
a later command with more classes or seeds adds to them, one with fewer leaves the others in. Standard deviations are sample standard
deviations (ddof = 1; none, an empty CSV field, for a single value).

Each class and seed is listed once: a repeated seed, or two names of one class ("8" and "08",
"0" and "airplane"), is refused before anything runs, as it would count one run twice; a class the
folder already holds under another name (`--classes cat` after `--classes all`, which lists "3")
keeps that name, so a later command resumes its runs instead of training them again. Run
folders are `class-<class>-seed<seed>` with other characters than A-Z a-z 0-9 _ . - escaped as
%XX, so two classes never share one ("a b" and "a_b" of an image folder).

Resuming: rerunning the same command continues where it stopped. Runs marked done are not
touched; a run whose model exists is only evaluated (after checking it was trained with this
sweep's settings); a half-trained run continues from its checkpoint (`train(..., resume=True)`,
which checks the same). The manifest and the tables are rewritten atomically.

The data files every run reads are checked before the folder is made (con2.data.check_data_source:
a missing file or --data-file is refused once, not met by each run in turn). A run that fails (bad
data for one class, a loss that turns non-finite, ...) is marked failed with its error and the
sweep goes on; the tables are written from the runs that finished, and the sweep
then ends with an error listing the failures (rerunning retries them). Ctrl-C stops the sweep.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import re
import shutil
import traceback
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .config import TrainConfig, absolute_path, is_seed
from .evaluate import check_view_options
from .files import folder_lock, nearest_folder, read_json, replacing, write_json, write_text
from .run import identity_mismatch, run_finished
from .scoring import SCORERS, check_aggregate, check_scorers, view_plan

MANIFEST = "manifest.json"
SWEEP_FORMAT = "con2-sweep/1"
# Fields of the base config that may differ between the sweep's runs or between invocations.
_PER_RUN = ("normal_class", "seed", "out", "device", "pipeline", "checkpoint_every", "compile")


def dataset_classes(cfg: TrainConfig) -> list[str]:
    """The normal classes `--classes all` means for cfg's data set: every class of CIFAR, digits, an
    npz or an image folder (its class folders with training images); MedMNIST's normal class(es)."""
    from .data.datasets import MEDMNIST, DataError, class_names, training_class_folders

    if cfg.dataset in MEDMNIST:
        default, names = MEDMNIST[cfg.dataset]
        return [str(c) for c in (default if default is not None else sorted(names))]
    try:
        if cfg.dataset == "folder":
            return training_class_folders(Path(cfg.data_root))
        return [str(label) for label in sorted(class_names(cfg))]
    except (DataError, OSError, ValueError) as exc:
        raise ValueError(f"--classes all: the classes of --dataset {cfg.dataset} cannot be listed ({exc}); "
                         "list them explicitly") from None


def run_name(cls: str, seed: int) -> str:
    """class-<cls>-seed<seed>, one folder per (class, seed): characters other than A-Z a-z 0-9 _ . -
    are written as %XX (their UTF-8 bytes; a folder name that is not UTF-8, held as lone surrogates
    (PEP 383), its own bytes), so "a b" (class-a%20b-...) and "a_b" never share one."""
    safe = "".join(ch if re.fullmatch(r"[A-Za-z0-9_.-]", ch)
                   else "".join(f"%{b:02X}" for b in ch.encode(errors="surrogateescape")) for ch in str(cls))
    return f"class-{safe}-seed{seed}"


def _legacy_run_name(cls: str, seed: int) -> str:
    """The folder older con2 gave (class, seed): each run of other characters as one _."""
    return f"class-{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(cls))}-seed{seed}"


def _run_keys(out: Path, manifest: dict, todo: list[tuple[str, int]]) -> dict:
    """{(class, seed): its run folder}: run_name, or the legacy name a manifest already holds the run
    under; a folder that holds (or would hold) another class's run is refused, naming both."""
    runs, keys, owner = manifest["runs"], {}, {}
    for c, s in todo:
        key, legacy = run_name(c, s), _legacy_run_name(c, s)
        if key not in runs and (runs.get(legacy) or {}).get("class") == c:
            key = legacy  # a sweep started by an older con2: resumed, not retrained
        entry = runs.get(key)
        if entry is not None and (entry.get("class"), entry.get("seed")) != (c, s):
            raise ValueError(f"{out / key} holds the run of class {entry.get('class')!r} seed {entry.get('seed')}, "
                             f"where class {c!r} seed {s} would go (an older con2 named folders so); "
                             "sweep into another --out")
        if key in owner:
            raise ValueError(f"classes {owner[key][0]!r} and {c!r} would share the run folder {out / key}; "
                             "sweep into another --out")
        keys[(c, s)], owner[key] = key, (c, s)
    return keys


def check_sweep(base: TrainConfig, classes: list[str], seeds: list) -> None:
    """Each seed and each class once: a repeated one would be one run counted twice in the tables
    (or trained twice under two names)."""
    for s in seeds:
        if not is_seed(s):
            raise ValueError(f"--seeds must be integers in [0, 2**63), got {s!r}")
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if dup is not None:
        raise ValueError(f"--seeds lists {dup} twice; list each seed once")
    seen = {}
    for c in classes:
        key = _class_identity(base, c)
        if key in seen:
            same = f"{c!r} twice" if seen[key] == c else f"{seen[key]!r} and {c!r}, the same {base.dataset} class"
            raise ValueError(f"--classes lists {same}; list each class once")
        seen[key] = c


def _class_identity(base: TrainConfig, cls: str):
    """What a class name means to the data set's loader (con2.data.datasets.resolve_classes: an
    index or a case-insensitive name, "8" = "08" = " 8"); folder classes are folder names, exact."""
    from .data.datasets import DataError, class_names, resolve_classes

    if base.dataset == "folder":
        return cls
    key = cls.strip()
    try:
        names = class_names(base)
    except Exception:  # noqa: BLE001 - an unreadable file (its runs report it): as the loader would read
        return int(key) if key.lstrip("-").isdigit() else key.lower()  # it, less index-name aliases
    try:
        return resolve_classes([cls], names, base.dataset)
    except DataError as exc:  # refused before any run: each rerun would train the others, then fail on it
        raise ValueError(f"--classes: {exc}") from None


def _base_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if k not in _PER_RUN}


def load_manifest(out: Path, base: TrainConfig, eval_settings: dict) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {"format": SWEEP_FORMAT, "base_config": _base_dict(base), "eval": eval_settings, "runs": {}}
    manifest = read_json(path)
    if manifest.get("format") != SWEEP_FORMAT:
        raise ValueError(f"{path} is not a con2 sweep manifest")
    old, new = dict(manifest["base_config"]), _base_dict(base)
    for k in ("data_root", "data_file"):  # an older con2 kept them as given: relative to where it ran
        if k in old:
            old[k] = absolute_path(old[k])
    # a setting the manifest lacks (written before it existed) is not compared
    unread = set() if base.reads_data_root() else {"data_root"}  # "data" by default, resolved where it runs
    diff = sorted(k for k in (set(old) | set(new)) - unread if old.get(k, new.get(k)) != new.get(k))
    if diff:
        k = diff[0]
        raise ValueError(f"{out} holds a sweep with {k}={old.get(k)!r}, now {k}={new.get(k)!r}; "
                         "use another --out to start a different sweep")
    if manifest.get("eval") != eval_settings:
        raise ValueError(f"{out} was evaluated with {manifest.get('eval')}, now {eval_settings}; "
                         "use the same evaluation options or another --out")
    return manifest


def run_sweep(base: TrainConfig, classes: Sequence[str] | str, seeds: Iterable[int], out: str | Path,
              views: int = 40, aggregate: str = "mean", scorers: Sequence[str] = SCORERS,
              eval_batch_size: int = 256, progress: bool = True, debug: bool = False) -> dict:
    """Train and evaluate every (class, seed); returns the summary of every run in `out` (also
    written as results.md/csv).
    debug: print the traceback of each run that fails (the sweep still goes on)."""
    out, base = Path(out), base.with_absolute_paths()  # resumable from any working directory
    if isinstance(classes, str):  # one class, not one per character
        classes = [classes]
    if "all" in list(classes) and len(classes) > 1 and base.dataset != "folder":
        raise ValueError("--classes all means every class of the data set: give it alone")
    if list(classes) == ["all"]:  # a folder's class named "all" is among them
        classes = dataset_classes(base)
    classes, seeds = [str(c) for c in classes], list(seeds)
    if not classes or not seeds:
        raise ValueError("a sweep needs at least one class and one seed")
    check_sweep(base, classes, seeds)
    seeds = [int(s) for s in seeds]
    # the options every run shares, checked once before any run starts
    dataclasses.replace(base, normal_class=[classes[0]], seed=seeds[0]).validate()
    view_plan(views, None)  # the evaluation's, too: else each run would fail after its training
    views, scorers, aggregate = int(views), list(check_scorers(scorers)), check_aggregate(aggregate)
    check_view_options(views, None, aggregate)
    with _held_folder(out):  # two sweeps into one folder would each keep their own manifest, the last one's kept
        return _sweep(base, classes, seeds, out, views, aggregate, scorers, eval_batch_size, progress, debug)


@contextlib.contextmanager
def _held_folder(out: Path):
    """`out`, made if missing, locked against another sweep while the block runs; a folder made here
    that the sweep left empty (it failed its checks) is removed again."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give the folder to write the sweep into")
    if (out / "config.json").is_file():
        raise FileExistsError(f"--out {out} holds a training run; give the sweep a folder of its own")
    folder = nearest_folder(out, "--out", out)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: the folder {folder} is not writable")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, "con2 sweep"):
            yield
    finally:
        if made and [p.name for p in out.iterdir()] == [".lock"]:
            shutil.rmtree(out, ignore_errors=True)


def _sweep(base, classes, seeds, out, views, aggregate, scorers, eval_batch_size, progress, debug) -> dict:
    eval_settings = {"views": views, "aggregate": aggregate, "scorers": scorers}
    manifest = load_manifest(out, base, eval_settings)
    classes = _as_named_before(base, manifest, classes)
    todo = [(c, s) for c in classes for s in seeds]
    run_keys = _run_keys(out, manifest, todo)
    if any((manifest["runs"].get(run_keys[t]) or {}).get("status") != "done" for t in todo):
        from .data import DataError, check_data_source

        try:  # what every run reads, checked once: else each run would fail on it in turn
            check_data_source(base)
        except DataError as exc:
            raise ValueError(f"{exc} (nothing was run)") from None
    for c, s in todo:
        key = run_keys[(c, s)]
        manifest["runs"].setdefault(key, {"class": c, "seed": s, "dir": key, "status": "pending"})
    write_json(out / MANIFEST, manifest)
    try:
        _train_and_evaluate(base, todo, run_keys, manifest, out, views, scorers, aggregate, eval_batch_size,
                            progress, debug)
    except KeyboardInterrupt:
        print("\nsweep stopped; rerun the same con2 sweep command to continue it", flush=True)
        raise
    # the tables are the folder's: runs of an earlier command (other classes or seeds) stay in them
    every_key = list(manifest["runs"])
    every_class = list(dict.fromkeys(manifest["runs"][k]["class"] for k in every_key))
    summary = summarize(manifest, every_key, every_class, scorers)
    write_tables(out, summary, manifest, every_key, scorers)
    keys = [run_keys[(c, s)] for c, s in todo]
    failed = [k for k in keys if manifest["runs"][k]["status"] == "failed"]
    if failed:
        finished = sum(manifest["runs"][k]["status"] == "done" for k in every_key)
        raise SweepFailed(f"{len(failed)} of {len(keys)} runs failed (the tables in {out} hold the "
                          f"{finished} that finished; rerun to retry): "
                          + "; ".join(f"{k}: {manifest['runs'][k]['error']}" for k in failed[:3]))
    return summary


def _as_named_before(base: TrainConfig, manifest: dict, classes: list[str]) -> list[str]:
    """Each class under the name the sweep folder already holds its runs by ("3" when "cat" is
    asked after `--classes all`, "8" for "08"): one class, one set of runs in the tables."""
    named = {}
    for entry in manifest["runs"].values():
        named.setdefault(_class_identity(base, str(entry["class"])), entry["class"])
    return [named.get(_class_identity(base, c), c) for c in classes]


def _train_and_evaluate(base, todo, run_keys, manifest, out, views, scorers, aggregate, eval_batch_size,
                        progress, debug) -> None:
    """Each (class, seed) in turn, its status kept in the manifest; a failing run is recorded and
    the others go on (Ctrl-C stops them all)."""
    from . import train as train_mod
    from .evaluate import evaluate_run

    for i, (c, s) in enumerate(todo, 1):
        key = run_keys[(c, s)]
        entry = manifest["runs"][key]
        if entry["status"] == "done":
            if progress:
                print(f"[{i}/{len(todo)}] {key}: done, skipped", flush=True)
            continue
        run_dir = out / key
        cfg = dataclasses.replace(base, normal_class=[c], seed=s, out=str(run_dir)).validate()
        entry.pop("error", None)
        try:
            if not run_finished(run_dir):
                if progress:
                    print(f"[{i}/{len(todo)}] {key}: training", flush=True)
                entry["status"] = "training"
                write_json(out / MANIFEST, manifest)
                # a run begun before continues (or restarts, said); a run not begun is trained afresh
                train_mod.train(cfg, progress=progress, resume=run_dir.exists(),
                                continue_with="the same con2 sweep command")
            else:  # its checkpoint is checked by train's resume; a finished run only here
                wrong = identity_mismatch(read_json(run_dir / "config.json"), cfg)
                if wrong:  # a folder left by another sweep (its manifest deleted): not this sweep's run
                    raise ValueError(f"{run_dir} holds a run trained with other settings ({wrong}); "
                                     "sweep into another --out or move that run away")
            if progress:
                print(f"[{i}/{len(todo)}] {key}: evaluating", flush=True)
            entry["status"] = "evaluating"  # what a Ctrl-C from here leaves in the manifest
            write_json(out / MANIFEST, manifest)
            metrics = evaluate_run(run_dir, views=views, scorers=scorers, aggregate=aggregate,
                                   device=base.device, batch_size=eval_batch_size, progress=progress)
            entry.update(status="done", metrics={k: metrics[k] for k in scorers})
        except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:  # this run only; Ctrl-C stops all
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            if debug:
                traceback.print_exc()
            entry.pop("metrics", None)
            if progress:
                print(f"[{i}/{len(todo)}] {key}: FAILED: {entry['error']}", flush=True)
        write_json(out / MANIFEST, manifest)


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; the others are done and tabulated."""


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; None for the deviation of a single run (undefined, not 0)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else None


def summarize(manifest: dict, keys: list[str], classes: list[str], scorers: Sequence[str]) -> dict:
    """{'classes': {class: {scorer: (mean, std, n)}}, 'all': {scorer: (mean, std, n)}} of AUROC."""
    runs = [manifest["runs"][k] for k in keys if manifest["runs"][k]["status"] == "done"]
    per_class = {}
    for c in classes:
        rs = [r for r in runs if r["class"] == c]
        per_class[c] = {s: (*_mean_std([r["metrics"][s]["auroc"] for r in rs]), len(rs)) for s in scorers if rs}
    overall = {s: (*_mean_std([r["metrics"][s]["auroc"] for r in runs]), len(runs)) for s in scorers if runs}
    return {"classes": per_class, "all": overall}


def _fmt(ms) -> str:
    return f"{ms[0] * 100:.1f}" if ms[1] is None else f"{ms[0] * 100:.1f} ± {ms[1] * 100:.1f}"


def write_tables(out: Path, summary: dict, manifest: dict, keys: list[str], scorers: Sequence[str]) -> None:
    base = manifest["base_config"]
    head = "| class | runs | " + " | ".join(f"AUROC {s.upper()} (%)" for s in scorers) + " |"
    lines = [f"# Sweep: {base['dataset']}, context {base['context']}, objective {base['objective']}, "
             f"{base['epochs']} epochs", "", head, "|" + "---|" * (2 + len(scorers))]
    for c, row in summary["classes"].items():
        if row:
            n = next(iter(row.values()))[2]
            lines.append(f"| {c} | {n} | " + " | ".join(_fmt(row[s]) for s in scorers) + " |")
    if summary["all"]:
        n = next(iter(summary["all"].values()))[2]
        lines.append(f"| **mean over classes and seeds** | {n} | "
                     + " | ".join(f"**{_fmt(summary['all'][s])}**" for s in scorers) + " |")
    lines += ["", "Mean ± sample standard deviation of the test AUROC (none for a single run); test-time views: "
              f"{manifest['eval']['views']}, aggregate: {manifest['eval']['aggregate']}."]
    # each file replaced in one step; a class (folder) name that is not UTF-8 is written as its bytes
    write_text(out / "results.md", "\n".join(lines) + "\n")
    with replacing(out / "results.csv") as tmp, open(tmp, "w", newline="", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "runs", *[f"{s}_auroc_{x}" for s in scorers for x in ("mean", "std")]])
        for c, row in list(summary["classes"].items()) + [("all", summary["all"])]:
            if row:
                n = next(iter(row.values()))[2]
                w.writerow([c, n, *["" if row[s][i] is None else f"{row[s][i]:.6f}" for s in scorers for i in (0, 1)]])
    with replacing(out / "runs.csv") as tmp, open(tmp, "w", newline="", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "seed", "status", *[f"{s}_{m}" for s in scorers for m in ("auroc", "aupr", "fpr95")]])
        for k in keys:
            r = manifest["runs"][k]
            vals = [f"{r['metrics'][s][m]:.6f}" if r["status"] == "done" else "" for s in scorers
                    for m in ("auroc", "aupr", "fpr95")]
            w.writerow([r["class"], r["seed"], r["status"], *vals])
