"""Run one row of the paper's tables: paper preset, several seeds, both scorers, 40 views.

    python benchmarks/reproduce/run.py ROW [ROW ...] --data-root DIR [--seeds 0 1 2]
        [--epochs N] [--parallel P] [--results benchmarks/reproduce/results.jsonl]

Each seed is scored twice: with the test-time views of METHOD section 7 (the training views, crops
of 8-100 % of the area; the row's number) and, as a second column, with CSI's evaluation views
(crops fixed at 54 % of the area, CSI's `--resize_factor 0.54 --resize_fix`, where the paper's
"40 test-time augmentations" come from). The second column is reported beside the first, never
chosen from the two afterwards.

Seeds (and rows) run as parallel processes (--parallel) so small models share one GPU.
Each finished row appends one JSON line to the results file: AUROC mean +- std and per seed
for both scorers, the schedule, wall time, training views/s, device and commit.

--stop-at T (a Unix time) time-boxes the call: training checkpoints and leaves at T, and the same
command run again (same --runs) resumes it; a row is written once all its seeds have finished
and been evaluated (an evaluation is kept in its run directory, never repeated). This lets one
run span several 10-minute GPU calls on a machine that stays warm between them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[2]))  # con2, where it is not installed (the GPU machine)
from rows import ROWS, row_config  # noqa: E402

CSI_CROP_SCALE = (0.54, 0.54)


def _commit() -> str:
    if os.environ.get("CON2_COMMIT"):  # the GPU machine gets a copy of the tree without .git
        return os.environ["CON2_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
        # a tree that differs from HEAD (edits not committed; a copy whose .git is stale) is not that commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}+dirty" if head and dirty else head or "unknown"


def _read_json(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.exists() else default


def seed_dir(runs: str | Path, row_name: str, seed: int) -> Path:
    """The run folder of one seed of a row."""
    return Path(runs) / f"{row_name}-s{seed}"


def checkpoint_step(out: Path) -> int:
    """The step a run's checkpoint holds (0 without one); mapped, not read, from disk."""
    import torch

    ckpt = out / "checkpoint.pt"
    if not ckpt.exists():
        return 0
    return int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)["global_step"])


