"""Sweep resume (a run killed mid-sweep is continued, finished runs are not retrained) and the
HTML report (figures embedded; rendered in headless chromium when it is installed)."""
import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import con2.train as train_mod
from con2.run import build_model, save_model
from con2.config import TrainConfig
from con2.data import load_split
from con2.evaluate import evaluate_run
from con2.report import build_report
from con2.sweep import SweepFailed, dataset_classes, run_sweep

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def fake_train(calls, fail_on=None):
    """Stands in for con2.train.train: writes an untrained tiny model as a finished run."""

    def _train(cfg, split=None, progress=True, resume=False, stop_after_steps=None, continue_with=None):
        key = ((cfg.normal_class or ["-"])[0], cfg.seed)
        calls.append(key)
        if key == fail_on:
            raise KeyboardInterrupt("simulated kill")
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(cfg.to_json())
        torch.manual_seed(cfg.seed)
        split = split or load_split(cfg)
        save_model(build_model(cfg, split), run, cfg)
        return run

    return _train


def test_sweep_resumes_without_retraining(tmp_path, monkeypatch):
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls, fail_on=("3", 0)))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, ["8", "3"], [0], tmp_path, views=0, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["runs"]["class-8-seed0"]["status"] == "done"
    assert manifest["runs"]["class-3-seed0"]["status"] == "training"
    assert calls == [("8", 0), ("3", 0)]

    calls.clear()
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    summary = run_sweep(base, ["8", "3"], [0], tmp_path, views=0, progress=False)
    assert calls == [("3", 0)]  # the finished run was not retrained
    assert set(summary["classes"]) == {"8", "3"} and summary["all"]["nnd"][2] == 2
    md = (tmp_path / "results.md").read_text()
    assert "mean over classes and seeds" in md and "| 8 |" in md
    assert (tmp_path / "results.csv").read_text().splitlines()[-1].startswith("all,2,")

    calls.clear()
    run_sweep(base, ["8", "3"], [0], tmp_path, views=0, progress=False)
    assert calls == []
    changed = TrainConfig(dataset="digits", width=8, epochs=2, image_size=8, device="cpu")
    with pytest.raises(ValueError, match="epochs=1.*epochs=2"):
        run_sweep(changed, ["8"], [0], tmp_path, views=0, progress=False)
    other_split = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu", val_fraction=0.2)
    with pytest.raises(ValueError, match="val_fraction=None.*val_fraction=0.2"):  # one split for every run
        run_sweep(other_split, ["8"], [0], tmp_path, views=0, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for key in ("val_fraction", "n_train"):  # a manifest written before these were settings
        del manifest["base_config"][key]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    run_sweep(other_split, ["8", "3"], [0], tmp_path, views=0, progress=False)  # not compared: accepted
    assert calls == []
    (tmp_path / "manifest.json").write_text('{"format": "con2-sweep/1", "base_con')
    with pytest.raises(ValueError, match="manifest.json is corrupt"):
        run_sweep(base, ["8"], [0], tmp_path, views=0, progress=False)


def test_a_failed_run_is_recorded_and_the_others_are_tabulated(tmp_path, monkeypatch):
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    calls = []
    real = fake_train(calls)

    def fails_for_class_3(cfg, **kw):
        if cfg.normal_class == ["3"]:
            calls.append(("3", cfg.seed))
            raise FloatingPointError("loss became non-finite (nan or inf) at step 2")
        return real(cfg, **kw)

    monkeypatch.setattr(train_mod, "train", fails_for_class_3)
    with pytest.raises(SweepFailed, match="1 of 3 runs failed.*class-3-seed0: FloatingPointError"):
        run_sweep(base, ["8", "3", "5"], [0], tmp_path, views=0, progress=False)
    assert calls == [("8", 0), ("3", 0), ("5", 0)]  # the sweep went on after the failure
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["runs"]["class-3-seed0"]["status"] == "failed"
    assert "non-finite" in manifest["runs"]["class-3-seed0"]["error"]
    assert (tmp_path / "results.csv").read_text().splitlines()[-1].startswith("all,2,")
    assert ",failed," in (tmp_path / "runs.csv").read_text()
    calls.clear()
    monkeypatch.setattr(train_mod, "train", real)
    summary = run_sweep(base, ["8", "3", "5"], [0], tmp_path, views=0, progress=False)
    assert calls == [("3", 0)] and summary["all"]["nnd"][2] == 3  # a rerun retries the failed run only


def test_a_finished_run_of_other_settings_is_not_tabulated_as_this_sweeps(tmp_path, monkeypatch):
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    run_sweep(base, ["8"], [0], tmp_path, views=0, progress=False)
    (tmp_path / "manifest.json").unlink()  # deleted (say, as corrupt): the run folders stay
    with pytest.raises(SweepFailed, match=r"class-8-seed0: ValueError: .*class-8-seed0 holds a run trained with "
                                          r"other settings \(epochs was 1, now 2\)"):
        run_sweep(TrainConfig(dataset="digits", width=8, epochs=2, image_size=8, device="cpu"), ["8"], [0], tmp_path,
                  views=0, progress=False)
    assert calls == [("8", 0)] and (tmp_path / "results.csv").read_text().splitlines()[1:] == []
    (tmp_path / "manifest.json").unlink()
    summary = run_sweep(base, ["8"], [0], tmp_path, views=0, progress=False)  # its own settings: evaluated again
    assert calls == [("8", 0)] and summary["all"]["nnd"][2] == 1


def test_a_later_sweep_command_with_fewer_classes_keeps_the_earlier_runs_in_the_tables(tmp_path, monkeypatch):
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    run_sweep(base, ["8", "3"], [0], tmp_path, views=0, progress=False)
    summary = run_sweep(base, ["3"], [1], tmp_path, views=0, progress=False)  # one more seed of one class
    assert calls == [("8", 0), ("3", 0), ("3", 1)]
    assert list(summary["classes"]) == ["8", "3"] and summary["all"]["nnd"][2] == 3
    assert summary["classes"]["3"]["nnd"][2] == 2
    rows = (tmp_path / "runs.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["8", "0", "done"], ["3", "0", "done"], ["3", "1", "done"]]
    assert (tmp_path / "results.csv").read_text().splitlines()[-1].startswith("all,3,")
    assert "| 8 | 1 |" in (tmp_path / "results.md").read_text()


def test_sweep_refuses_bad_evaluation_options_before_any_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    out = tmp_path / "sweep"
    for kw, match in [({"views": 3}, "views must be 0 .* got 3"),
                      ({"aggregate": "median"}, "unknown aggregate 'median'"),
                      ({"scorers": ["knn"]}, "unknown scorer 'knn'")]:
        with pytest.raises(ValueError, match=match):  # not one failed run after another, each after its training
            run_sweep(base, ["8", "3"], [0], out, progress=False, **{"views": 0, **kw})
    assert calls == [] and not out.exists()
    summary = run_sweep(base, ["8"], [0], out, views=np.int64(0), scorers="nnd", progress=False)  # as numpy gives
    assert list(summary["all"]) == ["nnd"] and json.loads((out / "manifest.json").read_text())["eval"]["views"] == 0


def test_dataset_classes(tmp_path):
    assert dataset_classes(TrainConfig(dataset="cifar10")) == [str(i) for i in range(10)]
    assert len(dataset_classes(TrainConfig(dataset="cifar100"))) == 20
    assert dataset_classes(TrainConfig(dataset="breast")) == ["1"] and dataset_classes(TrainConfig(dataset="oct")) == ["3"]
    # an image folder's classes: its class folders with training images ("all" is a name like any other)
    for d in ("train/all", "train/b", "train/empty", "test/all", "test/c"):
        (tmp_path / d).mkdir(parents=True)
    for d in ("train/all", "train/b", "test/all", "test/c"):
        Image.new("L", (8, 8)).save(tmp_path / d / "x.png")
    assert dataset_classes(TrainConfig(dataset="folder", data_root=str(tmp_path))) == ["all", "b"]
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([3, 1, 1, 3]))
    assert dataset_classes(TrainConfig(dataset="npz", data_file=str(tmp_path / "d.npz"))) == ["1", "3"]
    with pytest.raises(ValueError, match="--classes all: the classes of --dataset folder cannot be listed "
                                         r"\(image folder not found: .*nowhere\); list them explicitly"):
        dataset_classes(TrainConfig(dataset="folder", data_root=str(tmp_path / "nowhere")))


def test_a_sweep_of_all_classes_of_a_folder_trains_each_class_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("all", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / c / f"{i}.png")
    base = TrainConfig(dataset="folder", data_root=str(root), width=8, epochs=1, image_size=8, device="cpu")
    summary = run_sweep(base, ["all"], [0], tmp_path / "sweep", views=0, progress=False)
    assert calls == [("all", 0), ("b", 0)] and list(summary["classes"]) == ["all", "b"]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(dataset="digits", width=8, epochs=1, image_size=12, device="cpu", out=str(run))
    fake_train([])(cfg)
    metrics = evaluate_run(run, views=2, progress=False)
    assert {"nnd", "lh"} <= set(metrics) and 0 <= metrics["nnd"]["auroc"] <= 1
    return build_report(run, max_points=60, progress=False)


def test_report_embeds_every_figure(report_page):
    page = report_page.read_text()
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(uris) == 4
    for u in uris:
        im = Image.open(io.BytesIO(base64.b64decode(u)))
        assert im.size[0] > 100 and im.size[1] > 100
    assert "id='silhouette'" in page and "src='http" not in page


def test_report_states_the_evaluation_it_shows_and_a_missing_one(report_page, tmp_path):
    assert "crop area range: [0.08, 1.0]" in report_page.read_text()
    run = tmp_path / "run"
    shutil.copytree(report_page.parent, run)
    (run / "metrics.json").unlink()
    page = build_report(run, max_points=20, progress=False).read_text()
    assert "metrics.json is missing" in page and "con2 evaluate --run" in page
    broken = json.loads((report_page.parent / "metrics.json").read_text())
    broken["nnd"] = {}  # hand-edited: a KeyError traceback from the table
    (run / "metrics.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"metrics.json is damaged \(KeyError: 'auroc'\); rerun `con2 evaluate"):
        build_report(run, max_points=20, progress=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "colour": 1}))
    with pytest.raises(ValueError, match=r"config.json: unknown configuration keys: colour"):
        build_report(run, max_points=20, progress=False)


def test_report_refuses_views_other_than_the_evaluation_it_shows(report_page, tmp_path, capsys):
    from con2.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(report_page.parent, run)  # evaluated with 2 views
    says = rf"evaluated with --views 2, not --views 4: run `con2 evaluate --run {re.escape(str(run))} --views 4` first"
    with pytest.raises(ValueError, match=says):
        build_report(run, views=4, max_points=20, progress=False)
    assert main(["report", "--run", str(run), "--views", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("con2 report: error: ") and err.count("\n") == 1 and "or drop --views" in err
    assert "test-time views: 2," in build_report(run, views=2, max_points=20, progress=False).read_text()
    assert "test-time views: 2," in build_report(run, max_points=20, progress=False).read_text()  # the run's
    for name in ("scores.csv", "metrics.json"):  # not evaluated yet: evaluated with the views given
        (run / name).unlink()
    assert "test-time views: 4," in build_report(run, views=4, max_points=20, progress=False).read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report_page, tmp_path):
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.setAttribute('data-loaded', i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);"
              "});</script></body>")
    probe.write_text(report_page.read_text().replace("</body>", script))
    # a profile of its own, and /tmp for shared memory (a container's /dev/shm is often 64 MB: chromium
    # crashed or dumped a blank page there)
    args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dumped = subprocess.run(args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=300)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert 'data-loaded="4/4"' in dumped.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)  # a screenshot of an earlier run must not pass for this one
    done = subprocess.run(args + ["--window-size=1100,3200", f"--screenshot={shot}", report_page.as_uri()],
                          capture_output=True, timeout=300)
    assert done.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000


def test_cli_stops_quietly_when_its_reader_leaves(monkeypatch, capsys, tmp_path):
    """`con2 score ... | head`: standard output closing ends the command with 141 (as SIGPIPE would),
    no error; a broken pipe anywhere else is still an error."""
    import numpy as np

    import con2.evaluate
    from con2.cli.main import main

    scores = con2.evaluate.SplitScores("test", "nnd", "mean", np.zeros(3), np.zeros((3, 2)), [0, 1, 0],
                                       ["a", "b", "a"], None)
    monkeypatch.setattr(con2.evaluate, "score_split", lambda *a, **k: scores)

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    run = str(tmp_path)  # a folder: --run is checked to be one before score_split
    assert main(["score", "--run", run]) == 141
    monkeypatch.undo()
    capsys.readouterr()

    def broken_elsewhere(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(con2.evaluate, "score_split", broken_elsewhere)
    assert main(["score", "--run", run]) == 2
    assert "con2 score: error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_sweep_refuses_repeated_seeds_and_classes(tmp_path, monkeypatch):
    from con2.sweep import check_sweep

    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    out = tmp_path / "sweep"
    for classes, seeds, match in [(["8"], [0, 0], "--seeds lists 0 twice"),
                                  (["8", "08"], [0], "--classes lists '8' and '08', the same digits class"),
                                  (["3", " 3"], [0], "'3' and ' 3', the same digits class"),
                                  (["8", "8"], [0], "--classes lists '8' twice"),
                                  (["8"], [1.5], r"--seeds must be integers in \[0, 2\*\*63\), got 1.5"),
                                  (["8"], [2**64], r"--seeds must be integers in \[0, 2\*\*63\)"),
                                  (["8"], [-1], "--seeds must be integers in")]:
        with pytest.raises(ValueError, match=match):
            run_sweep(base, classes, seeds, out, views=0, progress=False)
    assert calls == [] and not out.exists()  # refused before anything ran or was written
    with pytest.raises(TypeError, match="--epochs must be an integer"):  # the shared options, before any run
        run_sweep(TrainConfig(dataset="digits", epochs=1.5), ["8"], [0], out, views=0, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="'0' and 'Airplane', the same cifar10 class"):  # index and name
        check_sweep(TrainConfig(dataset="cifar10"), ["0", "Airplane"], [0])
    check_sweep(TrainConfig(dataset="folder"), ["a", "A", "a b", "a_b"], [0, 1])  # folder names are exact
    npz = tmp_path / "named.npz"
    np.savez(npz, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 0, 1, 1]),
             class_names=np.array(["zero", "one"]))
    with pytest.raises(ValueError, match="'1' and 'ONE', the same npz class"):
        check_sweep(TrainConfig(dataset="npz", data_file=str(npz)), ["1", "ONE"], [0])
    check_sweep(TrainConfig(dataset="npz", data_file=str(npz)), ["zero", "one"], [0])


def _write_classes(root, names, n=10, size=12):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_classes_whose_names_map_to_one_folder_get_a_run_each(tmp_path, monkeypatch):
    data = _write_classes(tmp_path / "data", ["a b", "a_b", "c"])
    base = TrainConfig(dataset="folder", data_root=str(data), width=8, epochs=1, device="cpu")
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    out = tmp_path / "sweep"
    summary = run_sweep(base, ["a b", "a_b"], [0], out, views=0, progress=False)
    assert calls == [("a b", 0), ("a_b", 0)]
    assert {c: row["nnd"][2] for c, row in summary["classes"].items()} == {"a b": 1, "a_b": 1}
    assert (out / "class-a%20b-seed0").is_dir() and (out / "class-a_b-seed0").is_dir()
    md = (out / "results.md").read_text()
    assert "| a b | 1 |" in md and "| a_b | 1 |" in md
    # one run per class has no standard deviation (not 0); the two runs of the last row have one
    rows = {line.split(",")[0]: line.split(",") for line in (out / "results.csv").read_text().splitlines()}
    assert rows["a b"][3] == "" and rows["a_b"][3] == "" and rows["all"][3] != ""
    assert "| a b | 1 | " in md and "±" not in next(line for line in md.splitlines() if line.startswith("| a b |"))


def test_a_sweep_named_by_an_older_con2_resumes_and_refuses_a_class_that_would_share_a_folder(tmp_path, monkeypatch):
    data = _write_classes(tmp_path / "data", ["a b", "a_b"])
    base = TrainConfig(dataset="folder", data_root=str(data), width=8, epochs=1, device="cpu")
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    out = tmp_path / "sweep"
    run_sweep(base, ["a b"], [0], out, views=0, progress=False)
    # as an older con2 left it: the run of "a b" in class-a_b-seed0
    (out / "class-a%20b-seed0").rename(out / "class-a_b-seed0")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["runs"].pop("class-a%20b-seed0")
    manifest["runs"]["class-a_b-seed0"] = dict(entry, dir="class-a_b-seed0")
    (out / "manifest.json").write_text(json.dumps(manifest))
    calls.clear()
    summary = run_sweep(base, ["a b"], [0], out, views=0, progress=False)
    assert calls == [] and summary["classes"]["a b"]["nnd"][2] == 1  # resumed, not retrained
    with pytest.raises(ValueError, match="class-a_b-seed0 holds the run of class 'a b' seed 0, where class 'a_b'"):
        run_sweep(base, ["a b", "a_b"], [0], out, views=0, progress=False)
    assert calls == []


def test_cli_sweep_names_its_folder_from_the_defaults_and_needs_no_normal_class(tmp_path, monkeypatch, capsys):
    from con2.cli.main import main

    x = np.random.RandomState(0).randint(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 1] * 20))
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--dataset", "npz", "--data-file", "d.npz", "--classes", "0", "--seeds", "0", "--epochs", "1",
            "--width", "4", "--batch-size", "8", "--device", "cpu", "--views", "2", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "sweep-npz-invert-con2" / "results.md").exists()  # context, objective: defaults
    # named as a run is: "invert, flip" (a space after the comma) made a folder "...invert+ flip..."
    import con2.sweep

    def fake_sweep(base, classes, seeds, out, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "results.md").write_text("")

    monkeypatch.setattr(con2.sweep, "run_sweep", fake_sweep)
    assert main([*args, "--context", "invert, flip"]) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "sweep-npz-invert+flip-con2" / "results.md").exists()


def test_cli_sweep_debug_shows_the_traceback_of_a_failed_run(tmp_path, monkeypatch, capsys):
    from con2.cli.main import main

    def diverges(cfg, **kw):
        raise FloatingPointError("loss became non-finite")

    monkeypatch.setattr(train_mod, "train", diverges)
    args = ["sweep", "--classes", "8", "--seeds", "0", "--width", "4", "--epochs", "1", "--device", "cpu",
            "--views", "0", "--quiet", "--out", str(tmp_path / "sweep")]
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SweepFailed, match="1 of 1 runs failed"):
        main(args + ["--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "in diverges" in err and "FloatingPointError: loss became non-finite" in err


def test_a_sweep_resumes_from_another_directory_and_refuses_other_data_under_the_same_name(tmp_path, monkeypatch):
    """The manifest records data paths as absolute paths: the same file named from another working
    directory resumes the sweep, and a different file that happens to have the same relative name
    is refused (it was compared as a string, so the first was refused and the second accepted)."""
    rng = np.random.RandomState(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        x = rng.randint(0, 256, (40, 12, 12, 1), dtype=np.uint8)
        np.savez(tmp_path / name / "d.npz", images=x, labels=np.array([0, 1] * 20))
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    out = tmp_path / "sweep"
    monkeypatch.chdir(tmp_path / "a")
    base = TrainConfig(dataset="npz", data_file="d.npz", width=4, epochs=1, device="cpu")
    run_sweep(base, ["0"], [0], out, views=0, progress=False)
    assert json.loads((out / "manifest.json").read_text())["base_config"]["data_file"] == str(tmp_path / "a" / "d.npz")
    calls.clear()
    monkeypatch.chdir(tmp_path)
    run_sweep(TrainConfig(dataset="npz", data_file="a/d.npz", width=4, epochs=1, device="cpu"),
              ["0"], [0], out, views=0, progress=False)
    assert calls == []
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match="data_file="):
        run_sweep(base, ["0"], [0], out, views=0, progress=False)


def test_a_sweep_manifest_with_a_relative_data_path_still_resumes(tmp_path, monkeypatch):
    """Manifests written before the paths were made absolute hold them as given: read from the same
    directory, they name the same file."""
    x = np.random.RandomState(0).randint(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 1] * 20))
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    monkeypatch.chdir(tmp_path)
    base = TrainConfig(dataset="npz", data_file="d.npz", width=4, epochs=1, device="cpu")
    run_sweep(base, ["0"], [0], "sweep", views=0, progress=False)
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    manifest["base_config"]["data_file"] = "d.npz"
    (tmp_path / "sweep" / "manifest.json").write_text(json.dumps(manifest))
    calls.clear()
    run_sweep(base, ["0"], [0], "sweep", views=0, progress=False)
    assert calls == []


def test_an_interrupted_sweep_says_to_rerun_the_sweep(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls, fail_on=("8", 0)))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, ["8"], [0], tmp_path / "sweep", views=0, progress=False)
    assert "rerun the same con2 sweep command to continue" in capsys.readouterr().out


def test_a_sweep_stopped_mid_training_names_the_sweep_to_continue_and_resumes_its_run(tmp_path, monkeypatch, capsys):
    """Training's own lines in a sweep: the stop names the sweep command (not `con2 train --resume`,
    which would leave the sweep's manifest behind), a run not yet begun is not announced as one
    "with no checkpoint to continue from", and the rerun sweep continues the run's checkpoint."""
    import con2.train

    step, steps = con2.train._train_step, []

    def interrupted_second_step(*args):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return step(*args)

    monkeypatch.setattr(con2.train, "_train_step", interrupted_second_step)
    base = TrainConfig(dataset="digits", width=8, epochs=1, batch_size=32, image_size=8, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, ["8"], [0], tmp_path / "sweep", views=0, progress=True)
    out = capsys.readouterr().out
    assert "interrupted at step 1/" in out and "Continue with the same con2 sweep command" in out
    assert "con2 train --resume" not in out and "no checkpoint to continue from" not in out
    run_sweep(base, ["8"], [0], tmp_path / "sweep", views=0, progress=True)
    assert "class-8-seed0 at step 1/3" in capsys.readouterr().out  # resuming it there
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    assert manifest["runs"]["class-8-seed0"]["status"] == "done"


def test_a_sweep_refuses_an_unknown_class_before_any_run(tmp_path, monkeypatch):
    """It trained the other classes, then failed on it and said "rerun to retry", which never could."""
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    with pytest.raises(ValueError, match="--classes: .*'eleven'"):
        run_sweep(base, ["3", "eleven"], [0], tmp_path / "a", views=0, progress=False)
    with pytest.raises(ValueError, match="--classes all means every class of the data set: give it alone"):
        run_sweep(base, ["all", "3"], [0], tmp_path / "b", views=0, progress=False)
    assert calls == []


def test_a_sweep_stopped_while_evaluating_says_so_in_its_manifest(tmp_path, monkeypatch):
    import con2.evaluate as evaluate_mod

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", fake_train([]))
    monkeypatch.setattr(evaluate_mod, "evaluate_run", interrupted)
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, ["3"], [0], tmp_path, views=0, progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text())["runs"]["class-3-seed0"]["status"] == "evaluating"


def test_cli_names_a_sweep_folder_given_as_a_run_and_prefixes_option_errors_with_the_command(tmp_path, capsys):
    from con2.cli.main import main

    (tmp_path / "manifest.json").write_text("{}")
    assert main(["evaluate", "--run", str(tmp_path), "--quiet"]) == 2
    assert "is a sweep folder; its runs are its class-*-seed* sub-folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path), "--views", "3"])
    assert capsys.readouterr().err.startswith("con2 evaluate: error: argument --views")


def test_a_later_sweep_command_naming_a_class_another_way_resumes_its_runs(tmp_path, monkeypatch):
    """`--classes 8` then `--classes 08` (or a name, then `all`'s index) trained the class again under
    the new name and counted it twice in the tables."""
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    run_sweep(base, ["8"], [0, 1], tmp_path, views=0, progress=False)
    summary = run_sweep(base, ["08", "3"], [0, 1], tmp_path, views=0, progress=False)
    assert calls == [("8", 0), ("8", 1), ("3", 0), ("3", 1)]  # 08 is 8: done, not trained again
    assert {c: row["nnd"][2] for c, row in summary["classes"].items()} == {"8": 2, "3": 2}
    assert summary["all"]["nnd"][2] == 4
    assert sorted(p.name for p in tmp_path.glob("class-*")) == [
        "class-3-seed0", "class-3-seed1", "class-8-seed0", "class-8-seed1"]
    calls.clear()
    cifar = TrainConfig(dataset="cifar10", device="cpu")
    from con2.sweep import _as_named_before

    manifest = {"runs": {"class-cat-seed0": {"class": "cat", "seed": 0}}}
    assert _as_named_before(cifar, manifest, dataset_classes(cifar))[3] == "cat"  # all's "3" is the cat runs


def test_a_data_problem_every_run_shares_is_refused_once_before_the_sweep_folder_is_made(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    out = tmp_path / "sweep"
    for base, says in [
        (TrainConfig(dataset="npz", data_file=str(tmp_path / "missing.npz"), device="cpu"),
         r"data file not found: .*missing\.npz \(nothing was run\)"),
        (TrainConfig(dataset="npz", device="cpu"), r"--dataset npz needs --data-file PATH.npz \(nothing was run\)"),
        (TrainConfig(dataset="cifar10", data_root=str(tmp_path), device="cpu"),
         r"cifar10 not found: expected .*cifar10\.npz or torchvision's .*cifar-10-batches-py"),
        (TrainConfig(dataset="folder", data_root=str(tmp_path / "nowhere"), device="cpu"), "image folder not found"),
    ]:
        with pytest.raises(ValueError, match=says):
            run_sweep(base, ["1"], [0, 1], out, views=0, progress=False)
    with pytest.raises(ValueError, match="--dataset npz needs --data-file PATH.npz"):
        run_sweep(TrainConfig(dataset="npz", device="cpu"), "all", [0], out, views=0, progress=False)
    assert calls == [] and not out.exists()


def test_a_data_problem_of_one_class_fails_its_runs_and_the_others_go_on(tmp_path, monkeypatch):
    """Only what every run shares is refused up front: a class with too few images is that class's
    failure (checking the first class's split up front stopped every sweep whose first class had one)."""
    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    labels = np.array([0] * 2 + [1] * 20 + [2] * 20)
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 256, (42, 8, 8), dtype=np.uint8),
             labels=labels)
    base = TrainConfig(dataset="npz", data_file=str(tmp_path / "d.npz"), width=8, epochs=1, device="cpu")
    with pytest.raises(SweepFailed, match="1 of 3 runs failed.*class-0-seed0"):
        run_sweep(base, "all", [0], tmp_path / "sweep", views=0, progress=False)
    assert calls == [("0", 0), ("1", 0), ("2", 0)]
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "| 1 | 1 |" in md and "| 2 | 1 |" in md


def test_out_dash_is_standard_output_and_the_report_refuses_it(monkeypatch, capsys, tmp_path):
    """`con2 score --out -` wrote a file named "-" and said so; the Unix spelling of standard output."""
    import numpy as np

    import con2.evaluate
    from con2.cli.main import main

    scores = con2.evaluate.SplitScores("test", "nnd", "mean", np.array([0.5, 1.5]), np.zeros((2, 2)), [0, 1],
                                       ["a", "b"], None)
    monkeypatch.setattr(con2.evaluate, "score_split", lambda *a, **k: scores)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    assert main(["score", "--run", str(run), "--out", "-"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("index,label,class") and len(out.splitlines()) == 3
    assert "wrote" not in err and not (tmp_path / "-").exists()
    assert main(["report", "--run", str(run), "--out", "-"]) == 2
    assert "--out -: the report is an HTML page written to a file" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_a_second_sweep_into_a_folder_in_use_is_refused(tmp_path, monkeypatch):
    """Two sweeps into one --out each kept their own manifest: the last one written listed the other's
    finished runs as failed ("in use") until the sweep was run again."""
    from con2.files import folder_lock

    calls = []
    monkeypatch.setattr(train_mod, "train", fake_train(calls))
    base = TrainConfig(dataset="digits", width=8, epochs=1, image_size=8, device="cpu")
    out = tmp_path / "sweep"
    out.mkdir()
    with folder_lock(out, "con2 sweep"):  # as another process's sweep holds it
        with pytest.raises(RuntimeError, match="sweep is in use: another con2 sweep is writing it"):
            run_sweep(base, ["8"], [0], out, views=0, progress=False)
    assert calls == [] and not (out / "manifest.json").exists()
    run_sweep(base, ["8"], [0], out, views=0, progress=False)
    assert calls == [("8", 0)]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; give the folder to write the sweep into"):
        run_sweep(base, ["8"], [0], tmp_path / "file", views=0, progress=False)
