"""Training loop: schedule, resume determinism, interruption, DDP equivalence, CLI errors."""
import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from con2.config import TrainConfig
from con2.data import OneClassSplit
from con2.run import identity_mismatch, load_run, run_finished, view_config
from con2.train import schedule, train


def tiny_split(n=24, size=12, channels=1, seed=0):
    x = np.random.RandomState(seed).randint(0, 256, (n, size, size, channels), dtype=np.uint8)
    return OneClassSplit("tiny", x, x[:6], np.array([0, 1] * 3), x[:0])


def tiny_cfg(out, **kw):
    base = dict(dataset="digits", epochs=2, batch_size=8, width=4, out=str(out), checkpoint_every=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def weights(run_dir):
    _, model = load_run(run_dir)
    return model.state_dict()


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def test_schedule_cosine_and_alpha_ramp():
    cfg = TrainConfig(lr=1e-3)
    assert schedule(cfg, 0, 100) == (pytest.approx(1e-3), 0.0)
    lr_mid, alpha_mid = schedule(cfg, 50, 100)
    assert lr_mid == pytest.approx(5e-4) and alpha_mid == pytest.approx(50 / 99)
    lr_end, alpha_end = schedule(cfg, 99, 100)
    assert lr_end < 1e-6 and alpha_end == 1.0


@pytest.mark.parametrize("stop_at", [3, 5])  # epoch boundary (3 steps/epoch) and mid-epoch
def test_resume_gives_identical_weights(tmp_path, stop_at):
    split = tiny_split()
    straight = train(tiny_cfg(tmp_path / "a"), split, progress=False)
    cfg = tiny_cfg(tmp_path / "b")
    train(cfg, split, progress=False, stop_after_steps=stop_at)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == stop_at
    train(cfg, split, progress=False, resume=True)
    assert_same_weights(weights(straight), weights(tmp_path / "b"))
    lines = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["global_step"] == 6 and lines[-1]["alpha"] == 1.0


def test_workers_pipeline_resumes_mid_epoch_identically_and_a_changed_pipeline_is_said(tmp_path):
    split = tiny_split()
    straight = train(tiny_cfg(tmp_path / "a", pipeline="workers", workers=0), split, progress=False)
    cfg = tiny_cfg(tmp_path / "b", pipeline="workers", workers=0)
    train(cfg, split, progress=False, stop_after_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same pipeline and device: nothing to say
        train(cfg, split, progress=False, resume=True)
    assert_same_weights(weights(straight), weights(tmp_path / "b"))
    train(tiny_cfg(tmp_path / "c", pipeline="tensor"), split, progress=False, stop_after_steps=4)
    with pytest.warns(UserWarning, match="the tensor pipeline drew its views so far, the workers pipeline draws "
                                         "the rest.*will not equal"):  # allowed (another machine), but said
        train(tiny_cfg(tmp_path / "c", pipeline="workers", workers=0), split, progress=False, resume=True)
    assert run_finished(tmp_path / "c")
    train(tiny_cfg(tmp_path / "d", pipeline="workers", workers=0), split, progress=False, stop_after_steps=4)
    ckpt = torch.load(tmp_path / "d" / "checkpoint.pt", weights_only=True)
    del ckpt["view_seeds"]  # a checkpoint of the workers pipeline as it seeded views until the 21st session
    torch.save(ckpt, tmp_path / "d" / "checkpoint.pt")
    with pytest.warns(UserWarning, match="seeds each sample's views in another way"):
        train(tiny_cfg(tmp_path / "d", pipeline="workers", workers=0), split, progress=False, resume=True)


def test_resume_of_weights_of_another_model_is_named_and_leaves_the_run_untouched(tmp_path):
    split = tiny_split()
    run = tmp_path / "a"
    train(tiny_cfg(run, width=8), split, progress=False, stop_after_steps=2)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["width"]  # as a checkpoint older than the setting: only the weights can tell
    torch.save(ckpt, run / "checkpoint.pt")
    config = json.loads((run / "config.json").read_text())
    del config["width"]  # (else config.json names the other width first, before the data loads)
    (run / "config.json").write_text(json.dumps(config))
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match="checkpoint.pt holds weights or optimiser state of another model "
                                         r"\(Error\(s\) in loading state_dict"):
        train(tiny_cfg(run, width=4), split, progress=False, resume=True)
    assert {name: (run / name).read_bytes() for name in before} == before


def test_deadline_pauses_with_a_checkpoint_and_resume_finishes_identically(tmp_path):
    # a time-boxed job (a lent GPU call): past the deadline it leaves after the current step
    split = tiny_split()
    straight = train(tiny_cfg(tmp_path / "a"), split, progress=False)
    cfg = tiny_cfg(tmp_path / "b")
    train(cfg, split, progress=False, deadline=0.0)
    assert not run_finished(tmp_path / "b") and run_finished(straight)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["global_step"] == 1
    train(cfg, split, progress=False, resume=True, deadline=0.0)  # one more step per call
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["global_step"] == 2
    train(cfg, split, progress=False, resume=True)
    assert run_finished(tmp_path / "b")
    assert_same_weights(weights(straight), weights(tmp_path / "b"))


def test_nonfinite_loss_stops_training_and_is_never_checkpointed(tmp_path, monkeypatch):
    import con2.train as train_mod

    real, calls = train_mod.objective_loss, []

    def nan_at_step_4(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 5 else loss  # the 5th step is global step 4

    monkeypatch.setattr(train_mod, "objective_loss", nan_at_step_4)
    with pytest.raises(FloatingPointError, match="non-finite .* at step 4"):
        train(tiny_cfg(tmp_path / "r"), tiny_split(), progress=False)  # 3 steps per epoch
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 3  # the end of epoch 1; the failing epoch saved nothing
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    split = tiny_split()
    train(tiny_cfg(tmp_path / "a", epochs=1), split, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_cfg(tmp_path / "a", epochs=1), split, progress=False)


def test_resume_with_other_settings_fails(tmp_path):
    split = tiny_split()
    train(tiny_cfg(tmp_path / "a"), split, progress=False, stop_after_steps=2)
    config = (tmp_path / "a" / "config.json").read_text()
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_cfg(tmp_path / "a", batch_size=4), split, progress=False, resume=True)
    with pytest.raises(ValueError, match="normal_class"):
        train(tiny_cfg(tmp_path / "a", normal_class=["3"]), split, progress=False, resume=True)
    for same in (["8"], ["08"], [8]):  # the default class, given (it was refused: None vs ['8'])
        assert identity_mismatch(json.loads(config), tiny_cfg(tmp_path / "a", normal_class=same)) is None, same
    assert identity_mismatch({"dataset": "breast", "normal_class": None},
                             TrainConfig(dataset="breast", normal_class=["normal, benign"])) is None
    assert "normal_class" in identity_mismatch({"dataset": "breast", "normal_class": None},
                                               TrainConfig(dataset="breast", normal_class=["0"]))
    with pytest.raises(ValueError, match="val_fraction was 0.1, now 0.2"):  # a split setting names itself
        train(tiny_cfg(tmp_path / "a", val_fraction=0.2), split, progress=False, resume=True)
    saved = json.loads(config)
    assert identity_mismatch(saved, tiny_cfg(tmp_path / "a", val_fraction=0.1)) is None  # digits' default, given
    legacy = {"dataset": "npz", "extra": {"val_fraction": 0.2, "n_train": 50}}  # before they were fields
    assert identity_mismatch(legacy, TrainConfig(dataset="npz", val_fraction=0.2, n_train=50)) is None
    assert identity_mismatch(legacy, TrainConfig(dataset="npz", n_train=50)) == "val_fraction was 0.2, now 0.0"
    with pytest.raises(ValueError, match="training images differ"):  # same settings, other pixels
        train(tiny_cfg(tmp_path / "a"), tiny_split(seed=1), progress=False, resume=True)
    assert (tmp_path / "a" / "config.json").read_text() == config  # a refused resume changes nothing
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="checkpoint.pt is corrupt"):
        train(tiny_cfg(tmp_path / "a"), split, progress=False, resume=True)


