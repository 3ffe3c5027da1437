"""The command line itself: every option explains itself, and building the parser stays cheap."""
import argparse
import os
import subprocess
import sys

import pytest

from con2.cli.main import build_parser
from con2.config import PAPER_EPOCHS, TrainConfig
from con2.demo import DEMO


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_has_help():
    undocumented = [f"con2 {name} {a.option_strings[-1]}" for name, p in _subcommands().items()
                    for a in p._actions if a.option_strings and not a.help]
    assert not undocumented, f"options without help: {undocumented}"


def test_the_defaults_in_the_help_are_the_configs():
    train = " ".join(_subcommands()["train"].format_help().split())  # argparse wraps lines anywhere
    d = TrainConfig()
    for text in (f"default {d.epochs}; --preset paper: {PAPER_EPOCHS}", f"(default {d.batch_size};",
                 f"(default {d.lr:g})", f"(default {d.checkpoint_every})", f"(default {d.data_root})"):
        assert text in train
    demo = " ".join(_subcommands()["demo"].format_help().split())
    assert f"default {DEMO['epochs']}" in demo and f"(default {DEMO['normal_class'][0]})" in demo


def test_predicts_defaults_for_a_run_are_predict_files_own():
    """The CLI keeps its own copy of predict's defaults (it must not import the scoring code to
    build the parser); a change to one without the other would score differently by the CLI."""
    import inspect

    from con2.cli.detect import PREDICT_DEFAULTS
    from con2.predict import predict_files

    params = inspect.signature(predict_files).parameters
    assert PREDICT_DEFAULTS == {k: params[k].default for k in PREDICT_DEFAULTS}


