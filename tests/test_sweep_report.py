"""Sweep resume (a run killed mid-sweep is continued, finished runs are not retrained) and the
HTML report (figures embedded; rendered in headless chromium when it is installed)."""
import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

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

    def _train(cfg, split=None, progress=True, resume=False, stop_after_steps=None):
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


def test_dataset_classes():
    assert dataset_classes("cifar10") == [str(i) for i in range(10)]
    assert len(dataset_classes("cifar100")) == 20
    assert dataset_classes("breast") == ["1"] and dataset_classes("oct") == ["3"]
    with pytest.raises(ValueError, match="explicitly"):
        dataset_classes("folder")


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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report_page, tmp_path):
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.setAttribute('data-loaded', i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);"
              "});</script></body>")
    probe.write_text(report_page.read_text().replace("</body>", script))
    args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-loaded="4/4"' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(args + ["--window-size=1100,3200", f"--screenshot={shot}", report_page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_cli_stops_quietly_when_its_reader_leaves(monkeypatch, capsys):
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
    assert main(["score", "--run", "somewhere"]) == 141
    monkeypatch.undo()
    capsys.readouterr()

    def broken_elsewhere(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(con2.evaluate, "score_split", broken_elsewhere)
    assert main(["score", "--run", "somewhere"]) == 2
    assert "con2 score: error: [Errno 32] Broken pipe" in capsys.readouterr().err