def test_load_run_refuses_weights_of_another_run_and_corrupt_files(tmp_path):
    import shutil

    split = tiny_split()
    a = train(tiny_cfg(tmp_path / "a", epochs=1), split, progress=False)
    b = train(tiny_cfg(tmp_path / "b", epochs=1, context="flip"), split, progress=False)  # same shapes
    wide = train(tiny_cfg(tmp_path / "w", epochs=1, width=8), split, progress=False)
    swapped = tmp_path / "swapped"
    shutil.copytree(a, swapped)
    shutil.copy(b / "model.safetensors", swapped / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors was trained with other settings.*context"):
        load_run(swapped)
    shutil.copy(b / "model.json", swapped / "model.json")
    shutil.copy(a / "model.safetensors", swapped / "model.safetensors")
    with pytest.raises(ValueError, match="model.json was trained with other settings.*context"):
        load_run(swapped)
    shutil.copy(a / "model.json", swapped / "model.json")
    load_run(swapped)  # back to a's own files
    # files from before runs recorded their identity: the tensor shapes decide, in one line
    from safetensors.torch import load_file, save_file

    (swapped / "model.json").write_text(json.dumps({**json.loads((a / "model.json").read_text()), "identity": {}}))
    save_file(load_file(str(wide / "model.safetensors")), str(swapped / "model.safetensors"))
    with pytest.raises(ValueError, match="another architecture: .* is \\[8"):
        load_run(swapped)
    (swapped / "model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        load_run(swapped)
    (swapped / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        load_run(swapped)


def test_damaged_run_files_are_named_not_scored_or_resumed(tmp_path, monkeypatch):
    """Bytes damaged inside model.safetensors or checkpoint.pt were scored / resumed from without a
    word (only whole-file damage was found); a model.json without its architecture was a KeyError."""
    import os

    from con2.evaluate import evaluate_run

    split = tiny_split()
    run = train(tiny_cfg(tmp_path / "a", epochs=1), split, progress=False)
    weights = run / "model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-64:] = bytes(b ^ 0x40 for b in data[-64:])  # inside the last tensor's values
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors is corrupt: its SHA-256 does not match"):
        load_run(run)
    weights.write_bytes(original)
    load_run(run)
    info = json.loads((run / "model.json").read_text())
    from con2.run import run_split

    for damaged in ({}, None, [1]):
        (run / "model.json").write_text(json.dumps({**info, "data": damaged}))
        with pytest.raises(ValueError, match="fingerprint in model.json is damaged"):
            run_split(run, load_run(run)[0], split)
    del info["architecture"]
    (run / "model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="model.json or model.safetensors is damaged.*architecture"):
        load_run(run)

    train(tiny_cfg(tmp_path / "b"), split, progress=False, stop_after_steps=2)
    ckpt = tmp_path / "b" / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0x01 for b in data[middle:middle + 8])
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checkpoint.pt is corrupt and cannot be resumed from"):
        train(tiny_cfg(tmp_path / "b"), split, progress=False, resume=True)

    good = train(tiny_cfg(tmp_path / "c", epochs=1), split, progress=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only mount (root ignores chmod)
    monkeypatch.setattr("con2.evaluate.evaluate_model", lambda *a, **k: pytest.fail("scored before failing"))
    with pytest.raises(PermissionError, match="is not writable, and the evaluation writes metrics.json"):
        evaluate_run(good, views=0, split=split, progress=False)


def test_resume_refuses_a_run_whose_checkpoint_is_gone_but_whose_log_is_past_it(tmp_path, capsys):
    """With checkpoint.pt deleted, --resume restarted at step 0 and erased the metrics history."""
    split = tiny_split()  # 24 images, batch 8: 3 steps an epoch, a checkpoint after each
    run = tmp_path / "a"
    train(tiny_cfg(run, epochs=4), split, progress=False, stop_after_steps=8)
    log = (run / "metrics.jsonl").read_text()
    assert max(json.loads(line)["global_step"] for line in log.splitlines()) > 3
    (run / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"logs training up to step \d+, past the first checkpoint \(step 3\), "
                                                r"but checkpoint.pt is missing"):
        train(tiny_cfg(run, epochs=4), split, progress=False, resume=True)
    assert (run / "metrics.jsonl").read_text() == log  # the history is kept
    (run / "metrics.jsonl").write_bytes(b'{"global_step": 2}\n\xe0\xff not utf-8\n')  # before the first: a restart
    capsys.readouterr()
    train(tiny_cfg(run, epochs=4), split, progress=True, resume=True)
    assert run_finished(run)
    assert "no checkpoint to continue from, starting at step 0" in capsys.readouterr().out  # a run begun before


def test_a_second_training_into_a_folder_being_written_is_refused(tmp_path):
    """Two trainings into one --out interleaved their metrics lines and one died on the other's
    checkpoint.pt.tmp."""
    from con2.files import folder_lock

    split = tiny_split()
    run = tmp_path / "a"
    run.mkdir()
    with folder_lock(run, "con2 train"):  # as another process's training holds it
        with pytest.raises(RuntimeError, match=r"a is in use: another con2 train is writing it"):
            train(tiny_cfg(run, epochs=1), split, progress=False)
        assert not (run / "config.json").exists()
    train(tiny_cfg(run, epochs=1), split, progress=False)  # released: trains
    assert run_finished(run)


def test_scoring_a_run_being_trained_says_so(tmp_path):
    """evaluate of a run in training said "model.json is missing (train it, or --resume it)"; a
    --resume would be refused, the folder being in use."""
    from con2.files import folder_in_use, folder_lock

    run = tmp_path / "a"
    run.mkdir()
    (run / "config.json").write_text(tiny_cfg(run).to_json())
    assert not folder_in_use(run) and not (run / ".lock").exists()  # no lock file made by asking
    with folder_lock(run, "con2 train"):  # as another process's training holds it
        assert folder_in_use(run)
        with pytest.raises(FileNotFoundError, match=r"a is being trained \(a con2 train is writing it\): its "
                                                    r"model.json is written when the training ends"):
            load_run(run)
    assert not folder_in_use(run)
    with pytest.raises(FileNotFoundError, match=r"model.json is missing \(train it, or --resume it\)"):
        load_run(run)


SIGINT_ARGS = ["--dataset", "digits", "--epochs", "40", "--batch-size", "8", "--width", "4", "--device", "cpu",
               "--checkpoint-every", "1"]


def test_a_forked_worker_leaves_ctrl_c_to_the_main_process(monkeypatch, capsys):
    """Ctrl-C reaches the whole process group: each DataLoader worker (forked, so with the handler)
    printed its own "stopping" line."""
    import os
    import signal

    from con2.train import _Interrupt

    with _Interrupt() as interrupt:
        pid = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: pid + 1)
        interrupt._handle(signal.SIGINT, None)
        interrupt._handle(signal.SIGINT, None)  # not a second signal either: no _HardInterrupt
        assert not interrupt.requested and capsys.readouterr().out == ""
        monkeypatch.setattr(os, "getpid", lambda: pid)
        interrupt._handle(signal.SIGINT, None)
        assert interrupt.requested and capsys.readouterr().out.count("stopping") == 1


def test_a_second_sigterm_leaves_at_once_and_is_named_like_the_first(capsys):
    """The second signal leaves mid-step; a SIGTERM's is a Stopped (the CLI's last line names it),
    Ctrl-C's a plain KeyboardInterrupt."""
    import signal

    from con2.stop import Stopped
    from con2.train import _HardInterrupt, _Interrupt

    for sig, named in ((signal.SIGTERM, True), (signal.SIGINT, False)):
        with _Interrupt() as interrupt:
            interrupt._handle(sig, None)
            with pytest.raises(_HardInterrupt) as exc:
                interrupt._handle(sig, None)
        assert isinstance(exc.value, Stopped) == named
        if named:
            assert str(exc.value) == "SIGTERM"
    capsys.readouterr()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_signal_mid_training_is_named_in_the_commands_last_line(tmp_path, monkeypatch, capsys, signame):
    """Training stopped by SIGTERM between steps ended with "con2 train: interrupted", where the
    docs (and every other command) say "stopped by SIGTERM"."""
    import signal

    import con2.train
    from con2.cli.main import main

    step, calls = con2.train._train_step, []

    def signalled_second_step(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), getattr(signal, signame))
        return step(*args)

    monkeypatch.setattr(con2.train, "_train_step", signalled_second_step)
    assert main(["train"] + SIGINT_ARGS + ["--out", str(tmp_path / "r")]) == 130
    out, err = capsys.readouterr()
    assert f"{signame}: stopping after the current step" in out and "interrupted at step 2/" in out
    assert err.splitlines()[-1] == f"con2 train: stopped by {signame}"


def test_a_closed_terminal_stops_training_after_its_step_unless_nohup_ignores_it():
    """SIGHUP ended training at once, losing the steps since the last checkpoint."""
    import signal

    from con2.train import _Interrupt

    before = signal.getsignal(signal.SIGHUP)
    with _Interrupt() as interrupt:
        assert signal.getsignal(signal.SIGHUP) == interrupt._handle
    assert signal.getsignal(signal.SIGHUP) is before
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    try:
        with _Interrupt() as interrupt:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == interrupt._handle
    finally:
        signal.signal(signal.SIGHUP, before)


def test_ctrl_c_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGINT lands mid-step (the forward pass has moved the BatchNorm statistics): training stops
    at the step's end and checkpoints that, so resuming gives exactly the uninterrupted weights,
    BatchNorm buffers included."""
    import signal

    cli = [sys.executable, "-c", "import sys; from con2.cli.main import main; sys.exit(main(sys.argv[1:]))", "train"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.Popen(cli + SIGINT_ARGS + ["--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_metrics_lines(tmp_path / "cut" / "metrics.jsonl", 3, procs=[proc])
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "stopping after the current step" in out and "checkpoint saved" in out
    step = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["global_step"]
    assert 0 < step < 40 * 13
    from con2.cli.main import main

    assert main(["train"] + SIGINT_ARGS + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert main(["train"] + SIGINT_ARGS + ["--out", str(tmp_path / "straight")]) == 0
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "cut"))


@pytest.mark.parametrize("objective,loss", [("context", "context_only_loss"), ("content", "content_only_loss"),
                                            ("simclr", "simclr_loss")])
def test_objectives_train_with_their_own_loss(tmp_path, monkeypatch, objective, loss):
    import con2.train

    called = []
    for name in ("con2_loss", "context_only_loss", "content_only_loss", "simclr_loss"):
        fn = getattr(con2.train, name)
        monkeypatch.setattr(con2.train, name, lambda *a, _n=name, _f=fn: (called.append(_n), _f(*a))[1])
    run = train(tiny_cfg(tmp_path / objective, epochs=1, objective=objective, context="flip"),
                tiny_split(channels=3), progress=False)
    assert set(called) == {loss} and len(called) > 0
    cfg, _ = load_run(run)
    assert cfg.objective == objective


def test_two_contexts_compose_into_four(tmp_path, monkeypatch):
    """invert,flip: the identity, invert, flip and both; every step contrasts all four."""
    import con2.train

    seen, loss = [], con2.train.con2_loss
    monkeypatch.setattr(con2.train, "con2_loss",
                        lambda z1, z2, labels, *a: (seen.append(labels.unique().tolist()), loss(z1, z2, labels, *a))[1])
    run = train(tiny_cfg(tmp_path / "k4", epochs=1, context="invert,flip"), tiny_split(), progress=False)
    cfg, model = load_run(run)
    assert cfg.context == "invert,flip"
    assert seen and all(labels == [0, 1, 2, 3] for labels in seen)


def test_load_run_rejects_foreign_weights(tmp_path):
    run = train(tiny_cfg(tmp_path / "a", epochs=1), tiny_split(), progress=False)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(run / "model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        load_run(run)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, {root!r})
from tests.test_train import tiny_cfg, tiny_split
from con2.train import train
train(tiny_cfg({out!r}, epochs={epochs}, batch_size=8), tiny_split(), progress=False)
"""


def _start_ddp(tmp_path, epochs):
    """Two gloo ranks training the tiny run into tmp_path/ddp; their processes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=root, out=str(tmp_path / "ddp"), epochs=epochs))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]


def _wait_for_metrics_lines(metrics, n, timeout=300, procs=()):
    """Until `metrics` holds n lines, so a signal sent next reaches a training past its start-up; a
    process that ended, or a wait past `timeout`, fails here with its output (a signal sent then would
    fail later, naming the wrong cause)."""
    import time

    t0 = time.time()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.time() - t0 > timeout:
            for p in procs:
                p.kill()
            outs = [p.communicate()[0] or "" for p in procs]
            out = "".join(o.decode(errors="replace") if isinstance(o, bytes) else o for o in outs)
            pytest.fail(f"training did not log {n} metrics lines ({'a process ended' if ended else 'timed out'}):\n"
                        f"{out[-3000:]}")
        time.sleep(0.05)


def test_ddp_world_size_2_matches_one_process(tmp_path):
    single = train(tiny_cfg(tmp_path / "single", epochs=1, batch_size=8), tiny_split(), progress=False)
    procs = _start_ddp(tmp_path, epochs=1)
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert_same_weights(weights(single), weights(tmp_path / "ddp"), atol=1e-4)


def test_ddp_ranks_stop_after_the_same_step_when_one_is_interrupted(tmp_path):
    """A signal that reaches one rank only (or the ranks at different moments) must not leave the
    other waiting in an all-reduce: the ranks agree on the step to stop after."""
    import signal

    procs = _start_ddp(tmp_path, epochs=200)
    _wait_for_metrics_lines(tmp_path / "ddp" / "metrics.jsonl", 2, procs=procs)
    procs[1].send_signal(signal.SIGINT)
    try:
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode != 0 for p in procs)  # both left (KeyboardInterrupt), neither hangs
    assert "stopping after the current step" in outs[1] and "checkpoint saved" in outs[0], outs
    step = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["global_step"]
    assert 0 < step < 200 * 3 and (step % 10 == 0 or step % 3 == 0)  # a metrics step or an epoch end


def test_cli_bad_arguments_give_one_line(tmp_path, capsys):
    from con2.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "nope"])
    assert exc.value.code == 2
    capsys.readouterr()
    base = ["train", "--dataset", "digits", "--epochs", "1", "--width", "4", "--device", "cpu",
            "--out", str(tmp_path / "r")]
    for extra, match in [(["--checkpoint-every", "0"], "--checkpoint-every"),
                         (["--max-train-samples", "0"], "--max-train-samples"),
                         (["--split-seed", "-1"], "--split-seed"), (["--lr", "nan"], "--lr"),
                         (["--val-fraction", "1"], "--val-fraction"), (["--test-fraction", "nan"], "--test-fraction"),
                         (["--test-fraction", "0.6", "--val-fraction", "0.4"], "no normals to train on"),
                         (["--lr", "1e39"], "float32"),
                         # finite losses, but BatchNorm running statistics that make every feature NaN
                         (["--lr", "1e6", "--max-train-samples", "32", "--batch-size", "16"], "training diverged"),
                         (["--lr", "1e30", "--epochs", "2"], "non-finite")]:  # the loss blows up
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]  # (the progress bar is on stderr too)
        assert match in err and "Traceback" not in err and len(errors) == 1, err


def test_a_diverged_run_stops_at_its_first_checkpoint_not_its_last_epoch(tmp_path):
    """BatchNorm statistics blown up by a huge --lr (finite losses, NaN eval-mode features) are found
    at the first periodic checkpoint: the run stops after epoch 1 of 6 and saves no checkpoint of it."""
    cfg = tiny_cfg(tmp_path / "run", epochs=6, batch_size=16, lr=1e6, max_train_samples=32)
    with pytest.raises(FloatingPointError, match="training diverged: the eval-mode representations"):
        train(cfg, progress=False)
    steps = [json.loads(line)["global_step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [2] and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_time_limit_pauses_and_resume_finishes(tmp_path, capsys):
    from con2.cli.main import main
    from con2.cli.train_cmd import parse_duration

    assert parse_duration("5400") == parse_duration("90m") == parse_duration("1h30m") == 5400
    assert parse_duration("1h2m3s") == 3723 and parse_duration("0.5s") == 0.5
    for bad in ("", "soon", "0", "3x"):
        with pytest.raises(Exception, match="duration|positive"):
            parse_duration(bad)
    for ambiguous in ("1h30", "2m30", "1h 30"):  # 1h30 was 1 h 30 s, a job pausing 29.5 min early
        with pytest.raises(Exception, match=r"give the unit of 30, as in 1h30m or 2m30s"):
            parse_duration(ambiguous)
    args = ["train", "--dataset", "digits", "--epochs", "2", "--width", "4", "--max-train-samples", "16",
            "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run")]
    # spent before the first step ends: one step, then leave, with the status a job script resubmits on
    assert main(args + ["--time-limit", "0.001s"]) == 75
    assert "time limit reached" in capsys.readouterr().out and not run_finished(tmp_path / "run")
    # what the pause message says: the run's settings
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--time-limit", "1h"]) == 0
    assert "trained model in" in capsys.readouterr().out and run_finished(tmp_path / "run")


def test_cli_resume_takes_the_runs_settings_and_names_every_changed_one(tmp_path, capsys):
    from con2.cli.main import main

    out = str(tmp_path / "run")
    args = ["train", "--dataset", "digits", "--epochs", "2", "--width", "4", "--max-train-samples", "16",
            "--batch-size", "8", "--device", "cpu", "--out", out]
    main(args + ["--time-limit", "0.001s"])
    capsys.readouterr()
    assert main(["train", "--resume", "--out", out, "--epochs", "3", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "epochs was 2, now 3" in err and "seed was 0, now 1" in err and "--resume:" not in err, err
    assert main(["train", "--resume", "--out", out, "--device", "cpu"]) == 0  # a non-identity setting may change
    assert run_finished(out)


def test_training_into_a_finished_run_is_refused_even_without_its_checkpoint(tmp_path):
    split = tiny_split()
    run = train(tiny_cfg(tmp_path / "a", epochs=1), split, progress=False)
    (run / "checkpoint.pt").unlink()
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_cfg(run, epochs=2), split, progress=False)
    with pytest.raises(FileExistsError, match="no checkpoint"):  # afresh would replace the trained model
        train(tiny_cfg(run, epochs=1), split, progress=False, resume=True)
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


def test_a_refused_pipeline_writes_no_run_files(tmp_path, monkeypatch):
    import con2.train as train_module

    def refuse(*args, **kwargs):
        raise ValueError("--pipeline dali: not available here")

    monkeypatch.setattr(train_module, "make_batch_source", refuse)
    with pytest.raises(ValueError, match="dali"):
        train(tiny_cfg(tmp_path / "a", epochs=1), tiny_split(), progress=False)
    assert not (tmp_path / "a").exists()


def _npz_run(tmp_path, name, seed, **kw):
    x = np.random.RandomState(seed).randint(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    y = np.array([0] * 30 + [1] * 10)
    np.savez(tmp_path / f"{name}.npz", images=x, labels=y)
    cfg = tiny_cfg(tmp_path / name, dataset="npz", data_file=f"{name}.npz", normal_class=["0"], epochs=1, **kw)
    return train(cfg, progress=False)


def test_scoring_refuses_data_that_changed_since_training(tmp_path, monkeypatch):
    import shutil

    from con2.data import DataError
    from con2.evaluate import evaluate_run, score_split

    monkeypatch.chdir(tmp_path)  # the runs name their data files relative to here
    run = _npz_run(tmp_path, "a", seed=0)
    other = _npz_run(tmp_path, "b", seed=1)
    assert json.loads((run / "config.json").read_text())["data_file"] == str(tmp_path / "a.npz")  # absolute
    monkeypatch.chdir(tmp_path.parent)  # the run still finds its data from another directory
    assert np.isfinite(score_split(run, views=2, progress=False).scores).all()
    with pytest.raises(ValueError, match=r"score_split scores with one scorer \('nnd' or 'lh'\), got \['nnd', 'lh'\]"):
        score_split(run, "test", ["nnd", "lh"], views=2, progress=False)
    assert np.isfinite(score_split(run, "test", ["nnd"], views=2, progress=False).scores).all()  # a list of one
    # weights (and model.json) of a run with the same settings on other data
    shutil.copytree(run, tmp_path / "swapped")
    for name in ("model.safetensors", "model.json"):
        shutil.copy(other / name, tmp_path / "swapped" / name)
    with pytest.raises(DataError, match="differ from those its model was trained on"):
        evaluate_run(tmp_path / "swapped", views=2, progress=False)
    shutil.copy(other / "model.safetensors", run / "model.safetensors")  # the weights alone, model.json kept
    with pytest.raises(DataError, match="model.safetensors"):
        score_split(run, views=2, progress=False)
    shutil.copy(tmp_path / "a.npz", tmp_path / "b.npz")  # the data file replaced since training
    with pytest.raises(DataError, match="the data changed since training"):
        score_split(other, views=2, progress=False)


def test_runs_trained_while_an_inapplicable_option_was_ignored_still_load(tmp_path, monkeypatch):
    """Older con2 ignored --split-seed / --test-fraction ... on data with its own split; training now
    refuses them, but a run trained with one still evaluates and resumes, on the split it trained on."""
    from con2.data import DataError
    from con2.evaluate import score_split

    rng = np.random.RandomState(0)
    images = lambda n: rng.randint(0, 256, (n, 12, 12, 1), dtype=np.uint8)  # noqa: E731
    np.savez(tmp_path / "given.npz", train_images=images(20), train_labels=np.zeros(20, int),
             test_images=images(8), test_labels=np.array([0, 1] * 4))
    cfg = lambda out, **kw: tiny_cfg(tmp_path / out, dataset="npz", data_file=str(tmp_path / "given.npz"),  # noqa: E731
                                     normal_class=["0"], split_seed=3, test_fraction=0.5, **kw)
    with pytest.raises(DataError, match="--test-fraction 0.5 and --split-seed 3 cannot apply"):
        train(cfg("refused"), progress=False)
    with monkeypatch.context() as old_con2:
        old_con2.setattr("con2.data.loaders.common.split_options_set", lambda cfg: {})
        done = train(cfg("done", epochs=1), progress=False)
        train(cfg("paused"), progress=False, stop_after_steps=2)
    assert len(score_split(done, views=2, progress=False).scores) == 8
    assert run_finished(train(cfg("paused"), progress=False, resume=True))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({"colour": 1})
    # runs written before val_fraction / n_train were fields kept them in `extra`
    legacy = TrainConfig.from_dict({"dataset": "npz", "extra": {"val_fraction": 0.2, "n_train": 1000}})
    assert (legacy.val_fraction, legacy.n_train) == (0.2, 1000)
    assert TrainConfig.from_dict({"extra": {}}).val_fraction is None
    with pytest.raises(ValueError, match="unknown configuration keys: extra.colour"):
        TrainConfig.from_dict({"extra": {"colour": 1}})
    with pytest.raises(ValueError, match="--n-train must be >= 1"):
        TrainConfig(n_train=0).validate()
    with pytest.raises(ValueError, match="leave no normals"):
        TrainConfig(test_fraction=0.5, val_fraction=0.5).validate()
    with pytest.raises(ValueError, match="unknown context"):
        TrainConfig(context="rotate").validate()
    with pytest.raises(ValueError, match="needs --normal-class"):
        TrainConfig(dataset="cifar10").validate()


def test_paper_preset_sets_the_papers_schedule_and_preprocessing():
    from con2.cli.train_cmd import add_train_options, config_from_args
    import argparse

    def parsed(*argv):
        p = argparse.ArgumentParser()
        add_train_options(p)
        p.add_argument("--out", default=None)
        return config_from_args(p.parse_args(list(argv)))

    c = parsed("--dataset", "breast", "--preset", "paper")  # METHOD section 6
    assert (c.epochs, c.batch_size, c.lr, c.weight_decay) == (2048, 64, 1e-3, 1e-3)
    assert (c.image_size, c.center_crop) == (256, 224)
    assert (parsed("--dataset", "pneumonia", "--preset", "paper").batch_size,) == (128,)
    c = parsed("--dataset", "breast", "--preset", "paper", "--image-size", "64", "--epochs", "10")
    assert (c.image_size, c.center_crop, c.epochs) == (64, None, 10)  # what the user set wins, as a pair
    c = parsed("--dataset", "cifar10", "--normal-class", "0", "--preset", "paper")
    assert (c.image_size, c.center_crop, c.batch_size) == (None, None, 512)  # CIFAR: 32 x 32 as is
    assert (parsed("--dataset", "breast").image_size, parsed("--dataset", "breast").epochs) == (None, 20)
    c = parsed("--dataset", "npz", "--normal-class", "0", "--n-train", "1000", "--val-fraction", "0.1")
    assert (c.n_train, c.val_fraction) == (1000, 0.1)  # the BR35H protocol's split, from the command line
    with pytest.warns(UserWarning, match="--objective simclr trains on the original images only.*--context flip"):
        parsed("--objective", "simclr", "--context", "flip")  # the baseline has no contexts: said, not ignored


def test_predict_applies_the_runs_center_crop(tmp_path):
    from PIL import Image

    from con2.data import load_split
    from con2.evaluate import scorer_for_run
    from con2.predict import predict_files

    cfg = tiny_cfg(tmp_path / "run", epochs=1, image_size=12, center_crop=10, max_train_samples=24)
    run = train(cfg, progress=False)
    # resize 12, crop 10: the network trains and scores on 10 px views (the paper's 256 -> 224 gives 224)
    assert load_run(run)[1].image_size == 10
    assert view_config(cfg, load_split(cfg)).size == 10
    assert view_config(tiny_cfg(tmp_path, image_size=12), load_split(cfg)).size == 12  # views resized to it
    uncropped = load_split(TrainConfig(dataset="digits", image_size=12)).test[:5]
    for i, img in enumerate(uncropped):
        Image.fromarray(img[:, :, 0]).save(tmp_path / f"{i}.png")
    got = predict_files(run, [tmp_path / f"{i}.png" for i in range(5)], views=2, threshold=0.0, progress=False)
    cfg, model = load_run(run, device="cpu")
    split = load_split(cfg)
    assert split.test.shape[1:] == (10, 10, 1)
    want = scorer_for_run(model, cfg, split, 2, ("nnd",), progress=False).score(split.test[:5])["nnd"].numpy()
    np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-5, atol=1e-6)


def test_predict_reads_the_files_a_chunk_at_a_time_with_the_same_scores(tmp_path, monkeypatch):
    """A folder larger than memory is scored chunk by chunk (here 2 files each); scores, order and
    the one warning about misshapen files are those of a single chunk."""
    import warnings

    from PIL import Image

    import con2.data.images
    import con2.predict
    from con2.data import load_split
    from con2.predict import predict_files

    run = train(tiny_cfg(tmp_path / "run", epochs=1, max_train_samples=24), progress=False)
    files = []
    for i, img in enumerate(load_split(TrainConfig(dataset="digits", image_size=8)).test[:5]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img[:, :, 0] if i != 3 else np.repeat(img[:, :, 0], 4, axis=1)).save(files[-1])
    with warnings.catch_warnings(record=True) as whole:
        warnings.simplefilter("always")
        want = predict_files(run, files, views=2, threshold=0.0, progress=False)
    monkeypatch.setattr(con2.data.images, "CHUNK_BYTES", 2 * 16 * 16)  # the run's 16 px grey images
    reads, read = [], con2.predict._read
    monkeypatch.setattr(con2.predict, "_read", lambda part, *a: (reads.append(list(part)), read(part, *a))[1])
    with warnings.catch_warnings(record=True) as chunked:
        warnings.simplefilter("always")
        got = predict_files(run, files, views=2, threshold=0.0, progress=False)
    assert reads == [files[0:2], files[2:4], files[4:5]]  # read 2 files at a time
    assert [r["file"] for r in got] == [str(f) for f in files]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-6, atol=1e-7)
    msgs = [str(w.message) for w in chunked if "resized to the run's" in str(w.message)]
    assert len(msgs) == 1 and msgs == [str(w.message) for w in whole if "resized to the run's" in str(w.message)]
    assert msgs[0].startswith("1 of 5 images") and "3.png" in msgs[0]


def test_predict_makes_a_file_into_the_pixels_the_run_was_trained_on(tmp_path):
    """Native 8 px digit files (the loader resizes digits to 16 px with its antialiased bilinear
    resize, then this run crops 12): predict must resize the same way, to the size before the crop,
    so a file scores as the same image does inside the test split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from con2.data import load_split
    from con2.evaluate import scorer_for_run
    from con2.predict import predict_files

    cfg = tiny_cfg(tmp_path / "run", epochs=1, center_crop=12, max_train_samples=24)
    run = train(cfg, progress=False)
    split = load_split(cfg)
    assert split.meta["pre_crop_size"] == [16, 16] and split.test.shape[1:] == (12, 12, 1)
    d = load_digits()  # the loader's split: test images are these, resized and cropped
    native = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    raw_test = load_split(TrainConfig(dataset="digits", image_size=8)).test[:4]
    for i, img in enumerate(raw_test):
        assert any(np.array_equal(img[:, :, 0], n) for n in native)
        Image.fromarray(img[:, :, 0]).save(tmp_path / f"{i}.png")
    got = predict_files(run, [tmp_path / f"{i}.png" for i in range(4)], views=2, threshold=0.0, progress=False)
    cfg, model = load_run(run, device="cpu")
    want = scorer_for_run(model, cfg, split, 2, ("nnd",), progress=False).score(split.test[:4])["nnd"].numpy()
    np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-5, atol=1e-6)


def test_predict_scales_16_bit_files_as_the_folder_loader_does(tmp_path):
    from PIL import Image

    from con2.data.decode import decode_image
    from con2.predict import read_images

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    got = read_images([tmp_path / "deep.png"], (8, 8), 1, folder=True)[0]
    np.testing.assert_array_equal(got, decode_image(tmp_path / "deep.png", (8, 8)))
    assert got.max() < 255 and got[0, 1, 0] == round(1000 / 257)  # scaled, not clipped at 255


def test_score_csv_names_each_images_class_and_file(tmp_path):
    """`con2 score` rows trace back to their images: folder runs give the source file, every run the
    class name; the scores are the run's scorer's, in the split's order."""
    import csv

    from PIL import Image

    from con2.cli.main import main
    from con2.data import load_split
    from con2.evaluate import scorer_for_run, score_split

    rng = np.random.default_rng(0)
    for cls, n in (("good", 14), ("crack", 4)):
        for i in range(n):
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    run = tmp_path / "run"  # the CLI's seeded-split options make the val part that predict calibrates on
    main(["train", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--normal-class", "good",
          "--test-fraction", "0.3", "--val-fraction", "0.2", "--epochs", "1", "--width", "4", "--batch-size", "8",
          "--device", "cpu", "--out", str(run)])
    assert load_run(run)[0].val_fraction == 0.2
    for part in ("test", "val"):
        out = tmp_path / f"{part}.csv"
        main(["score", "--run", str(run), "--views", "2", "--split", part, "--out", str(out), "--quiet"])
        rows = list(csv.DictReader(out.open()))
        split = load_split(load_run(run)[0])
        files = split.test_files if part == "test" else split.meta["val_files"]
        assert [r["file"] for r in rows] == files and len(rows) == len(getattr(split, part)) > 0
        assert [r["class"] for r in rows] == [f.split("/")[-2] for f in files]
        assert [int(r["label"]) for r in rows] == [int(r["class"] != "good") for r in rows]
        cfg_, model = load_run(run, device="cpu")
        want = scorer_for_run(model, cfg_, split, 2, ("nnd",), progress=False).score(getattr(split, part))["nnd"].numpy()
        np.testing.assert_allclose([float(r["nnd_mean"]) for r in rows], want, rtol=1e-5, atol=1e-6)
    assert sum(int(r["label"]) for r in csv.DictReader((tmp_path / "test.csv").open())) == 4
    # the library call behind `con2 score` gives the CSV's columns as arrays
    res = score_split(run, "test", views=2, progress=False, device="cpu")
    rows = list(csv.DictReader((tmp_path / "test.csv").open()))
    np.testing.assert_allclose(res.scores, [float(r["nnd_mean"]) for r in rows], rtol=1e-12)
    assert res.per_view.shape == (len(rows), 2) and res.files == [r["file"] for r in rows]
    np.testing.assert_allclose(res.per_view.mean(axis=1), res.scores)
    with pytest.raises(ValueError, match="part must be test, val or train"):
        score_split(run, "valid")
    with pytest.raises(ValueError, match="unknown scorer 'knn'"):
        score_split(run, "test", scorer="knn")


def test_training_refuses_images_it_cannot_view_before_writing_anything(tmp_path):
    from con2.data.datasets import DataError

    x = np.random.RandomState(0).randint(0, 256, (24, 8, 20, 1), dtype=np.uint8)  # 20 x 8: not square
    wide = OneClassSplit("wide", x, x[:6], np.array([0, 1] * 3), x[:0])
    with pytest.raises(DataError, match="20x8 px; training needs square images.*--image-size S .* or --center-crop"):
        train(tiny_cfg(tmp_path / "wide"), split=wide, progress=False)
    tiny = OneClassSplit("tiny", x[:, :4, :4], x[:6, :4, :4], np.array([0, 1] * 3), x[:0, :4, :4])
    with pytest.raises(DataError, match=r"4x4 px.*pass --image-size S \(resize; S >= 8\)$"):  # a crop cannot grow
        train(tiny_cfg(tmp_path / "tiny"), split=tiny, progress=False)
    assert not (tmp_path / "wide").exists() and not (tmp_path / "tiny").exists()
    run = train(tiny_cfg(tmp_path / "cropped", epochs=1, center_crop=8), split=wide, progress=False)
    assert load_run(run)[1].image_size == 8


def test_scoring_options_have_clear_limits(tmp_path, capsys):
    from con2.cli.main import main
    from con2.evaluate import evaluate_model
    from con2.scoring import MAX_VIEWS, view_plan

    with pytest.raises(ValueError, match=f"2..{MAX_VIEWS}"):
        view_plan(MAX_VIEWS + 2, None)
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path), "--views", str(MAX_VIEWS + 2)])
    assert f"even number 2..{MAX_VIEWS}" in capsys.readouterr().err
    x = np.random.RandomState(0).randint(0, 256, (24, 12, 12, 1), dtype=np.uint8)
    no_test = OneClassSplit("no-test", x, x[:0], np.zeros(0, np.int64), x[:0])
    cfg = tiny_cfg(tmp_path / "run", epochs=1)
    _, model = load_run(train(cfg, split=tiny_split(), progress=False))
    with pytest.raises(ValueError, match="the test split is empty"):
        evaluate_model(model, cfg, no_test, views=2, progress=False)


