"""Bad inputs and outputs around a trained run: file, class and run names that are not UTF-8, image
files Pillow refuses or that fit the run badly, --out paths that cannot be written, a damaged
scores.csv, and the modes of the files written."""
import csv
import io
import json
import os
import re
import shutil
import stat
import subprocess
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from con2.cli.main import main
from con2.config import TrainConfig
from con2.train import train

LATIN = "caf\udce9"  # the Latin-1 bytes b"caf\xe9" as Python holds a name that is not UTF-8 (PEP 383)


@pytest.fixture(scope="module")
def latin_run(tmp_path_factory):
    """A tiny folder run whose run folder, data folder (the data set's name), anomalous class and file
    names are not UTF-8 (safetensors opens UTF-8 paths only: con2.files.utf8_name)."""
    d = tmp_path_factory.mktemp("latin")
    rng = np.random.default_rng(0)
    for cls, n in (("good", 14), (LATIN, 4)):
        (d / f"data{LATIN}" / cls).mkdir(parents=True)
        for i in range(n):
            image = Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8))
            image.save(d / f"data{LATIN}" / cls / f"{LATIN}{i}.png")
    cfg = TrainConfig(dataset="folder", data_root=str(d / f"data{LATIN}"), normal_class=["good"], test_fraction=0.3,
                      val_fraction=0.2, epochs=1, width=4, batch_size=8, device="cpu", out=str(d / f"run{LATIN}"))
    return train(cfg, progress=False)


