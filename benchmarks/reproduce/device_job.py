"""Fit rows into a lent GPU's time: start them on the paper schedule, measure the real step
rate with all processes sharing the GPU, and restart once on a shortened schedule (stated in
the results) if the paper schedule cannot finish inside --budget-s.

    python benchmarks/reproduce/device_job.py ROW [ROW ...] --data-root .carry/data --budget-s 480

With --steps-per-s (a step rate measured before, per process, with the same processes sharing
the GPU) there is no probe: the schedule is fitted once and the runs start once.

With --chain the schedule is never shortened: the runs train until the call's budget is spent,
checkpoint into --runs (an ignored folder of the working tree, which stays on the GPU machine
while it is warm, i.e. when the next call comes within its idle time) and the same command
resumes them; the last output line says PAUSED (call again), DONE (results written) or FAILED.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import checkpoint_step, seed_dir  # noqa: E402


def measured_views_per_s(runs: Path) -> float | None:
    """Median over processes of the latest training rate (views/s), past start-up."""
    rates = []
    for m in runs.glob("*/metrics.jsonl"):
        lines = [json.loads(l) for l in m.read_text().splitlines()]
        if len(lines) >= 3:  # the first lines include start-up and cuDNN autotuning
            rates.append(lines[-1]["views_per_s"])
    return sorted(rates)[len(rates) // 2] if rates else None


def fit_epochs(epochs: int, steps_per_epoch: int, steps_per_s: float, seconds: float) -> int:
    """The paper's `epochs` if they fit in `seconds` of training at `steps_per_s`, else the most
    that do (at least 1)."""
    return max(1, min(epochs, int(seconds * steps_per_s / steps_per_epoch)))


def stop_stray_runner(pid_file: Path, wait_s: float = 90) -> None:
    """A call killed at its time limit leaves its runner going (it has a session of its own, which
    outlives the call on the GPU machine): stop it with SIGTERM, which makes every run checkpoint,
    before this call resumes the same runs; SIGKILL only if it does not leave in `wait_s`. The rows
    that runner wrote went to the killed call's results file, which may not have come back: they are
    forgotten here, so that this call writes them again."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        print(f"stopping the runner {pid} left by an earlier call (its runs checkpoint first)", flush=True)
        deadline = time.monotonic() + wait_s
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it had left by itself
        pass
    for marker in pid_file.parent.glob("*.written.json"):  # run.py's record of the rows it wrote
        if json.loads(marker.read_text()).get("pid") == pid:
            marker.unlink()
    pid_file.unlink()


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not count; Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_progress(run: Path) -> tuple[int, float] | None:
    """(step of its checkpoint, last measured steps/s) of an unfinished run; None when it finished
    or has not started."""
    from con2.run import run_finished

    if run_finished(run) or not (run / "checkpoint.pt").exists():
        return None
    step = checkpoint_step(run)
    cfg = json.loads((run / "config.json").read_text())
    metrics = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    views_s = json.loads(metrics[-1])["views_per_s"] if metrics else 0.0
    return step, views_s / ((2 if cfg["objective"] == "simclr" else 4) * cfg["batch_size"])


def training_left_s(progress: list[tuple[int, float] | None], total_steps: int, fresh: int,
                    steps_per_s: float | None, soonest: bool = False) -> float | None:
    """Seconds of training the slowest run (with `soonest`, the run closest to its end) still needs
    (rates measured by earlier calls, else --steps-per-s); None when a rate is unknown. `fresh`:
    runs not started yet."""
    need = [(total_steps - step) / rate if rate > 0 else None for step, rate in filter(None, progress)]
    need += [total_steps / steps_per_s if steps_per_s else None] * fresh
    return None if not need or None in need else (min if soonest else max)(need)


def chain_stop_at(now: float, budget_s: float, eval_s: float, startup_s: float, left_s: float | None) -> float:
    """When this call's training must leave; `left_s`: the training that the run closest to its end
    still needs. A run that ends its training inside the call is evaluated in it, so the evaluation's
    time is kept unless no run can end before the call does (even with no start-up), or nobody knows;
    only then does the call train to its end."""
    finishing = left_s is None or left_s <= budget_s
    return now + budget_s - (eval_s if finishing else 15)