def test_a_checkpoint_is_read_onto_the_cpu_so_its_rng_states_restore(tmp_path, monkeypatch):
    """The checkpoint was read with map_location=the training device; torch.set_rng_state takes CPU
    byte tensors only, so every resume on a GPU failed with "RNG state must be a torch.ByteTensor"
    (test_resume_on_the_gpu runs the real thing where a GPU is present)."""
    import dataclasses

    from con2.run import data_fingerprint
    from con2.train import _read_checkpoint, _set_rng_state

    split, cfg = tiny_split(), tiny_cfg(tmp_path / "a")
    train(cfg, split, progress=False, stop_after_steps=2)
    where, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (where.append(k.get("map_location")), load(*a, **k))[1])
    on_gpu = dataclasses.replace(cfg, device="cuda")  # a resume on a GPU, here where none is needed
    ckpt = _read_checkpoint(tmp_path / "a" / "checkpoint.pt", on_gpu, data_fingerprint(split))
    assert where == ["cpu"]
    assert ckpt["rng"]["cpu"].device.type == "cpu" and ckpt["rng"]["cpu"].dtype == torch.uint8
    with pytest.raises(TypeError, match="ByteTensor"):  # what a state on another device met
        torch.set_rng_state(ckpt["rng"]["cpu"].to("meta"))
    before = torch.get_rng_state()
    _set_rng_state(ckpt["rng"])
    assert torch.equal(torch.get_rng_state(), ckpt["rng"]["cpu"])
    torch.set_rng_state(before)