def run_seed(row_name: str, seed: int, args: dict) -> dict:
    import torch

    from con2.config import apply_preset
    from con2.data import ViewConfig
    from con2.evaluate import evaluate_run

    row = ROWS[row_name]
    out = seed_dir(args["runs"], row_name, seed)
    cfg = row_config(row, args["data_root"], seed=seed, out=str(out), amp=args["amp"])
    explicit = {"image_size", "center_crop"} | ({"epochs"} if args["epochs"] else set())  # the row's own
    if args["epochs"]:
        cfg.epochs = args["epochs"]
    if args["width"]:
        cfg.width = args["width"]
    if args["max_train_samples"]:
        cfg.max_train_samples = args["max_train_samples"]
    if args["batch_size"]:
        cfg.batch_size, explicit = args["batch_size"], explicit | {"batch_size"}
    apply_preset(cfg, "paper", explicit)
    cfg.checkpoint_every = max(cfg.epochs, 1)  # runs are short-lived on a lent machine
    from con2.run import run_finished
    from con2.train import train

    timing = _read_json(out / "reproduce_time.json", {"train_s": 0.0, "calls": 0})
    if not run_finished(out):  # else trained by an earlier call
        start_step = checkpoint_step(out)
        print(f"{row_name} seed {seed}: " + (f"resuming at step {start_step}" if start_step else "starting from step 0"),
              flush=True)
        t0 = time.perf_counter()
        try:
            train(cfg, progress=False, resume=True, deadline=args.get("stop_at"))
        finally:  # also when stopped by a signal (a stray runner's SIGTERM): that call trained too
            timing = {"train_s": timing["train_s"] + time.perf_counter() - t0, "calls": timing["calls"] + 1}
            (out / "reproduce_time.json").write_text(json.dumps(timing))
    if not run_finished(out):
        return {"seed": seed, "paused": True, "step": checkpoint_step(out), "epochs": cfg.epochs}
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [l["views_per_s"] for l in lines[len(lines) // 10:]] or [0.0]
    def evaluated(m: dict, scale) -> bool:  # by an earlier call, with this protocol
        return m.get("views") == args["views"] and m.get("crop_scale") == list(scale) and "lh" in m

    metrics = _read_json(out / "metrics.json", {})
    if not evaluated(metrics, ViewConfig(size=1).scale):  # the training views' crops
        metrics = evaluate_run(out, views=args["views"], progress=False)
    csi_file = out / "metrics_csi_views.json"
    csi = _read_json(csi_file, {})
    if not evaluated(csi, CSI_CROP_SCALE):
        csi = evaluate_run(out, views=args["views"], progress=False, write=False, crop_scale=CSI_CROP_SCALE)
        csi_file.write_text(json.dumps(csi, default=float))
    return {"seed": seed, "nnd": metrics["nnd"]["auroc"], "lh": metrics["lh"]["auroc"],
            "nnd_csi": csi["nnd"]["auroc"], "lh_csi": csi["lh"]["auroc"],
            "train_s": round(timing["train_s"], 1), "calls": timing["calls"], "eval_s": metrics["seconds"],
            "views_per_s": round(statistics.median(rates)),
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "center_crop": cfg.center_crop, "view_size": cfg.center_crop or cfg.image_size,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def timed_seed(row_name: str, seed: int, args: dict) -> tuple[dict, float, float]:
    """run_seed, with the wall-clock times (Unix, comparable across the pool's processes) it started and
    ended: a row's wall time runs from its first seed's start, not from the call's (queue time excluded)."""
    start = time.time()
    res = run_seed(row_name, seed, args)
    return res, start, time.time()


def row_command(row_name: str, seeds: list[int], args: dict) -> str:
    """The run.py command that makes this row again (machine-specific options left out)."""
    parts = ["python benchmarks/reproduce/run.py", row_name, "--data-root", args["data_root"],
             "--seeds", *map(str, seeds)]
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--width", "width"),
                      ("--max-train-samples", "max_train_samples")):
        if args.get(key) is not None:
            parts += [flag, str(args[key])]
    if args.get("views", 40) != 40:
        parts += ["--views", str(args["views"])]
    if not args.get("amp", True):
        parts.append("--no-amp")
    return " ".join(parts)


def summarise(row_name: str, seeds: list[dict], wall: float, args: dict) -> dict:
    row = ROWS[row_name]
    out = {"row": row_name, "dataset": row.dataset, "context": row.context, "objective": row.objective,
           "paper": row.paper, "paper_scorer": row.scorer, "epochs": seeds[0]["epochs"],
           "batch_size": seeds[0]["batch_size"], "views": args["views"], "amp": args["amp"],
           "seeds": seeds, "wall_s": round(wall, 1), "device": seeds[0]["device"], "commit": _commit(),
           "date": time.strftime("%Y-%m-%d"), "extra": {**row.extra, **({"n_train": row.n_train} if row.n_train else {})},
           "command": row_command(row_name, [r["seed"] for r in seeds], args)}
    for key in ("width", "max_train_samples"):  # smoke-test settings: never merged with the paper's runs
        if args.get(key) is not None:
            out[key] = args[key]
    if os.environ.get("CON2_LAUNCHER"):  # the outer command (device_job.py) that ran this one
        out["launched_by"] = os.environ["CON2_LAUNCHER"]
    for s in ("nnd", "lh", "nnd_csi", "lh_csi"):
        vals = [100 * r[s] for r in seeds]
        out[s] = {"mean": round(statistics.mean(vals), 2),
                  "std": round(statistics.stdev(vals), 2) if len(vals) > 1 else 0.0,
                  "per_seed": [round(v, 2) for v in vals]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help=f"row names: {', '.join(ROWS)}")
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="shorten the paper schedule (stated in results)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--width", type=int, default=None, help="ResNet18 width (64 = paper; smaller for smoke tests)")
    p.add_argument("--max-train-samples", type=int, default=None, help="smoke tests only")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument("--stop-at", type=float, default=None,
                   help="Unix time at which training checkpoints and leaves; run again to resume")
    p.add_argument("--results", default=str(Path(__file__).with_name("results.jsonl")))
    a = p.parse_args(argv)
    unknown = [r for r in a.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row {unknown[0]!r}; known: {', '.join(ROWS)}")
    if a.views < 2 or a.views % 2:  # every row is also scored with CSI's crops: views 0 makes none
        p.error(f"--views must be an even number >= 2 (test-time crops; METHOD: 40), got {a.views}")
    args = vars(a)
    jobs = [(r, s) for r in a.rows for s in a.seeds]
    spans: dict[str, list] = {r: [] for r in a.rows}  # (start, end) of each seed's work in this call
    done: dict[str, list] = {r: [] for r in a.rows}
    paused = failed = False
    Path(a.runs).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=a.parallel, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
        futures = {ex.submit(timed_seed, r, s, args): (r, s) for r, s in jobs}
        for fut in __import__("concurrent.futures").futures.as_completed(futures):
            r, s = futures[fut]
            try:
                res, *span = fut.result()
                spans[r].append(span)
            except Exception as exc:  # this row fails; the other rows are still written
                import traceback

                traceback.print_exception(exc)
                print(f"{r} seed {s}: FAILED ({type(exc).__name__}: {exc})", flush=True)
                res = {"seed": s, "failed": True}
                failed = True
            done[r].append(res)
            if res.get("failed"):
                pass
            elif res.get("paused"):
                print(f"{r} seed {s}: paused at step {res['step']} (schedule {res['epochs']} epochs)", flush=True)
            else:
                print(f"{r} seed {s}: NND {100 * res['nnd']:.2f}  LH {100 * res['lh']:.2f}  "
                      f"train {res['train_s']:.0f}s  {res['views_per_s']} views/s", flush=True)
            if len(done[r]) < len(a.seeds):
                continue
            wall_file = Path(a.runs) / f"{r}.wall_s"  # the row's wall time, summed over calls
            wall = float(wall_file.read_text()) if wall_file.exists() else 0.0
            if spans[r]:  # from the row's first seed's start to its last seed's end in this call
                wall += max(end for _, end in spans[r]) - min(start for start, _ in spans[r])
            wall_file.write_text(f"{wall:.1f}")
            if any(x.get("failed") for x in done[r]):
                print(f"== {r}: FAILED (see above); not written", flush=True)
            elif any(x.get("paused") for x in done[r]):
                paused = True
                print(f"== {r}: paused; run the same command again (same --runs) to continue", flush=True)
            else:
                summary = summarise(r, sorted(done[r], key=lambda x: x["seed"]), wall, args)
                # a row is written once: a later call of the same command finds the same seeds' results
                # (device_job.py forgets the rows of a runner whose call was killed: written again)
                marker = Path(a.runs) / f"{r}.s{'_'.join(map(str, a.seeds))}.written.json"
                if json.loads(json.dumps(summary["seeds"])) == _read_json(marker, {}).get("seeds"):
                    print(f"== {r}: written by an earlier call ({marker}; delete it to write the row again)",
                          flush=True)
                    continue
                with open(a.results, "a") as f:
                    f.write(json.dumps(summary) + "\n")
                marker.write_text(json.dumps({"pid": os.getpid(), "results": a.results, "seeds": summary["seeds"]}))
                print(f"== {r}: NND {summary['nnd']['mean']:.1f} ± {summary['nnd']['std']:.1f}  "
                      f"LH {summary['lh']['mean']:.1f} ± {summary['lh']['std']:.1f}  (paper {r and ROWS[r].paper})",
                      flush=True)
    print("FAILED" if failed else "PAUSED" if paused else "DONE", flush=True)  # the last line: call again?
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
