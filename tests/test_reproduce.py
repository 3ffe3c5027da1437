"""The reproduction harness end to end at a tiny CPU schedule (the real rows run on a GPU)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def test_harness_runs_a_row_and_renders_results(tmp_path):
    data = shared_file("breastmnist.npz").parent
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks/reproduce/run.py"), "breast28-invert", "--data-root", str(data),
           "--seeds", "0", "1", "--epochs", "1", "--width", "4", "--max-train-samples", "32", "--views", "2",
           "--parallel", "1", "--runs", str(tmp_path / "runs"), "--results", str(results), "--no-amp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(results.read_text().splitlines()[-1])
    assert row["row"] == "breast28-invert" and row["paper"] == 81.7 and row["epochs"] == 1
    assert [s["seed"] for s in row["seeds"]] == [0, 1]
    for s in ("nnd", "lh", "nnd_csi", "lh_csi"):  # the METHOD views, and CSI's evaluation crops beside them
        assert len(row[s]["per_seed"]) == 2 and all(0 <= v <= 100 for v in row[s]["per_seed"])
    csi = json.loads((tmp_path / "runs" / "breast28-invert-s1" / "metrics_csi_views.json").read_text())
    assert csi["crop_scale"] == [0.54, 0.54] and row["nnd_csi"]["per_seed"][1] == round(100 * csi["nnd"]["auroc"], 2)
    assert json.loads((tmp_path / "runs" / "breast28-invert-s1" / "metrics.json").read_text())["crop_scale"] == [0.08, 1.0]
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/reproduce/report.py"), "--results", str(results),
                    "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    text = out.read_text()
    assert "| breast28-invert |" in text and "81.7" in text and "Not run yet" in text


def test_chained_calls_resume_a_row_and_write_it_once(tmp_path):
    # --chain: a call whose budget is spent pauses every seed after a checkpoint; the same command
    # resumes them, and the row is written only when all seeds are trained and evaluated
    data = shared_file("breastmnist.npz").parent
    results, runs = tmp_path / "results.jsonl", tmp_path / "runs"
    tiny = ["--width", "4", "--max-train-samples", "32", "--views", "2", "--no-amp", "--epochs", "2"]

    def call(budget_s):
        cmd = [sys.executable, str(ROOT / "benchmarks/reproduce/device_job.py"), "breast28-flip", "--chain",
               "--data-root", str(data), "--seeds", "0", "1", "--steps-per-epoch", "1", "--budget-s", str(budget_s),
               "--eval-s", "5", "--runs", str(runs), "--results", str(results), *tiny]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = call(budget_s=5)  # the deadline is now: one step each, then a checkpoint
    assert out.strip().splitlines()[-1] == "PAUSED" and "--epochs 2" in out
    assert "breast28-flip-s0: step 1/2, " in out and "more call(s)" in out  # what is left, per run
    assert not results.exists() and (runs / "breast28-flip-s0" / "checkpoint.pt").exists()
    out = call(budget_s=600)
    assert "breast28-flip seed 0: resuming at step 1" in out and out.strip().splitlines()[-1] == "DONE"
    row = json.loads(results.read_text())
    assert len(results.read_text().splitlines()) == 1 and row["epochs"] == 2
    assert [(s["seed"], s["calls"]) for s in row["seeds"]] == [(0, 2), (1, 2)]
    # the row records the run.py command that makes it again, and the device_job call that ran it
    assert row["command"].startswith("python benchmarks/reproduce/run.py breast28-flip --data-root")
    assert "--seeds 0 1 --epochs 2 --width 4 --max-train-samples 32 --views 2 --no-amp" in row["command"]
    assert row["launched_by"].startswith("python benchmarks/reproduce/device_job.py breast28-flip --chain")
    metrics = json.loads((runs / "breast28-flip-s1" / "metrics.json").read_text())
    assert row["nnd"]["per_seed"][1] == round(100 * metrics["nnd"]["auroc"], 2)
    out = call(budget_s=600)  # finished runs are neither trained nor evaluated again, the row not written again
    assert out.strip().splitlines()[-1] == "DONE" and "written by an earlier call" in out
    assert results.read_text().splitlines() == [json.dumps(row)]


def test_a_stray_runner_is_stopped_with_sigterm_before_runs_resume(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from device_job import stop_stray_runner

    # a runner left by a killed call: its own session, checkpoints (here: writes a file) on SIGTERM
    code = ("import signal, sys, time, pathlib\n"
            "def bye(*_): pathlib.Path(sys.argv[1]).write_text('checkpointed'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "pathlib.Path(sys.argv[1] + '.ready').touch()\n"
            "time.sleep(60)\n")
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker)], start_new_session=True)
    while not Path(str(marker) + ".ready").exists():
        assert proc.poll() is None
    pid_file = tmp_path / "runner.pid"
    pid_file.write_text(str(proc.pid))
    # rows written by that runner went to its killed call's results file: forgotten, to be written again
    (tmp_path / "row-a.s0.written.json").write_text(json.dumps({"pid": proc.pid, "seeds": []}))
    (tmp_path / "row-b.s0.written.json").write_text(json.dumps({"pid": proc.pid + 1, "seeds": []}))
    stop_stray_runner(pid_file, wait_s=30)
    assert proc.wait(timeout=5) == 0 and marker.read_text() == "checkpointed"
    assert not (tmp_path / "row-a.s0.written.json").exists() and (tmp_path / "row-b.s0.written.json").exists()
    assert not pid_file.exists()
    stop_stray_runner(pid_file)  # no such process any more: nothing to do


def test_a_runner_that_left_after_its_call_was_killed_has_its_rows_written_again(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from device_job import stop_stray_runner

    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()  # the runner finished (and wrote its rows) after its call had been killed
    pid_file = tmp_path / "runner.pid"
    pid_file.write_text(str(proc.pid))
    (tmp_path / "row-a.s0.written.json").write_text(json.dumps({"pid": proc.pid, "seeds": []}))
    stop_stray_runner(pid_file)
    assert not (tmp_path / "row-a.s0.written.json").exists() and not pid_file.exists()


def test_a_chained_call_counts_its_budget_from_its_start(tmp_path, monkeypatch):
    # stopping a stray runner can take up to 90 s: the training deadline must not move by that much
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    import device_job

    launched = []

    class Runner:
        pid = 2 ** 22 + 7

        def __init__(self, cmd, **kw):
            launched.append(cmd)

        def wait(self):
            return 0

    clock = [1_700_000_000.25]  # the call's clock: 3 s pass while the stray runner is stopped, nothing else

    def stop_stray_runner(pid_file):
        clock[0] += 3

    monkeypatch.setattr(device_job, "stop_stray_runner", stop_stray_runner)
    monkeypatch.setattr(device_job.time, "time", lambda: clock[0])
    monkeypatch.setattr(device_job.subprocess, "Popen", Runner)
    t0 = clock[0]
    assert device_job.main(["breast28-flip", "--chain", "--data-root", "x", "--seeds", "0", "--steps-per-epoch", "1",
                            "--budget-s", "600", "--eval-s", "5", "--runs", str(tmp_path / "runs")]) == 0
    cmd = launched[0]
    stop_at = float(cmd[cmd.index("--stop-at") + 1])
    assert stop_at <= t0 + 600 - 5 + 1


def test_a_failing_row_does_not_keep_the_others_from_being_written(tmp_path):
    data = tmp_path / "data"  # BreastMNIST only: the BR35H row cannot load its file
    data.mkdir()
    (data / "breastmnist.npz").symlink_to(shared_file("breastmnist.npz"))
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks/reproduce/run.py"), "br35h-invert", "breast28-invert",
           "--data-root", str(data), "--seeds", "0", "--epochs", "1", "--width", "4", "--max-train-samples", "32",
           "--views", "2", "--parallel", "1", "--runs", str(tmp_path / "runs"), "--results", str(results), "--no-amp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 1 and proc.stdout.strip().splitlines()[-1] == "FAILED", proc.stderr[-3000:]
    assert "br35h-invert seed 0: FAILED" in proc.stdout
    assert [json.loads(l)["row"] for l in results.read_text().splitlines()] == ["breast28-invert"]


def test_device_job_fits_the_schedule_to_the_time_left():
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from device_job import fit_epochs

    # BreastMNIST at 224 px on the H100: 6 steps per epoch, 29.5 steps/s per process
    assert fit_epochs(2048, 6, 29.5, 420) == 2048  # 417 s of training fits
    assert fit_epochs(2048, 6, 29.5, 367) == 1804  # does not: the most whole epochs that do
    assert fit_epochs(2048, 6, 29.5, 0.01) == 1    # never zero


def test_chained_calls_keep_evaluation_time_only_when_the_runs_can_finish():
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from device_job import chain_stop_at, training_left_s

    # (checkpoint step, measured steps/s) per unfinished run; the slowest decides
    assert training_left_s([(100, 10.0), (50, 5.0), None], 200, 0, None) == 30
    assert training_left_s([(100, 10.0)], 200, 1, None) is None      # a fresh run, no rate known
    assert training_left_s([(100, 10.0)], 200, 1, 20.0) == 10         # ... unless --steps-per-s
    assert training_left_s([None, None], 200, 0, None) is None        # all trained: evaluation left
    # a 560 s call, 60 s for the evaluation, 30 s of start-up
    assert chain_stop_at(0, 560, 60, 30, None) == 500                 # unknown: keep the evaluation's time
    assert chain_stop_at(0, 560, 60, 30, 400) == 500                  # finishes here: evaluate here
    assert chain_stop_at(0, 560, 60, 30, 1000) == 545                 # cannot finish: train to the end
    # ... unless a run may end its training before the call does: its evaluation must fit too
    assert chain_stop_at(0, 560, 60, 30, 520) == 500
    # the run closest to its end decides that
    assert training_left_s([(100, 10.0), (50, 5.0), None], 200, 0, None, soonest=True) == 10



def test_report_merges_seeds_run_in_separate_calls(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from report import load, render

    def entry(seed, nnd, epochs, commit):
        s = {"seed": seed, "nnd": nnd, "lh": nnd - 0.1, "views_per_s": 100, "image_size": 256, "center_crop": 224}
        return {"row": "breast224-invert", "objective": "con2", "paper": 81.7, "paper_scorer": "nnd",
                "epochs": epochs, "batch_size": 64, "views": 40, "seeds": [s], "wall_s": 10.0,
                "device": "GPU", "commit": commit, "nnd": {}, "lh": {}}

    results = tmp_path / "results.jsonl"
    lines = [entry(0, 0.70, 1806, "a"), entry(0, 0.80, 2048, "b"), entry(1, 0.60, 2048, "c"),
             entry(1, 0.70, 2048, "d")]  # seed 1 re-run: the newest wins
    results.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = load(results)
    assert set(rows) == {"breast224-invert", "breast224-invert (1806 epochs)"}
    full = rows["breast224-invert"]
    assert full["nnd"]["per_seed"] == [80.0, 70.0] and full["nnd"]["mean"] == 75.0
    assert full["nnd"]["std"] == 7.07 and full["commit"] == "b, d" and full["wall_s"] == 20.0
    assert rows["breast224-invert (1806 epochs)"]["nnd"]["per_seed"] == [70.0]
    text = render(rows)
    assert "--seeds 0 1 --epochs 2048` (reconstructed)" in text and "--seeds 0 --epochs 1806" in text
    assert "nnd_csi" not in full and "| 80.0, 70.0 | – | – |" in text  # rows from before the CSI columns
    assert "| breast224-invert | con2 | 2048 × 64, 256 px views |" in text

    # runs from before the view-size fix trained on 256 px views of the 224 crop: never merged with 224 px ones
    newer = entry(2, 0.75, 2048, "e")
    newer["seeds"][0]["view_size"] = 224
    results.write_text(results.read_text() + json.dumps(newer) + "\n")
    rows = load(results)
    assert rows["breast224-invert"]["nnd"]["per_seed"] == [75.0]
    assert rows["breast224-invert (256 px views)"]["nnd"]["per_seed"] == [80.0, 70.0]
    assert "| breast224-invert | con2 | 2048 × 64, 224 px views |" in render(rows)


def test_report_names_the_schedule_of_the_newest_line_and_drops_no_row(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from report import load

    def entry(seed, epochs, batch=64, views=40, device="H100"):
        s = {"seed": seed, "nnd": 0.7, "lh": 0.6, "views_per_s": 100, "image_size": 256, "center_crop": 224,
             "view_size": 224}
        return {"row": "breast224-flip", "objective": "con2", "paper": 81.7, "paper_scorer": "nnd", "epochs": epochs,
                "batch_size": batch, "views": views, "seeds": [s], "wall_s": 1.0, "device": device, "commit": "c"}

    results = tmp_path / "results.jsonl"
    smoke = {**entry(0, 2048), "width": 8, "max_train_samples": 64}  # run.py's smoke options: another model
    lines = [entry(0, 2048), entry(0, 100), entry(1, 2048, device="H200"), smoke,
             entry(0, 2048, batch=128), entry(0, 2048, views=10), entry(2, 2048)]  # the last line's schedule is the newest
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = load(results)
    assert rows["breast224-flip"]["epochs"] == 2048 and len(rows["breast224-flip"]["seeds"]) == 3
    assert rows["breast224-flip"]["device"] == "H100, H200"  # the seeds ran on two GPUs
    assert set(rows) == {"breast224-flip", "breast224-flip (100 epochs)", "breast224-flip (batch 128)",
                         "breast224-flip (10 test views)", "breast224-flip (width 8, 64 training samples)"}


def test_breast_224_rows_read_their_source_resolution():
    # breast224-* upsample the 28 px file, breast224from64-* the 64 px one; both end at 224 px
    data = shared_file("breastmnist_64.npz").parent
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from rows import ROWS

    from con2.config import TrainConfig
    from con2.data import load_split

    for name, source in (("breast224-flip", 28), ("breast224from64-flip", 64)):
        row = ROWS[name]
        cfg = TrainConfig(dataset=row.dataset, context=row.context, data_root=str(data), resolution=row.resolution,
                          image_size=row.image_size, center_crop=row.center_crop)
        split = load_split(cfg)
        assert split.train.shape[1:3] == (224, 224) and split.meta["resolution"] == source, name


# One row of every kind the GPU runs (data file, resolution, pre-processing, objective), each trained
# for one step of a tiny network and scored with 2 views: a row that cannot run fails here, on the
# CPU, not in a lent GPU call.
SMOKE_ROWS = ["breast64-flip", "breast224-equalize", "breast224from64-invert", "pneumonia-flip",
              "pneumonia224-invert", "br35h-invert", "br35h224-invert", "cifar10-flip-c0", "breast-simclr-lh",
              "breast-context-only", "breast-content-only"]


@pytest.mark.parametrize("row", SMOKE_ROWS)
def test_every_kind_of_row_runs_at_a_tiny_schedule(row, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from rows import ROWS
    from run import run_seed, summarise

    data = shared_file("breastmnist.npz").parent
    if ROWS[row].data_file and ROWS[row].dataset == "cifar10":  # the per-class file the GPU machine gets
        from prepare_carry import main as prepare

        shared_file("cifar10.npz")
        prepare(["--shared", str(data), "--out", str(tmp_path / "data"), "--files", "--cifar-classes", "0"])
        data = tmp_path / "data"
    else:
        for name in filter(None, [ROWS[row].data_file]):
            shared_file(name)
    args = {"data_root": str(data), "runs": str(tmp_path / "runs"), "amp": False, "epochs": 1, "width": 4,
            "max_train_samples": 8, "batch_size": 4, "views": 2, "stop_at": None}
    res = run_seed(row, 0, args)
    assert res["epochs"] == 1 and not res.get("paused")
    summary = summarise(row, [res], 1.0, args)  # the smoke settings travel with the row, so report.py keeps
    assert (summary["width"], summary["max_train_samples"]) == (4, 8)  # it apart from the paper's runs
    for key in ("nnd", "lh", "nnd_csi", "lh_csi"):
        assert 0 <= res[key] <= 1, key
    run = tmp_path / "runs" / f"{row}-s0"
    assert json.loads((run / "config.json").read_text())["objective"] == ROWS[row].objective
    # the network saw the row's pixels: the crop, else the file's resolution (CIFAR 32 px, BreastMNIST 28 px)
    size = ROWS[row].center_crop or ROWS[row].resolution or {"cifar10": 32, "npz": 64}.get(ROWS[row].dataset, 28)
    assert json.loads((run / "model.json").read_text())["architecture"]["image_size"] == size


def test_run_refuses_views_without_test_time_crops(capsys):
    """Each row is also scored with CSI's crop range, which --views 0 (one plain view) cannot apply:
    that evaluation would fail after the training."""
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    import run as run_mod

    with pytest.raises(SystemExit):
        run_mod.main(["breast28-invert", "--data-root", "x", "--views", "0"])
    assert "--views must be an even number >= 2" in capsys.readouterr().err


def test_results_md_is_what_report_py_makes_of_the_results_and_notes(tmp_path):
    """docs/RESULTS.md is generated: an edit of NOTES.md or results.jsonl without re-running
    report.py left it stale."""
    sys.path.insert(0, str(ROOT / "benchmarks/reproduce"))
    from report import load, render

    made = render(load(ROOT / "benchmarks/reproduce/results.jsonl"))
    assert (ROOT / "docs/RESULTS.md").read_text() == made, "run: python benchmarks/reproduce/report.py"