@pytest.mark.gpu
def test_resume_on_the_gpu_matches_a_straight_run(tmp_path):
    split = tiny_split()
    straight = train(tiny_cfg(tmp_path / "s", device="cuda"), split, progress=False)
    cfg = tiny_cfg(tmp_path / "a", device="cuda")
    train(cfg, split, progress=False, stop_after_steps=2)
    assert run_finished(train(cfg, split, progress=False, resume=True))
    # the views are drawn by CUDA generators seeded per step; cuDNN may sum in another order
    assert_same_weights(weights(straight), weights(tmp_path / "a"), atol=1e-4)


def test_ddp_batch_that_does_not_split_evenly_is_refused(tmp_path, monkeypatch):
    """Each rank gathers the others' projections in equal parts: 7 samples over 2 ranks aborted inside
    gloo ("Received data size doesn't match expected size") and can hang NCCL."""
    import con2.train as train_mod

    monkeypatch.setattr(train_mod, "_init_distributed", lambda cfg: (torch.device("cpu"), 0, 2, 0))
    with pytest.raises(ValueError, match="7 samples .* 2 DDP processes: give a --batch-size that is a multiple of 2"):
        train(tiny_cfg(tmp_path / "odd", batch_size=7), tiny_split(), progress=False)
    # a batch capped at the data's size: a multiple of 4 as --batch-size would not help
    with pytest.raises(ValueError, match="6 samples .* 4 DDP processes: a step is capped at the 6 training "
                                         "images: give a --batch-size of at most 4, a multiple of 4"):
        monkeypatch.setattr(train_mod, "_init_distributed", lambda cfg: (torch.device("cpu"), 0, 4, 0))
        train(tiny_cfg(tmp_path / "small", batch_size=64), tiny_split(n=6), progress=False)
    assert not (tmp_path / "odd").exists() and not (tmp_path / "small").exists()