def _cli(args, monkeypatch) -> tuple[int, bytes]:
    """main(args) with standard output a strict UTF-8 stream, as a terminal's under a UTF-8 locale."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    monkeypatch.setattr("sys.stdout", out)
    code = main(args)
    out.flush()
    return code, out.buffer.getvalue()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


def test_a_run_with_non_utf8_names_evaluates_reports_scores_and_predicts(latin_run, tmp_path, monkeypatch):
    code, printed = _cli(["evaluate", "--run", str(latin_run), "--views", "2", "--quiet"], monkeypatch)
    assert code == 0 and b"datacaf\xe9: " in printed  # the data set's name, printed as the bytes it has
    rows = _rows(latin_run / "scores.csv")
    # the names are written as the file system's bytes: each one opens its file again
    assert {r["class"] for r in rows} == {"good", LATIN} and any(LATIN in r["file"] for r in rows)
    assert all(Path(r["file"]).is_file() for r in rows)

    code, _ = _cli(["report", "--run", str(latin_run), "--max-points", "20", "--quiet",
                    "--out", str(tmp_path / "r.html")], monkeypatch)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")  # valid UTF-8: the page shows the byte as \xe9
    assert code == 0 and "datacaf\\xe9 (normal: " in page

    code, printed = _cli(["score", "--run", str(latin_run), "--views", "2", "--quiet"], monkeypatch)
    got = [r["file"] for r in csv.DictReader(io.StringIO(printed.decode(errors="surrogateescape"), newline=""))]
    assert code == 0 and got == [r["file"] for r in rows]

    images = str(latin_run.parent / f"data{LATIN}" / LATIN)
    code, _ = _cli(["predict", "--run", str(latin_run), images, "--views", "2", "--quiet",
                    "--out", str(tmp_path / "p.csv")], monkeypatch)
    got = [r["file"] for r in _rows(tmp_path / "p.csv")]
    assert code == 0 and len(got) == 4 and all(Path(f).is_file() and LATIN in f for f in got)
    code, _ = _cli(["predict", "--run", str(latin_run), images, "--views", "2", "--quiet", "--format", "json",
                    "--out", str(tmp_path / "p.json")], monkeypatch)
    assert code == 0 and [r["file"] for r in json.loads((tmp_path / "p.json").read_text())] == got

    from con2.detector import Con2Detector  # trained into, and saved as, names that are not UTF-8
    images = np.random.default_rng(1).integers(0, 256, (12, 12, 12, 1), dtype=np.uint8)
    detector = Con2Detector(epochs=1, width=4, batch_size=8, views=2, device="cpu", progress=False,
                            out=str(tmp_path / f"fit{LATIN}")).fit(images)
    path = detector.save(tmp_path / f"{LATIN}.safetensors")
    np.testing.assert_allclose(Con2Detector.load(path, device="cpu").score_samples(images[:3]),
                               detector.score_samples(images[:3]), rtol=1e-6)


def _bomb(path: Path) -> Path:
    """A BMP whose header declares 100000 x 100000 pixels (Pillow's DecompressionBombError)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", 100_000, 100_000)  # BITMAPINFOHEADER width, height
    path.write_bytes(bytes(data))
    return path


def test_an_image_declaring_billions_of_pixels_is_named_in_one_line(latin_run, tmp_path, capsys):
    from con2.predict import read_images

    bomb = _bomb(tmp_path / "bomb.bmp")
    says = f"cannot read image {bomb}: DecompressionBombError: Image size (10000000000 pixels) exceeds"
    for folder in (True, False):
        with pytest.raises(ValueError, match=re.escape(says)):
            read_images([bomb], (12, 12), 1, folder)
    assert main(["predict", "--run", str(latin_run), str(bomb), "--views", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"con2 predict: error: {says}") and err.count("\n") == 1


def test_bad_out_paths_fail_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr("con2.predict.predict_files", no_work)
    monkeypatch.setattr("con2.report.build_report", no_work)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "r").mkdir()  # --run is checked first (to be a folder), then --out
    for command in (["predict", "--run", str(tmp_path / "r"), "a.png"], ["report", "--run", str(tmp_path / "r")]):
        for out, says in ((tmp_path / "emptydir", "emptydir is a directory; give a file name such as"),
                          (tmp_path / "afile" / "x.csv", "afile is a file, not a folder"),
                          (f"{tmp_path}/newdir/", "names a folder (it ends in /); give a file name such as")):
            assert main(command + ["--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"con2 {command[0]}: error: --out {out}") and says in err
            assert ".tmp" not in err and err.count("\n") == 1
    assert not (tmp_path / "newdir").exists()  # neither a file of that name nor a folder was made
    # a missing folder is made first, as `con2 score` does
    row = {"file": "a.png", "score": 0.5, "anomaly": 0, "threshold": 1.0}
    monkeypatch.setattr("con2.predict.predict_files", lambda *args, **kwargs: [row])
    run = str(tmp_path / "emptydir")  # a folder: --run is checked to be one
    assert main(["predict", "--run", run, "a.png", "--out", str(tmp_path / "new" / "p.csv")]) == 0
    assert (tmp_path / "new" / "p.csv").read_text().splitlines() == ["file,score,anomaly,threshold", "a.png,0.5,0,1.0"]


def test_replacing_refuses_a_folder_before_the_write_and_writes_a_fifo_in_place(tmp_path):
    from con2.files import replacing, write_text

    with pytest.raises(IsADirectoryError, match="is a directory"):
        with replacing(tmp_path):
            raise AssertionError("the write ran")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the write does not block
    try:
        write_text(fifo, "hello")
        assert os.read(reader, 100) == b"hello"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # not replaced by a regular file


def test_replacing_syncs_the_new_bytes_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from con2.files import write_text

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    target = tmp_path / "checkpoint.json"
    write_text(target, "new")
    (kind, written), *rest = events
    assert kind == "fsync" and re.fullmatch(re.escape(str(target)) + rf"\.{os.getpid()}-[0-9a-f]{{8}}\.tmp", written)
    assert rest == [("replace", str(target)), ("fsync", str(tmp_path))]
    assert target.read_text() == "new"


def test_two_writers_of_one_file_each_write_their_own_temporary(tmp_path):
    """Both wrote NAME.tmp: the second unlinked the first's, the first's os.replace moved the second's
    half-written file into place, and the second then failed with FileNotFoundError."""
    from con2.files import replacing

    target = tmp_path / "scores.csv"
    with replacing(target) as a, replacing(target) as b:
        assert a != b
        a.write_text("first")
        b.write_text("second")
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
    # a killed writer's temporary (and the single name of earlier con2) is removed by the next write;
    # a running writer's is kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = [tmp_path / f"scores.csv.{dead.stdout.strip()}-0badc0de.tmp", tmp_path / "scores.csv.tmp"]
    live = tmp_path / f"scores.csv.{os.getppid()}-0badc0de.tmp"
    for p in (*left, live):
        p.write_text("x")
    with replacing(target) as tmp:
        tmp.write_text("third")
    assert not any(p.exists() for p in left) and live.exists() and target.read_text() == "third"


def test_a_link_is_written_through_and_a_vanished_run_folder_is_not_made_again(tmp_path):
    """score --out LINK replaced the link with a file (its target kept the old scores); a run folder
    moved away during training was made again by the next checkpoint, splitting the run in two."""
    from con2.files import replacing, write_text

    real = tmp_path / "real.csv"
    real.write_text("old")
    (tmp_path / "link.csv").symlink_to(real)
    write_text(tmp_path / "link.csv", "new")
    assert (tmp_path / "link.csv").is_symlink() and real.read_text() == "new"
    with pytest.raises(FileNotFoundError, match=r"gone \(moved or deleted while it was being written\): "
                                                r"checkpoint.pt was not written"):
        with replacing(tmp_path / "moved" / "checkpoint.pt", make_folder=False):
            pass
    assert not (tmp_path / "moved").exists()


def _nnd(value):
    """An edit giving line 3 of scores.csv this nnd cell; None cuts the row before it."""
    return lambda rows: rows[:2] + [rows[2][:3] + ([] if value is None else [value, *rows[2][4:]])] + rows[3:]


@pytest.mark.parametrize("edit, says", [
    (lambda rows: [["index", "lbl", *rows[0][2:]]] + rows[1:], r"scores\.csv has no 'label' column"),
    (_nnd("abc"), r"scores\.csv line 3: nnd score 'abc' is not a number"),
    (_nnd(None), r"scores\.csv line 3: nnd score \(missing\) is not a number"),
    (_nnd("nan"), r"scores\.csv line 3: nnd score nan is not finite"),
    (lambda rows: [rows[0]] + [[r[0], "0", *r[2:]] for r in rows[1:]], r"scores\.csv: every row has label 0"),
], ids=["no label column", "not a number", "a missing cell", "nan", "one class"])
def test_report_names_a_damaged_scores_csv(latin_run, tmp_path, capsys, edit, says):
    run = tmp_path / "run"
    shutil.copytree(latin_run, run)
    rows = [["index", "label", "class", "nnd", "lh"]] + [[str(i), str(i % 2), "x", "-0.5", "-3.0"] for i in range(6)]
    with open(run / "scores.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(edit(rows))
    assert main(["report", "--run", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("con2 report: error: ") and err.count("\n") == 1
    assert re.search(says + r".*rerun `con2 evaluate --run", err)


def test_predict_warns_of_images_far_from_the_runs_shape(tmp_path):
    from con2.predict import read_images

    for name, hw in (("tiny.png", (1, 1)), ("long.png", (1, 60)), ("ok.png", (12, 12)), ("wide.png", (10, 18))):
        Image.fromarray(np.full(hw, 128, np.uint8)).save(tmp_path / name)
    files = [tmp_path / n for n in ("tiny.png", "long.png", "ok.png")]
    for folder in (True, False):
        with pytest.warns(UserWarning, match=r"2 of 3 images are resized to the run's 12x12 px input .*"
                                             r"tiny\.png \(1x1 px: a side under 1/4 of the run's\); "
                                             r".*long\.png \(60x1 px: aspect ratio 60:1, the run's 1:1\)$"):
            read_images(files, (12, 12), 1, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # near the run's shape: no warning
        read_images([tmp_path / "ok.png", tmp_path / "wide.png"], (12, 12), 1, True)
    # --resize shorter-side keeps the aspect ratio: what the warning says is how little is scored
    Image.fromarray(np.full((10, 40), 128, np.uint8)).save(tmp_path / "strip.png")
    with pytest.warns(UserWarning, match=r"strip\.png \(40x10 px: aspect ratio 4:1: the centred square scored is "
                                         r"25% of the image\)$"):
        read_images([tmp_path / "strip.png"], (12, 12), 1, True, keep_aspect=True)


def test_predict_warns_of_near_black_files_and_compares_shapes_with_the_runs_source_images(tmp_path):
    """12-bit scans in 16-bit PNGs decoded near black and were scored (all flagged) without a word;
    a 28 px MedMNIST file given to a run that upscaled its 28 px images to 256 px was called far
    from the run's shape."""
    from con2.predict import read_images

    Image.fromarray((np.arange(144).reshape(12, 12) * 16).astype(np.uint16)).save(tmp_path / "scan12bit.png")
    Image.fromarray(np.full((12, 12), 128, np.uint8)).save(tmp_path / "ok.png")
    assert Image.open(tmp_path / "scan12bit.png").mode.startswith("I")
    with pytest.warns(UserWarning, match=r"1 of 2 images are near black after decoding \(every pixel under 32 / 255\)"
                                         r".*rescale such files first: .*scan12bit\.png \(brightest pixel 9\)$"):
        read_images([tmp_path / "scan12bit.png", tmp_path / "ok.png"], (12, 12), 1, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 12 px files of a run whose 12 px images were upscaled to 64
        read_images([tmp_path / "ok.png"], (64, 64), 1, False, source_size=(12, 12))
    with pytest.warns(UserWarning, match="a side under 1/4"):
        read_images([tmp_path / "ok.png"], (64, 64), 1, False)


def test_replaced_files_get_the_mode_a_plain_open_gives(latin_run, tmp_path):
    from safetensors.torch import save_file

    from con2.files import replacing, write_text

    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    old = os.umask(0o027)
    try:
        open(tmp_path / "plain", "w").close()
        with replacing(tmp_path / "m.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))  # which makes its own file, 0600
        write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "plain") == 0o640
    assert mode(tmp_path / "m.safetensors") == mode(tmp_path / "t.txt") == 0o640
    os.chmod(tmp_path / "t.txt", 0o600)
    write_text(tmp_path / "t.txt", "y")  # an existing file keeps its mode, as open() keeps it
    assert mode(tmp_path / "t.txt") == 0o600
    assert mode(latin_run / "model.safetensors") == mode(latin_run / "config.json")


def test_a_sweep_of_a_class_whose_name_is_not_utf8_runs_and_tabulates_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for cls, n in ((LATIN, 14), ("other", 4)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "sweep"
    code, printed = _cli(["sweep", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--classes", LATIN,
                          "--seeds", "0", "--width", "4", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                          "--views", "2", "--quiet", "--out", str(out)], monkeypatch)
    assert code == 0 and b"| caf\xe9 | 1 |" in printed  # the class's name as the bytes it has
    assert (out / "class-caf%E9-seed0" / "model.safetensors").exists()  # escaped as its byte, %E9
    assert b"| caf\xe9 | 1 |" in (out / "results.md").read_bytes()
    assert b"\ncaf\xe9,1," in (out / "results.csv").read_bytes()
    assert b"\ncaf\xe9,0,done," in (out / "runs.csv").read_bytes()


def test_out_may_be_a_fifo_or_device_in_a_folder_the_user_cannot_write(tmp_path, monkeypatch):
    from con2.cli import output

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # as for a user other than root: /dev (of /dev/stdout) is not writable; tests may run as root
    monkeypatch.setattr(output.os, "access", lambda path, mode: Path(path) not in (tmp_path, Path("/dev")))
    for out in (fifo, "/dev/null"):
        output.check_output(out)  # written in place (con2.files.replacing), no file made beside it
    with pytest.raises(PermissionError, match="is not writable"):
        output.check_output(tmp_path / "scores.csv")


# ----------------------------------------------------------------------------- options that would be ignored,
# outputs that hide which image or class they mean, and --run paths that name no run

@pytest.fixture(scope="module")
def two_normal_run(tmp_path_factory):
    """A tiny seeded folder run with two normal classes (a, b), an anomalous one (c) and val normals."""
    d = tmp_path_factory.mktemp("two")
    rng = np.random.default_rng(0)
    for cls, n in (("a", 8), ("b", 8), ("c", 4)):
        (d / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(d / "data" / cls / f"{cls}{i}.png")
    cfg = TrainConfig(dataset="folder", data_root=str(d / "data"), normal_class=["a", "b"], test_fraction=0.3,
                      val_fraction=0.2, epochs=1, width=4, batch_size=8, device="cpu", out=str(d / "run"))
    return train(cfg, progress=False)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"con2 {command}: error: ") and err.count("\n") == 1, err
    return err


def test_views_0_refuses_a_crop_scale_and_records_no_crop_range(two_normal_run, tmp_path, capsys):
    from con2.evaluate import evaluate_run, score_split
    from con2.predict import predict_files
    from con2.report import build_report

    run = tmp_path / "run"
    shutil.copytree(two_normal_run, run)
    image = str(two_normal_run.parent / "data" / "c" / "c0.png")
    crop = ["--views", "0", "--crop-scale", "0.5", "0.5", "--quiet"]
    for command in (["evaluate"], ["score"], ["predict", image]):
        assert main([command[0], "--run", str(run), *command[1:], *crop]) == 2
        err = _one_line_error(capsys, command[0])
        assert "--crop-scale" in err and "--views 0" in err
    for call in (evaluate_run, score_split, lambda *a, **kw: predict_files(a[0], [image], **kw)):
        with pytest.raises(ValueError, match=r"--crop-scale.*--views 0"):
            call(run, views=0, crop_scale=(0.5, 0.5), progress=False)
    assert not (run / "metrics.json").exists()
    # one plain view makes no crops: no crop range is recorded (it was the unused training views' 0.08-1)
    assert evaluate_run(run, views=0, progress=False)["crop_scale"] is None
    assert json.loads((run / "metrics.json").read_text())["crop_scale"] is None
    assert "one plain view of each image, no crops" in build_report(run, max_points=20, progress=False).read_text()


def test_views_0_refuses_a_max_aggregate(two_normal_run, tmp_path, capsys):
    """--views 0 --aggregate max scored the one plain view (max of one is the view) and recorded "max"."""
    from con2.detector import Con2Detector
    from con2.evaluate import evaluate_run
    from con2.predict import predict_with_detector
    from con2.sweep import run_sweep

    run = tmp_path / "run"
    shutil.copytree(two_normal_run, run)
    image = str(two_normal_run.parent / "data" / "c" / "c0.png")
    plain_max = ["--views", "0", "--aggregate", "max", "--quiet"]
    for command in (["evaluate"], ["score"], ["predict", image], ["export", "--out", str(tmp_path / "d.safetensors")]):
        assert main([command[0], "--run", str(run), *command[1:], *plain_max]) == 2
        err = _one_line_error(capsys, command[0])
        assert "--aggregate max combines the scores of test-time views, but --views 0 makes one" in err
    assert not (run / "metrics.json").exists() and not (tmp_path / "d.safetensors").exists()
    with pytest.raises(ValueError, match="--aggregate max .* --views 0"):
        evaluate_run(run, views=0, aggregate="max", progress=False)
    with pytest.raises(ValueError, match="--aggregate max .* --views 0"):
        run_sweep(TrainConfig(epochs=1, device="cpu"), ["1"], [0], tmp_path / "sweep", views=0, aggregate="max")
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(ValueError, match="aggregate=max combines .* views=0 makes one"):
        Con2Detector.from_run(run, views=0, aggregate="max", progress=False)
    plain = Con2Detector.from_run(run, views=0, progress=False)
    with pytest.raises(ValueError, match="--aggregate max .* the detector scores one plain view"):
        predict_with_detector(plain, [image], aggregate="max")
    assert len(predict_with_detector(plain, [image], aggregate="mean")) == 1


def test_predict_refuses_a_threshold_with_an_explicit_target_fpr(two_normal_run, capsys):
    from con2.predict import predict_files

    image = str(two_normal_run.parent / "data" / "c" / "c0.png")
    args = ["predict", "--run", str(two_normal_run), image, "--views", "2", "--quiet", "--threshold", "0"]
    assert main(args + ["--target-fpr", "0.5"]) == 2
    err = _one_line_error(capsys, "predict")
    assert "--threshold" in err and "--target-fpr" in err
    with pytest.raises(ValueError, match="--threshold.*--target-fpr"):
        predict_files(two_normal_run, [image], views=2, threshold=0.0, target_fpr=0.5, progress=False)
    assert main(args) == 0  # the default target FPR is not a choice the threshold overrides
    assert capsys.readouterr().out.splitlines()[1].endswith(",0.0")


def test_predict_names_a_folder_entry_that_is_not_a_readable_file(two_normal_run, tmp_path, capsys):
    from con2.data.decode import DataError
    from con2.predict import list_inputs

    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(two_normal_run.parent / "data" / "c" / "c0.png", folder / "ok.png")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    # as the folder loader names it in training (con2.data.loaders.folder._read_header)
    says = (f"cannot read image {folder / 'gone.png'}: a dangling symlink (its target {tmp_path / 'missing.png'} "
            f"does not exist)")
    assert main(["predict", "--run", str(two_normal_run), str(folder), "--views", "2", "--quiet"]) == 2
    assert _one_line_error(capsys, "predict") == f"con2 predict: error: {says}\n"
    for given in (folder, folder / "gone.png"):  # a link given itself, too
        with pytest.raises(DataError, match=re.escape(f"{folder / 'gone.png'}: a dangling symlink")):
            list_inputs([given])
    (folder / "gone.png").unlink()
    os.mkfifo(folder / "pipe.png")
    with pytest.raises(DataError, match=re.escape(f"cannot read image {folder / 'pipe.png'}: not a regular file")):
        list_inputs([folder])


def test_predict_skip_bad_files_scores_the_readable_ones_and_names_the_rest(two_normal_run, tmp_path, capsys):
    """One unreadable file stopped a whole batch with no rows written; there was no --skip-bad-files."""
    import csv
    import io

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "z.png"):
        shutil.copy(two_normal_run.parent / "data" / "c" / "c0.png", folder / name)
    (folder / "m.png").write_bytes(b"not an image")
    args = ["predict", "--run", str(two_normal_run), str(folder), "--views", "2", "--quiet"]
    assert main(args) == 2 and "m.png" in _one_line_error(capsys, "predict")
    assert main(args + ["--skip-bad-files"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["file"]).name for r in rows] == ["a.png", "z.png"] and rows[0]["score"] == rows[1]["score"]
    assert "warning: left out 1 of 3 files that cannot be read (--skip-bad-files): " in err and "m.png" in err
    # a dangling link and a FIFO are unreadable files too (they stopped the command even with the option)
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(folder / "pipe.png")
    assert main(args + ["--skip-bad-files"]) == 0
    out, err = capsys.readouterr()
    assert [Path(r["file"]).name for r in csv.DictReader(io.StringIO(out))] == ["a.png", "z.png"]
    assert "left out 3 of 5 files" in err and "gone.png: a dangling symlink" in " ".join(err.split())
    given = ["predict", "--run", str(two_normal_run), str(folder / "a.png"), str(folder / "pipe.png"),
             str(folder / "gone.png"), "--views", "2", "--quiet"]  # named on the command line, too
    assert main(given) == 2 and "pipe.png: not a regular file (a FIFO" in " ".join(capsys.readouterr().err.split())
    assert main(given + ["--skip-bad-files"]) == 0
    out, err = capsys.readouterr()
    assert [Path(r["file"]).name for r in csv.DictReader(io.StringIO(out))] == ["a.png"] and "left out 2 of 3" in err
    (folder / "gone.png").unlink()
    (folder / "pipe.png").unlink()
    (folder / "a.png").write_bytes(b"broken")
    (folder / "z.png").write_bytes(b"broken")
    assert main(args + ["--skip-bad-files"]) == 2
    assert "none of the 3 files could be read" in capsys.readouterr().err


def test_train_and_val_scores_name_each_images_class(two_normal_run):
    from con2.evaluate import score_split

    for part in ("train", "val"):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            res = score_split(two_normal_run, part, views=0, progress=False)
        assert all(c in ("a", "b") and Path(f).parent.name == c for c, f in zip(res.classes, res.files))
        in_sample = [w for w in said if "scored against the bank built from themselves" in str(w.message)]
        assert len(in_sample) == (part == "train"), part  # the train scores are in-sample, and it is said
    train = score_split(two_normal_run, "train", views=0, progress=False)
    assert set(res.classes) | set(train.classes) == {"a", "b"}
    assert np.allclose(train.scores, -1.0, atol=1e-5)  # what the warning says: each finds itself


def test_train_and_val_classes_are_recorded_by_the_loaders_for_folders_and_arrays(tmp_path):
    """With several normal classes the class of a train / val image was known only by parsing its
    path (folders) or not at all (npz): the loaders now record it, as they do for test images."""
    from PIL import Image

    from con2.config import TrainConfig
    from con2.data import load_split
    from con2.evaluate import sample_columns

    root = tmp_path / "root"
    for part, classes in (("train", "ab"), ("val", "ab"), ("test", "abc")):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / part / c / f"{i}.png")
    split = load_split(TrainConfig(dataset="folder", data_root=str(root), normal_class=["a", "b"]))
    for part in ("train", "val"):
        labels, classes, files = sample_columns(split, part)
        assert classes == [Path(f).parent.name for f in files] and set(classes) == {"a", "b"}
    x = np.zeros((30, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.arange(30) % 3)
    split = load_split(TrainConfig(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0", "2"],
                                   val_fraction=0.2, max_train_samples=9))
    for part in ("train", "val"):
        classes = sample_columns(split, part)[1]
        assert set(classes) == {"0", "2"} and len(classes) == len(split.part(part))


def test_metrics_name_the_normal_classes(two_normal_run):
    from con2.evaluate import evaluate_run

    metrics = evaluate_run(two_normal_run, views=0, progress=False, write=False)
    assert metrics["normal_classes"] == [0, 1] and metrics["normal_class_names"] == ["a", "b"]


def test_a_run_path_that_is_no_folder_is_named_as_such(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for run, says in ((tmp_path / "nodir", "does not exist"), (tmp_path / "afile", "is a file, not a run folder")):
        for command in (["score"], ["evaluate"], ["predict", "a.png"], ["report"]):
            assert main([command[0], "--run", str(run), *command[1:], "--quiet"]) == 2
            err = _one_line_error(capsys, command[0])
            assert err.startswith(f"con2 {command[0]}: error: --run {run} {says}") and "con2 train --out" in err


def test_predict_without_val_normals_says_how_to_get_them(two_normal_run, tmp_path, capsys):
    cfg = TrainConfig(dataset="folder", data_root=str(two_normal_run.parent / "data"), normal_class=["a"],
                      epochs=1, width=4, batch_size=8, device="cpu", out=str(tmp_path / "run"))
    run = train(cfg, progress=False)
    assert main(["predict", "--run", str(run), str(two_normal_run.parent / "data" / "c" / "c0.png"), "--quiet"]) == 2
    err = _one_line_error(capsys, "predict")
    assert "has no val normals to calibrate a threshold on; pass --threshold" in err
    assert "--val-fraction F (e.g. 0.1)" in err


def test_no_command_writes_over_the_runs_own_files(two_normal_run, tmp_path, capsys):
    """score, predict and report wrote their table over --out RUN/model.safetensors (or config.json,
    checkpoint.pt, metrics.json) without a word, destroying the run; export refused it alone."""
    from con2.evaluate import evaluate_run
    from con2.files import RUN_FILES

    run = tmp_path / "run"
    shutil.copytree(two_normal_run, run)
    evaluate_run(run, views=2, per_view=True, progress=False)
    made = {p.name for p in run.iterdir()}
    assert made <= set(RUN_FILES), made - set(RUN_FILES)  # every file training and evaluate write is guarded
    before = {name: (run / name).read_bytes() for name in made}
    image = str(two_normal_run.parent / "data" / "c" / "c0.png")
    for name in sorted(made):
        for command in (["score"], ["predict", image], ["report"], ["export"]):
            assert main([command[0], "--run", str(run), *command[1:], "--views", "2", "--quiet",
                         "--out", str(run / name)]) == 2
            assert f"would replace the run's own {name}" in _one_line_error(capsys, command[0])
    assert {name: (run / name).read_bytes() for name in made} == before
    # another name in the run folder is the user's to choose
    assert main(["score", "--run", str(run), "--views", "2", "--quiet", "--out", str(run / "nnd.csv")]) == 0
    assert "wrote" in capsys.readouterr().err


def test_a_command_that_fails_leaves_no_out_folders_and_predict_writes_json_by_the_suffix(two_normal_run, tmp_path,
                                                                                           capsys):
    out = tmp_path / "new" / "a" / "x.csv"
    assert main(["score", "--run", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in _one_line_error(capsys, "score")
    # refused by the scoring, after the --out checks
    assert main(["score", "--run", str(two_normal_run), "--views", "0", "--quiet", "--crop-scale", "0.5", "0.5",
                 "--out", str(out)]) == 2
    assert "--crop-scale" in _one_line_error(capsys, "score")
    assert not (tmp_path / "new").exists()
    image = str(two_normal_run.parent / "data" / "c" / "c0.png")
    out = tmp_path / "new" / "p.json"
    assert main(["predict", "--run", str(two_normal_run), image, "--views", "2", "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote 1 predictions to {out} (json)"
    (row,) = json.loads(out.read_text())
    assert row["file"].endswith("c0.png")
    assert main(["predict", "--run", str(two_normal_run), image, "--views", "2", "--quiet", "--format", "csv",
                 "--out", str(out)]) == 0  # an explicit format wins over the suffix
    assert out.read_text().startswith("file,")


def test_a_full_disk_is_named_whatever_the_writer_says(tmp_path, monkeypatch):
    """torch's zip writer stopped with "[enforce fail at inline_container.cc:672] . unexpected pos ...",
    safetensors' with a SafetensorError that the CLI printed as a traceback."""
    import errno

    import con2.files
    from con2.files import replacing

    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    space = {"free": 2**30}
    monkeypatch.setattr(con2.files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**31, 0, space["free"]))

    class SafetensorError(Exception):  # safetensors' own class derives from Exception only
        pass

    failures = [OSError(errno.ENOSPC, "No space left on device"),
                SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                "\"No space left on device\" })"),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1523456 vs 1523344")]
    for i, failure in enumerate(failures):
        space["free"] = 0 if i == 2 else 2**30  # torch's says nothing of space: the folder's free space does
        with pytest.raises(OSError, match=r"no space left on the device of .*checkpoint.pt was not written and the "
                                          r"previous one is kept") as exc:
            with replacing(target):
                raise failure
        assert exc.value.errno == errno.ENOSPC and target.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    space["free"] = 2**30
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room left, the writer's own error
        with replacing(target):
            raise failures[2]