def chain_progress(runs: list[Path], total_steps: int, train_s_per_call: float) -> list[str]:
    """Per unfinished run: its step, its last step rate and how many more calls of this budget it needs."""
    import math

    lines = []
    for run in runs:
        progress = run_progress(run)
        if progress is None:
            continue
        step, rate = progress
        more = f"~{math.ceil((total_steps - step) / rate / train_s_per_call)} more call(s)" if rate > 0 else "rate unknown"
        lines.append(f"{run.name}: step {step}/{total_steps}, {rate:.1f} steps/s, {more}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("rows", nargs="+")
    p.add_argument("--data-root", required=True)
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--probe-s", type=float, default=75)
    p.add_argument("--steps-per-epoch", type=int, required=True, help="of the rows (same data set)")
    p.add_argument("--epochs", type=int, default=2048)
    p.add_argument("--eval-s", type=float, default=60, help="time kept for the 40-view evaluation")
    p.add_argument("--steps-per-s", type=float, default=None, help="known step rate per process: no probe")
    p.add_argument("--startup-s", type=float, default=30, help="process start-up kept aside with --steps-per-s")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", default=str(HERE / "results.jsonl"))
    p.add_argument("--chain", action="store_true", help="full schedule across calls (see above)")
    p.add_argument("--runs", default=None, help="run folder (default runs/device-probe; runs/device-chain with --chain)")
    a, passthrough = p.parse_known_args(argv)  # other options go to run.py as they are (--views, --width, ...)
    t_start, t_call = time.perf_counter(), time.time()  # the budget counts from here
    n_proc = len(a.rows) * len(a.seeds)

    def launch(epochs: int, runs: Path, stop_at: float | None = None):
        cmd = [sys.executable, str(HERE / "run.py"), *a.rows, "--data-root", a.data_root, "--epochs", str(epochs),
               "--parallel", str(n_proc), "--runs", str(runs), "--results", a.results, "--seeds", *map(str, a.seeds)]
        cmd += (["--stop-at", f"{stop_at:.0f}"] if stop_at else []) + passthrough
        print("$", " ".join(cmd), flush=True)
        launcher = " ".join(["python benchmarks/reproduce/device_job.py", *(argv if argv is not None else sys.argv[1:])])
        return subprocess.Popen(cmd, start_new_session=True,  # its own group: killed whole
                                env={**os.environ, "CON2_LAUNCHER": launcher})

    if a.chain:
        runs = Path(a.runs or "runs/device-chain")
        runs.mkdir(parents=True, exist_ok=True)
        stop_stray_runner(runs / "runner.pid")  # may take a while: the budget counts from t_call
        total = a.epochs * a.steps_per_epoch
        mine = [seed_dir(runs, r, s) for r in a.rows for s in a.seeds]
        progress = [run_progress(r) for r in mine]
        fresh = sum(not (r / "checkpoint.pt").exists() for r in mine)
        left_s = training_left_s(progress, total, fresh, a.steps_per_s)
        soonest_s = training_left_s(progress, total, fresh, a.steps_per_s, soonest=True)
        stop_at = chain_stop_at(t_call, a.budget_s, a.eval_s, a.startup_s, soonest_s)
        print(f"training left: {'unknown' if left_s is None else f'{left_s:.0f} s'}; this call trains until "
              f"{stop_at - time.time():.0f} s from now", flush=True)
        proc = launch(a.epochs, runs, stop_at=stop_at)
        (runs / "runner.pid").write_text(str(proc.pid))
        rc = proc.wait()
        (runs / "runner.pid").unlink(missing_ok=True)
        left = chain_progress(mine, total, max(1.0, a.budget_s - a.startup_s - 15))
        status = f"FAILED (runner exit code {rc})" if rc else "PAUSED" if left else "DONE"
        print("\n".join(left + [status]), flush=True)  # the last line: call again?
        return rc
    runs = Path(a.runs or "runs/device-probe")
    shutil.rmtree(runs, ignore_errors=True)
    if a.steps_per_s:
        epochs = fit_epochs(a.epochs, a.steps_per_epoch, a.steps_per_s, a.budget_s - a.eval_s - a.startup_s)
        print(f"known rate {a.steps_per_s:.1f} steps/s per process: {epochs} epochs", flush=True)
        return launch(epochs, runs).wait()
    proc = launch(a.epochs, runs)
    time.sleep(a.probe_s)
    views_s = measured_views_per_s(runs) if proc.poll() is None else None
    if views_s:
        cfg = json.loads(next(runs.glob("*/config.json")).read_text())
        step_rate = views_s / ((2 if cfg["objective"] == "simclr" else 4) * cfg["batch_size"])
        need = a.epochs * a.steps_per_epoch / step_rate + a.eval_s
        left = a.budget_s - (time.perf_counter() - t_start)
        print(f"probe: {step_rate:.1f} steps/s per process; the schedule needs {need:.0f} s more, {left:.0f} s left",
              flush=True)
        if need > left:
            os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
            proc.wait()
            time.sleep(3)
            # a restart pays start-up again: keep a margin for it
            usable = a.budget_s - (time.perf_counter() - t_start) - a.eval_s - 40
            epochs = fit_epochs(a.epochs, a.steps_per_epoch, step_rate, usable)
            print(f"shortening the schedule to {epochs} epochs", flush=True)
            shutil.rmtree(runs, ignore_errors=True)
            proc = launch(epochs, runs)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