DDP_DEADLINE_SCRIPT = r"""
import os, sys, time
sys.path.insert(0, {root!r})
from tests.test_train import tiny_cfg, tiny_split
from con2.train import train
# each rank computes its own deadline (the CLI does: time.time() + --time-limit when it starts)
deadline = 0.0 if os.environ["RANK"] == "0" else time.time() + 3600
train(tiny_cfg({out!r}, epochs=200, batch_size=8), tiny_split(), progress=False, deadline=deadline)
import torch.distributed as dist
assert not dist.is_initialized()  # the group train made is closed: left to exit, gloo could abort the process
"""


def test_ddp_ranks_agree_on_the_step_a_deadline_stops_after(tmp_path):
    """A rank past its deadline left while the others went on into the next step's all-gather."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_DEADLINE_SCRIPT.format(root=root, out=str(tmp_path / "ddp")))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    step = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["global_step"]
    assert step == 3  # the first step where the ranks wait anyway (the end of epoch 1)
    assert not run_finished(tmp_path / "ddp")


def test_resume_after_a_crash_does_not_repeat_metrics_lines(tmp_path, monkeypatch):
    """Steps logged after the last checkpoint (a crash, a second Ctrl-C) are trained and logged again
    by the resumed run: metrics.jsonl must hold each step once, in order."""
    import con2.train as train_mod

    real, calls = train_mod.objective_loss, []

    def crash_at_step_10(*args):
        calls.append(1)
        if len(calls) == 11:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args)

    split = tiny_split()
    # checkpoints at step 6 (resumed from there), or only at the end (the run starts again afresh)
    for name, checkpoint_every in (("r", 2), ("fresh", 4)):
        calls.clear()
        cfg = tiny_cfg(tmp_path / name, epochs=4, checkpoint_every=checkpoint_every)  # 3 steps per epoch
        with monkeypatch.context() as m:
            m.setattr(train_mod, "objective_loss", crash_at_step_10)
            with pytest.raises(RuntimeError, match="simulated"):
                train(cfg, split, progress=False)
        metrics = tmp_path / name / "metrics.jsonl"
        assert [json.loads(l)["global_step"] for l in metrics.read_text().splitlines()] == [3, 6, 9, 10]
        with metrics.open("a") as f:
            f.write('{"epoch": 3, "st')  # a line cut short by the crash
        train(cfg, split, progress=False, resume=True)
        assert [json.loads(l)["global_step"] for l in metrics.read_text().splitlines()] == [3, 6, 9, 10, 12]


def test_cli_resume_of_a_folder_holding_no_run_is_refused(tmp_path, capsys):
    """A mistyped --out with --resume trained the default run (digits, width 64, 20 epochs) there."""
    from con2.cli.main import main

    assert main(["train", "--resume", "--out", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert "holds no run to continue (no config.json there)" in err and "--dataset" in err
    assert not (tmp_path / "typo").exists()


def test_cli_n_train_and_test_fraction_are_alternatives(tmp_path, capsys):
    """--n-train silently overrode an explicit --test-fraction (which config.json still recorded)."""
    from con2.cli.main import main

    args = ["train", "--dataset", "digits", "--n-train", "50", "--test-fraction", "0.5", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "--n-train and --test-fraction are alternatives" in capsys.readouterr().err


def test_image_sizes_are_named_width_by_height_everywhere():
    from con2.data.datasets import DataError
    from con2.data.images import center_crop_array

    wide = np.zeros((2, 20, 32, 1), np.uint8)  # 20 high, 32 wide
    with pytest.raises(DataError, match="--center-crop 24 is larger than the 32x20 px images"):
        center_crop_array(wide, 24)


def test_progress_into_a_log_file_is_plain_lines_and_quiet_silences_it(tmp_path):
    """A bar's carriage returns made one ever-growing line in a batch job's log."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "con2.cli.main", "train", "--dataset", "digits", "--epochs", "2", "--width", "4",
            "--max-train-samples", "16", "--batch-size", "8", "--device", "cpu"]
    done = subprocess.run(args + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert lines and lines[-1].startswith("step 4/4 (100.0%), epoch 1, loss ") and "views/s" in lines[-1]
    quiet = subprocess.run(args + ["--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip() == f"trained model in {tmp_path / 'b'}"


def test_predict_decodes_a_shorter_side_run_as_its_folder_loader_did(tmp_path):
    """--resize shorter-side: a tall file scores as the same file does inside the run's test split
    (predict stretched it to the square, so its score was another image's)."""
    from PIL import Image

    from con2.data import load_split
    from con2.evaluate import scorer_for_run
    from con2.predict import predict_files

    rng = np.random.default_rng(5)
    for cls in ("good", "bad"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            a = rng.integers(0, 120, (30, 20), dtype=np.uint8)  # 20 wide, 30 high
            a[:5] = 255
            Image.fromarray(a).save(tmp_path / "data" / cls / f"{i}.png")
    cfg = TrainConfig(dataset="folder", data_root=str(tmp_path / "data"), normal_class=["good"], image_size=16,
                      resize="shorter-side", center_crop=12, width=4, epochs=1, batch_size=8, device="cpu",
                      out=str(tmp_path / "run"))
    run = train(cfg, progress=False)
    split = load_split(cfg)
    files = split.test_files[:4]
    got = predict_files(run, files, views=2, threshold=0.0, progress=False)
    cfg, model = load_run(run, device="cpu")
    want = scorer_for_run(model, cfg, split, 2, ("nnd",), progress=False).score(split.test[:4])["nnd"].numpy()
    np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-5, atol=1e-6)


def test_workers_sets_the_dataloader_processes_and_is_named_where_it_does_not_apply(tmp_path, monkeypatch):
    import con2.train as training
    from con2.data import sources

    with pytest.raises(ValueError, match="--workers must be >= 0"):
        TrainConfig(workers=-1).validate()
    made = []

    def spy(*args, **kw):
        made.append(source := real(*args, **kw))
        return source

    real = sources.make_batch_source
    monkeypatch.setattr(training, "make_batch_source", spy)
    train(tiny_cfg(tmp_path / "w", epochs=1, pipeline="workers", workers=0, max_train_samples=16), progress=False)
    assert made[-1].num_workers == 0  # was 2 whatever the machine
    with pytest.warns(UserWarning, match="--workers 3 applies to the workers pipeline; the tensor pipeline"):
        train(tiny_cfg(tmp_path / "t", epochs=1, pipeline="tensor", workers=3, max_train_samples=16), progress=False)


def test_amp_on_the_cpu_is_a_warning_that_quiet_keeps(tmp_path):
    """--amp on the CPU was told with a progress line, which --quiet hid: the flag did nothing, unsaid."""
    with pytest.warns(UserWarning, match="--amp: bf16 autocast is used on the GPU only"):
        train(tiny_cfg(tmp_path / "run", epochs=1, amp=True, max_train_samples=16), progress=False)


def test_the_fingerprint_sees_every_pixel_and_older_fingerprints_are_still_checked(tmp_path):
    """The fingerprint keyed at most 4096 values an image: a 72x72 data file rewritten with every other
    column white (45 % of the pixels) was evaluated under the old run without a word."""
    from con2.run import data_fingerprint, fingerprints_differ, run_split

    split = tiny_split(n=8, size=72)
    changed = tiny_split(n=8, size=72)
    changed.train[:, :, 1::2] = 255
    before, after = data_fingerprint(split), data_fingerprint(changed)
    assert before["hash"] == after["hash"]  # the sampled key misses it (that is why "pixels" exists)
    assert fingerprints_differ(before, after)
    old = {k: before[k] for k in ("count", "shape", "hash")}  # a run saved before "pixels"
    assert not fingerprints_differ(old, after) and fingerprints_differ(old, data_fingerprint(tiny_split(8, 72, seed=1)))
    run = train(tiny_cfg(tmp_path / "r", epochs=1, batch_size=4), split, progress=False)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    with pytest.raises(ValueError, match="training images differ"):
        run_split(run, cfg, changed)
    with pytest.raises(ValueError, match="training images differ"):
        train(tiny_cfg(tmp_path / "s", epochs=2, batch_size=4), split, progress=False, stop_after_steps=1)
        train(tiny_cfg(tmp_path / "s", epochs=2, batch_size=4), changed, progress=False, resume=True)


def test_files_that_con2_did_not_write_are_not_replaced_by_a_training(tmp_path):
    """--out of a project folder replaced its config.json and metrics.jsonl without a word; a dangling
    link as --out said only "cannot make the folder (File exists)"."""
    split = tiny_split()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "dir")
    with pytest.raises(FileNotFoundError, match="dangling is a link to .*nowhere/dir, which does not exist"):
        train(tiny_cfg(tmp_path / "dangling", epochs=1), split, progress=False)
    (tmp_path / "dangling").unlink()
    for name, text, match in [("config.json", '{"my_project_setting": 1}', "config.json is not a con2 run's"),
                              ("config.json", "{}", "config.json is not a con2 run's"),
                              ("metrics.jsonl", '{"my": "log"}\n', "metrics.jsonl has no con2 config.json")]:
        folder = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / name).write_text(text)
        with pytest.raises(FileExistsError, match=match):
            train(tiny_cfg(folder, epochs=1), split, progress=False)
        assert (folder / name).read_text() == text
    # a run started and killed before its first checkpoint is con2's own: trained afresh
    run = tmp_path / "started"
    train(tiny_cfg(run, epochs=1), split, progress=False, stop_after_steps=0)
    (run / "checkpoint.pt").unlink()
    train(tiny_cfg(run, epochs=1), split, progress=False)
    assert run_finished(run)


def test_a_run_folder_moved_away_during_training_stops_it(tmp_path, monkeypatch):
    """The next checkpoint made the folder again at the old path: the run ended in two halves, neither
    of which evaluate could read."""
    import con2.train as trainer

    run, moved = tmp_path / "run", tmp_path / "moved"
    real = trainer._atomic_save

    def move_then_save(obj, path):
        if run.exists():
            run.rename(moved)
        real(obj, path)

    monkeypatch.setattr(trainer, "_atomic_save", move_then_save)
    with pytest.raises(FileNotFoundError, match="run is gone .*checkpoint.pt was not written"):
        train(tiny_cfg(run, epochs=1), tiny_split(), progress=False)
    assert not run.exists() and (moved / "config.json").exists()


def test_a_run_whose_data_file_moved_says_how_to_point_it_there(tmp_path):
    """Every reader failed with "data file not found" and no way on: the commands take no data path."""
    from con2.data.datasets import DataError
    from con2.evaluate import evaluate_run

    x = np.random.RandomState(0).randint(0, 256, (40, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0] * 30 + [1] * 10))
    run = train(tiny_cfg(tmp_path / "run", dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0"],
                         epochs=1, val_fraction=0.2), progress=False)
    (tmp_path / "d.npz").rename(tmp_path / "moved.npz")
    with pytest.raises(DataError, match=r"If the data moved, set \"data_file\" in .*config.json to its new place"):
        evaluate_run(run, views=0, device="cpu", progress=False)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_file": str(tmp_path / "moved.npz")}))
    assert evaluate_run(run, views=0, device="cpu", progress=False)["nnd"]["auroc"] >= 0