def test_building_the_parser_loads_no_training_or_evaluation_code():
    # every `con2 ...` call, --help included, builds the whole parser first: without torch it takes
    # 0.1 s, not 4 s (and a Ctrl-C then cannot land in an import's traceback)
    code = ("import sys; from con2.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('con2.train', 'con2.evaluate', 'con2.run', 'sklearn', 'torch') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_bad_setting_in_the_environment_is_one_line_not_a_traceback():
    # read when con2.ops is imported, which the command does
    env = {**os.environ, "CON2_CUDA_LOSS": "fuse"}
    done = subprocess.run([sys.executable, "-m", "con2.cli.main", "info"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == "con2 info: error: CON2_CUDA_LOSS must be 'blocked' or 'fused', got 'fuse'\n"


def test_ctrl_c_while_the_command_starts_is_quiet(monkeypatch):
    import con2.cli.main as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["info"]) == 130


def test_the_sweep_help_names_its_own_class_and_seed_options_only():
    # a sweep sets each run's class and seed, and refuses --normal-class / --seed with a pointer
    sweep = _subcommands()["sweep"].format_help()
    train = _subcommands()["train"].format_help()
    assert "--classes" in sweep and "--seeds" in sweep
    assert "--normal-class" not in sweep and "--seed " not in sweep and "--seed]" not in sweep
    assert "--normal-class" in train and "--seed SEED" in train


def test_train_names_an_ignored_data_root_a_file_as_out_and_a_folders_classes(tmp_path, capsys):
    """--data-root with digits trained on digits without a word; --out naming a file failed with
    "[Errno 17] File exists"; a folder or npz run without --normal-class did not list the classes."""
    import numpy as np
    from PIL import Image

    from con2.cli.main import main

    def error(*args):
        assert main(["train", *args, "--epochs", "1", "--quiet"]) == 2
        return capsys.readouterr().err.strip()

    assert error("--data-root", str(tmp_path), "--normal-class", "1") == (
        "con2 train: error: --data-root does not apply to --dataset digits (scikit-learn's digits, read from no file)")
    (tmp_path / "run.csv").write_text("")
    assert error("--out", str(tmp_path / "run.csv")) == (
        f"con2 train: error: --out {tmp_path / 'run.csv'} is a file; give the folder to write the run into")
    assert error("--out", str(tmp_path / "run.csv" / "sub")) == (
        f"con2 train: error: --out {tmp_path / 'run.csv' / 'sub'}: {tmp_path / 'run.csv'} is a file, not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        assert error("--out", str(tmp_path / "ro" / "run")) == (
            f"con2 train: error: --out {tmp_path / 'ro' / 'run'}: the folder {tmp_path / 'ro'} is not writable")
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    assert error("--dataset", "folder", "--data-root", str(tmp_path / "f"), "--out", str(tmp_path / "r")).endswith(
        "--dataset folder needs --normal-class (one or more class folder names); available: a, b")


def test_sigterm_outside_trainings_step_loop_stops_the_command_like_ctrl_c(capsys, monkeypatch):
    """SIGTERM while data loaded or the last checkpoint was written killed the process (exit 143,
    no message); the docs promise 130, as for Ctrl-C. A stopped command said nothing in its log, and
    SIGHUP (the terminal closed) killed it at once, unless nohup ignored it."""
    import signal

    from con2.cli.main import _run

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        args = argparse.Namespace(command="evaluate", func=lambda a, _s=sig: os.kill(os.getpid(), _s))
        assert _run(args) == 130
        assert capsys.readouterr().err == f"con2 evaluate: stopped by {sig.name}\n"
        assert {s: signal.getsignal(s) for s in before} == before  # the command's handlers are gone with it

    def interrupted(args):
        raise KeyboardInterrupt

    assert _run(argparse.Namespace(command="score", func=interrupted)) == 130
    assert capsys.readouterr().err == "con2 score: interrupted\n"
    # under nohup SIGHUP stays ignored: the command goes on when the terminal closes
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_IGN if s == signal.SIGHUP else before[s])
    seen = {}
    monkeypatch.setattr(signal, "signal", lambda s, handler: seen.setdefault(s, handler))
    assert _run(argparse.Namespace(command="train", func=lambda a: 0)) == 0
    assert signal.SIGHUP not in seen and signal.SIGTERM in seen


def test_the_native_extension_is_built_where_make_test_requires_it():
    """The native ops' tests skip without con2._C (a user without a compiler can still run the suite),
    so a build that silently failed would leave CI testing only the references. `make test` sets
    CON2_REQUIRE_NATIVE=1: there a missing or partial extension fails here."""
    from con2 import ops

    if os.environ.get("CON2_REQUIRE_NATIVE") != "1":
        pytest.skip("CON2_REQUIRE_NATIVE is not set (make test sets it)")
    assert ops._native is not None, f"con2._C is not loaded: {ops.NATIVE_IMPORT_ERROR}"
    assert ops._native.has_kernels("cpu"), "con2._C lacks CPU kernels for some ops"
    assert ops.native_views("cpu")


def _tiny_folder(root):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for cls, n in (("good", 14), ("bad", 4)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return ["--dataset", "folder", "--data-root", str(root), "--normal-class", "good", "--width", "4",
            "--batch-size", "8"]


def test_train_survives_its_reader_leaving_and_quotes_the_resume_command(tmp_path):
    """`con2 train ... | head -1` ended the training with a BrokenPipeError once the pipe closed; with
    `2>&1 | head -1` (progress and warnings on standard error) it still did, silently, exit 1, no model;
    evaluate, sweep, report, export and demo too. The 'Continue with' hint was not quoted for a
    folder name with a space."""
    data = _tiny_folder(tmp_path / "data")
    out = tmp_path / "my run"
    cli = [sys.executable, "-c", "import sys; from con2.cli.main import main; sys.exit(main())"]
    cmd = [*cli, "train", *data, "--val-fraction", "0.2", "--epochs", "3", "--out", str(out)]

    def reader_leaves(command, lines=1):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(lines):
            proc.stdout.readline()
        proc.stdout.close()  # the reader leaves after the first line(s)
        return proc.wait(timeout=300)

    assert reader_leaves(cmd) == 0
    assert (out / "model.safetensors").exists()
    assert reader_leaves([*cli, "evaluate", "--run", str(out), "--views", "2"]) == 0
    assert (out / "metrics.json").exists()
    assert reader_leaves([*cli, "export", "--run", str(out), "--views", "2", "--out", str(tmp_path / "d.safetensors")],
                         lines=0) == 0
    assert (tmp_path / "d.safetensors").exists()
    paused = subprocess.run(cmd[:-2] + ["--epochs", "400", "--out", str(out.with_name("p q")), "--time-limit", "1s",
                                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert paused.returncode == 75, paused.stderr
    assert f"Continue with con2 train --resume --out '{out.with_name('p q')}'" in paused.stdout


def test_train_refusals_name_their_cause_before_touching_the_run(tmp_path, capsys):
    import torch

    from con2.cli.main import main

    data = _tiny_folder(tmp_path / "data")

    def error(*args):
        assert main(["train", *data, "--quiet", *args]) == 2
        return capsys.readouterr().err.strip()

    assert error("--out", "").endswith("--out is empty; give the run's folder (e.g. runs/my-run)")
    assert "--test-fraction 0.99 and a val fraction" in error("--test-fraction", "0.99", "--out", str(tmp_path / "t"))
    # 'invert, flip' is 'invert,flip': a resume with either spelling continues the run
    run = tmp_path / "ctx"
    assert main(["train", *data, "--quiet", "--context", "invert, flip", "--epochs", "400", "--out", str(run),
                 "--time-limit", "1s"]) == 75
    capsys.readouterr()
    assert '"context": "invert,flip"' in (run / "config.json").read_text()
    # a checkpoint without what a resume reads is refused before config.json or metrics.jsonl change
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    err = error("--resume", "--context", "invert,flip", "--out", str(run))
    assert "is not a complete con2 checkpoint (missing 'optimizer')" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    (run / "config.json").unlink()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    assert "has a checkpoint.pt but no config.json" in capsys.readouterr().err


def test_quiet_training_still_names_skipped_files_and_an_unusable_test_split(tmp_path, capsys):
    """--quiet dropped the summary line, and with it the only word of files left out."""
    from con2.cli.main import main

    data = _tiny_folder(tmp_path / "data")
    (tmp_path / "data" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["train", *data, "--skip-bad-files", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "skipped" not in out and "con2 train: warning: skipped 1 unreadable file(s), first: " in err and "broken.png" in err
    assert main(["train", *data, "--skip-bad-files", "--epochs", "1", "--out", str(tmp_path / "s")]) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 unreadable file(s)" in out and "warning" not in err  # said once, in the summary


def test_cli_review_refusals_name_the_option_and_the_folder_kind(tmp_path, capsys, monkeypatch):
    """From a review of every option: a resume with another --dataset loaded that data first and named
    it ("image folder not found"); runs and sweeps went into each other's folders; a class named twice;
    an npz that is a folder was "not found"; a device given as --detector was "no such file"; a torch
    CPU allocation failure and a batch larger than the data went unexplained."""
    from con2.cli.main import main

    data = _tiny_folder(tmp_path / "data")

    def error(*args):
        assert main([*args]) == 2
        return capsys.readouterr().err.strip()

    run = tmp_path / "run"
    assert main(["train", *data, "--batch-size", "64", "--epochs", "400", "--quiet", "--out", str(run),
                 "--time-limit", "1s"]) == 75
    assert ("con2 train: warning: --batch-size 64 is more than the 10 training images: each step takes all 10"
            in capsys.readouterr().err)
    assert "dataset was 'folder', now 'digits'" in error("train", "--resume", "--out", str(run),
                                                                            "--dataset", "digits", "--quiet")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "manifest.json").write_text("{}")
    assert "is a con2 sweep folder" in error("train", *data, "--quiet", "--out", str(tmp_path / "sweep"))
    assert "holds a training run; give the sweep a folder of its own" in error(
        "sweep", *data[:4], "--classes", "good", "--seeds", "0", "--out", str(run), "--quiet")
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # a read-only parent, as root sees it too
    assert "--out " in error("sweep", *data[:4], "--classes", "good", "--seeds", "0", "--out",
                             str(tmp_path / "ro" / "sw"), "--quiet") and not (tmp_path / "ro").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert "--normal-class names 8 more than once" in error("train", "--dataset", "digits", "--normal-class", "8",
                                                            "8", "--out", str(tmp_path / "d"))
    assert "is a folder, not an .npz data file" in error("train", "--dataset", "npz", "--data-file", str(tmp_path),
                                                          "--normal-class", "0", "--out", str(tmp_path / "f"))
    assert "/dev/null is not a regular file" in error("info", "--detector", "/dev/null")
    monkeypatch.setattr("con2.train.build_model", lambda *a: (_ for _ in ()).throw(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 360000000000 bytes.")))
    assert error("train", *data, "--quiet", "--out", str(tmp_path / "m")).endswith(
        "allocate 360000000000 bytes.); use a smaller --batch-size, --width or --image-size")


def test_evaluate_says_a_target_fpr_it_cannot_use(tmp_path, capsys):
    """--target-fpr on a run without val normals calibrated nothing, and said nothing."""
    from con2.cli.main import main

    data = _tiny_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *data, "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--views", "0", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err  # the default, not asked for
    assert main(["evaluate", "--run", str(run), "--views", "0", "--quiet", "--target-fpr", "0.1"]) == 0
    assert "warning: --target-fpr 0.1: the run has no val normals, so no threshold was calibrated" in \
        capsys.readouterr().err


def test_long_work_reports_progress_into_a_log_and_quiet_silences_it(capsys, monkeypatch):
    """Into a log file scoring said only what started: 15 minutes of silence for a large folder;
    decoding a folder said nothing at all, and its bar showed on a terminal under --quiet."""
    import con2.progress as progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line at every update, not once a minute
    with progress.progress(4, "scoring") as bar:  # standard error is not a terminal here
        for _ in range(4):
            bar.update(1)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "scoring: 4 image views" and err[1].startswith("scoring: 1/4 image views (25%), ")
    assert err[-1].startswith("scoring: 3/4 image views (75%)") and err[-1].endswith(" left") and len(err) == 4
    with progress.silenced():
        with progress.progress(4, "decoding", unit="images") as bar:
            bar.update(4)
    assert capsys.readouterr().err == ""
    assert not progress._silenced  # only while the block runs