def test_the_optimizer_is_methods_adamw_with_the_configured_weight_decay(tmp_path):
    """Only the config's values were checked, not the optimizer's (mutation QA: a fixed decay passed)."""
    run = train(tiny_cfg(tmp_path / "wd", epochs=1, weight_decay=0.123), tiny_split(), progress=False)
    group = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == pytest.approx(0.123) and tuple(group["betas"]) == (0.9, 0.999)


@pytest.mark.parametrize("objective", ["con2", "context", "content", "simclr"])
def test_each_objective_is_supcon_over_its_head_and_labels(objective):
    """The ablations' wiring of heads and labels (the test above checks only which loss is called)."""
    from con2.losses import view_labels
    from con2.ops import reference
    from con2.train import objective_loss

    g = torch.Generator().manual_seed(0)
    z_context, z_content = (torch.nn.functional.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
                            for _ in range(2))
    context_labels, sample_ids = view_labels(3, 2)
    got = objective_loss(TrainConfig(objective=objective), z_context, z_content, context_labels, sample_ids, 0.3)
    on_context = reference.supcon_loss(z_context, context_labels)
    on_content = reference.supcon_loss(z_content, sample_ids)
    want = {"con2": on_context + 0.3 * on_content, "context": on_context, "content": on_content,
            "simclr": on_content}[objective]
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
