"""`con2 export` and `con2 predict --detector`: a run's detector bundle scores image files exactly as
`con2 predict --run` does, without the training data, and refuses options it cannot honour."""
import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from con2 import Con2Detector
from con2.cli.main import main
from con2.config import TrainConfig
from con2.data.decode import decode_image
from con2.data.input_format import InputFormat
from con2.data.loaders.common import resize_images
from con2.bundle import BundleError
from con2.files import tensor_digest
from con2.metrics import calibrate_threshold
from con2.train import train


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory):
    """A tiny folder run whose images (20 x 24 px files) are resized to 16 x 16 and centre-cropped
    to 12 x 12, with val normals; and a folder of new images of other sizes to score."""
    d = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    for cls, n in (("good", 12), ("bad", 4)):
        (d / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(d / "data" / cls / f"{cls}{i}.png")
    (d / "new").mkdir()
    for i, (h, w) in enumerate([(20, 24), (30, 30), (12, 12)]):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(d / "new" / f"n{i}.png")
    cfg = TrainConfig(dataset="folder", data_root=str(d / "data"), normal_class=["good"], image_size=16,
                      center_crop=12, val_fraction=0.3, epochs=1, width=4, batch_size=8, device="cpu",
                      out=str(d / "run"))
    return train(cfg, progress=False), d / "new"


def _rows(args, capsys):
    assert main(args) == 0, capsys.readouterr().err
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def _same_predictions(run, new, tmp_path, capsys, options=("--views", "2")):
    """predict --run, then export and predict --detector with the run's data moved away: the same rows."""
    by_run = _rows(["predict", "--run", str(run), str(new), "--quiet", *options], capsys)
    bundle = tmp_path / "det.safetensors"
    assert main(["export", "--run", str(run), "--quiet", "--out", str(bundle), *options]) == 0
    said = capsys.readouterr().out
    assert f"wrote {bundle}" in said and f"con2 predict --detector {bundle}" in said
    # no training data, no run: the bundle alone
    moved = tmp_path / "elsewhere"
    shutil.move(str(run.parent / "data"), moved)
    try:
        by_bundle = _rows(["predict", "--detector", str(bundle), str(new), "--quiet"], capsys)
    finally:
        shutil.move(str(moved), run.parent / "data")
    assert [r["file"] for r in by_bundle] == [r["file"] for r in by_run] and len(by_run) == 3
    np.testing.assert_allclose([float(r["score"]) for r in by_bundle], [float(r["score"]) for r in by_run],
                               rtol=1e-6)
    assert {r["threshold"] for r in by_bundle} == {r["threshold"] for r in by_run}
    assert [r["anomaly"] for r in by_bundle] == [r["anomaly"] for r in by_run]


@pytest.mark.parametrize("options", [("--views", "2"), ("--views", "2", "--scorer", "lh"), ("--views", "0"),
                                     ("--views", "2", "--crop-scale", "0.5", "0.5", "--seed", "3")])
def test_a_bundle_predicts_as_the_run_does_without_the_training_data(cropped_run, tmp_path, capsys, options):
    run, new = cropped_run
    _same_predictions(run, new, tmp_path, capsys, options)


def test_an_rgb_run_read_from_disk_exports_too(tmp_path, capsys, monkeypatch):
    """RGB files of another shape, --resize shorter-side, every part decoded on access (none held in memory)."""
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    rng = np.random.default_rng(3)
    for cls, n in (("good", 10), ("bad", 3)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "new").mkdir()
    for i, (h, w) in enumerate([(18, 26), (30, 20), (12, 12)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "new" / f"n{i}.png")
    cfg = TrainConfig(dataset="folder", data_root=str(tmp_path / "data"), normal_class=["good"], image_size=14,
                      resize="shorter-side", center_crop=12, val_fraction=0.3, epochs=1, width=4, batch_size=8,
                      device="cpu", out=str(tmp_path / "run"))
    run = train(cfg, progress=False)
    _same_predictions(run, tmp_path / "new", tmp_path, capsys)


def test_a_bundle_keeps_the_runs_pre_processing_and_names_its_source(cropped_run, tmp_path):
    run, _ = cropped_run
    det = Con2Detector.from_run(run, views=2, device="cpu", progress=False)
    det.save(tmp_path / "det.safetensors")
    loaded = Con2Detector.load(tmp_path / "det.safetensors", device="cpu")
    fmt = InputFormat(size=(16, 16), channels=1, center_crop=12, folder_decoding=True)  # files' sizes unknown
    assert det.input_format_ == loaded.input_format_ == fmt and loaded.input_shape_ == (12, 12, 1)
    assert loaded.source_run_ == {"run": run.name, "dataset": det.source_run_["dataset"], "training_seed": 0,
                                  "normal_classes": ["good"]}
    assert loaded.get_params()["context"] == "invert" and loaded.get_params()["width"] == 4
    # raw arrays of any size are resized and cropped as the run's files were, even those of the crop's size
    x = np.random.default_rng(1).integers(0, 256, (3, 40, 28), dtype=np.uint8)
    made = fmt.apply(x[..., None])
    assert made.shape == (3, 12, 12, 1)
    Image.fromarray(x[0]).save(tmp_path / "x0.png")  # resized as the run's files are decoded
    np.testing.assert_array_equal(made[0], decode_image(tmp_path / "x0.png", (16, 16))[2:14, 2:14])
    np.testing.assert_array_equal(loaded.decision_function(x), loaded.decision_function_formatted(made))
    np.testing.assert_array_equal(loaded.decision_function(x), det.decision_function(x))
    np.testing.assert_array_equal(fmt.apply(made)[0], fmt.apply(np.asarray(Image.fromarray(made[0, ..., 0]).resize(
        (16, 16), Image.BICUBIC))[None, ..., None])[0])  # a crop-sized image is upscaled first, as predict does


def test_predict_with_a_bundle_recalibrates_or_takes_a_threshold(cropped_run, tmp_path, capsys):
    run, new = cropped_run
    bundle = tmp_path / "det.safetensors"
    det = Con2Detector.from_run(run, views=2, device="cpu", progress=False)
    det.save(bundle)
    rows = _rows(["predict", "--detector", str(bundle), str(new), "--quiet", "--target-fpr", "0.5"], capsys)
    assert float(rows[0]["threshold"]) == pytest.approx(calibrate_threshold(det.decision_scores_, 0.5))
    rows = _rows(["predict", "--detector", str(bundle), str(new), "--quiet", "--threshold=-1e9"], capsys)
    assert {r["anomaly"] for r in rows} == {"1"} and float(rows[0]["threshold"]) == -1e9
    rows = _rows(["predict", "--detector", str(bundle), str(new), "--quiet", "--aggregate", "max"], capsys)
    assert float(rows[0]["threshold"]) == pytest.approx(
        calibrate_threshold(det._calibration_views.max(dim=1).values.numpy(), 0.05))


@pytest.mark.parametrize("extra, says", [
    (["--views", "4"], "--views: set in the detector bundle"),
    (["--scorer", "lh", "--seed", "1"], "--scorer, --seed: set in the detector bundle"),
    (["--threshold", "0", "--target-fpr", "0.1"], "are alternatives"),
])
def test_predict_with_a_bundle_refuses_options_it_cannot_honour(cropped_run, tmp_path, capsys, extra, says):
    run, new = cropped_run
    bundle = tmp_path / "det.safetensors"
    Con2Detector.from_run(run, views=2, device="cpu", progress=False).save(bundle)
    assert main(["predict", "--detector", str(bundle), str(new), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("con2 predict: error: ") and says in err and err.count("\n") == 1


def test_predict_takes_a_run_or_a_bundle_and_names_a_missing_bundle(cropped_run, tmp_path, capsys):
    run, new = cropped_run
    with pytest.raises(SystemExit):
        main(["predict", "--run", str(run), "--detector", str(tmp_path / "d.safetensors"), str(new)])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["predict", "--detector", str(tmp_path / "missing.safetensors"), str(new)]) == 2
    err = capsys.readouterr().err
    assert "--detector" in err and "no such file" in err and "con2 export" in err


def test_export_needs_val_normals_and_a_file_to_write(cropped_run, tmp_path, capsys):
    run, _ = cropped_run
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(val_fraction=0.0, out=str(tmp_path / "no-val"))
    no_val = train(TrainConfig.from_dict(cfg), progress=False)
    with pytest.raises(ValueError, match="no val normals.*--val-fraction"):
        Con2Detector.from_run(no_val, views=2, device="cpu", progress=False)
    assert main(["export", "--run", str(run), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bundles") + "/"]) == 2  # wrote a file "bundles"
    assert "names a folder (it ends in /)" in capsys.readouterr().err and not (tmp_path / "bundles").exists()


def _resealed_bundle(run, path, edit_meta):
    """A bundle of `run` at `path` with its header metadata edited and its digest recomputed."""
    Con2Detector.from_run(run, views=2, device="cpu", progress=False).save(path)
    with safe_open(str(path), framework="pt") as fh:
        meta, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    edit_meta(meta)
    meta["sha256"] = tensor_digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    return path


def test_a_bundle_whose_input_format_disagrees_with_its_input_shape_is_refused(cropped_run, tmp_path):
    def crop_10(meta):
        state = json.loads(meta["state"])
        state["input_format"]["center_crop"] = 10
        meta["state"] = json.dumps(state, sort_keys=True)

    path = _resealed_bundle(cropped_run[0], tmp_path / "det.safetensors", crop_10)
    with pytest.raises(BundleError, match="input format"):
        Con2Detector.load(path, device="cpu")


def test_a_fitted_detector_predicts_files_at_its_input_size(tmp_path):
    from con2.predict import predict_with_detector

    rng = np.random.default_rng(2)
    normals = rng.integers(0, 256, (30, 10, 10), dtype=np.uint8)
    det = Con2Detector(epochs=1, width=4, batch_size=8, views=2, progress=False, device="cpu").fit(normals)
    for i, side in enumerate((10, 14)):
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    before = (det.threshold_, det.get_params())
    rows = predict_with_detector(det, [tmp_path], target_fpr=0.5)
    assert (det.threshold_, det.get_params()) == before  # the caller's detector is left as it was
    files = [tmp_path / "f0.png", tmp_path / "f1.png"]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    # the 14 x 14 file resized to the fitted 10 x 10 as array data sets are
    as_arrays = np.concatenate([np.asarray(Image.open(files[0]))[None, ..., None],
                                resize_images(np.asarray(Image.open(files[1]))[None, ..., None], (10, 10))])
    np.testing.assert_allclose([r["score"] for r in rows], det.decision_function(as_arrays), rtol=1e-6)
    assert all(r["threshold"] == calibrate_threshold(det.decision_scores_, 0.5) for r in rows)
    with pytest.warns(UserWarning, match="very different shape"):
        Image.fromarray(rng.integers(0, 256, (10, 40), dtype=np.uint8)).save(tmp_path / "wide.png")
        predict_with_detector(det, [tmp_path / "wide.png"], progress=False)


def test_info_describes_a_bundle(cropped_run, tmp_path, capsys):
    run, _ = cropped_run
    bundle = tmp_path / "det.safetensors"
    Con2Detector.from_run(run, views=2, device="cpu", progress=False, target_fpr=0.2).save(bundle)
    assert main(["info", "--detector", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert f"from run {run.name}:" in out and "'good'" in out and "12x12 input" in out
    assert "nnd over 2 test-time views" in out and "target FPR 0.2" in out
    assert "decoded at 16x16, then the centred 12x12" in out
    assert main(["info", "--detector", str(tmp_path / "none.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_folder_run_that_resized_its_files_does_not_call_new_shapes_far_from_its_own(cropped_run, tmp_path):
    """Its files had shapes of their own (here 24 x 20), resized to 16 x 16: the resized size says
    nothing of the shape a new file should have, so a wide file is not warned of against it."""
    import warnings

    from con2.predict import predict_files

    run, _ = cropped_run
    Image.fromarray(np.zeros((30, 90), np.uint8) + 100).save(tmp_path / "wide.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = predict_files(run, [tmp_path / "wide.png"], views=2, progress=False)
    assert len(rows) == 1


def test_export_refuses_outputs_it_would_damage(cropped_run, tmp_path, capsys):
    run, _ = cropped_run
    before = (run / "model.safetensors").read_bytes()
    for out, says in ((run / "model.safetensors", "would replace the run's own model.safetensors"),
                      ("-", "a bundle is a binary file"),
                      ("/dev/stdout", "is a standard stream")):
        assert main(["export", "--run", str(run), "--views", "2", "--quiet", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("con2 export: error: ") and says in err, err
    assert (run / "model.safetensors").read_bytes() == before
    # a link to a bundle: the file it names is replaced, the link kept
    target = tmp_path / "v1.safetensors"
    target.write_bytes(b"old")
    (tmp_path / "current.safetensors").symlink_to(target)
    assert main(["export", "--run", str(run), "--views", "2", "--quiet", "--out", str(tmp_path / "current.safetensors")]) == 0
    assert (tmp_path / "current.safetensors").is_symlink() and Con2Detector.load(target, device="cpu").views == 2
    with pytest.raises(BundleError, match="a run's weights: commands that take a run take its folder with --run"):
        Con2Detector.load(run / "model.safetensors")
    assert main(["predict", "--detector", str(tmp_path), str(run)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_bundle_from_another_version_names_its_run_to_export_again(cropped_run, tmp_path):
    run, _ = cropped_run
    path = _resealed_bundle(run, tmp_path / "det.safetensors", lambda meta: meta.update(con2_version="0.1.0"))
    with pytest.raises(BundleError, match=rf"written by con2 0.1.0.*export its run \({run.name}\) again"):
        Con2Detector.load(path, device="cpu")


def test_a_bundle_converts_channels_as_predict_converts_files(cropped_run, tmp_path):
    run, _ = cropped_run
    det = Con2Detector.from_run(run, views=2, device="cpu", progress=False)  # a grey run
    rgb = np.random.default_rng(4).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    grey = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    np.testing.assert_array_equal(det.decision_function(rgb), det.decision_function(grey))
    with pytest.raises(ValueError, match="channel"):  # already formatted: taken as it is, so checked
        det.decision_function_formatted(rgb[:, :12, :12])


def test_an_out_that_is_an_input_or_another_runs_file_is_refused_before_the_work(cropped_run, tmp_path, capsys):
    """predict --out an input image or the --detector bundle, score --out the run's data file and
    predict --detector --out RUN/config.json each replaced what the command (or a run) still needed;
    an empty path meant standard output, the default or the current folder."""
    run, new = cropped_run
    bundle = tmp_path / "d.safetensors"
    assert main(["export", "--run", str(run), "--views", "2", "--quiet", "--out", str(bundle)]) == 0
    capsys.readouterr()
    image = tmp_path / "a.png"
    shutil.copy(new / "n0.png", image)
    before = image.read_bytes(), bundle.read_bytes(), (run / "config.json").read_bytes()
    for args, says in [(["predict", "--detector", str(bundle), str(image), "--out", str(image)], "is one of this "
                        "command's inputs"),
                       (["predict", "--detector", str(bundle), str(image), "--out", str(bundle)], "inputs"),
                       (["predict", "--detector", str(bundle), str(image), "--out", str(run / "config.json")],
                        "would replace the run's own config.json"),
                       (["predict", "--detector", str(bundle), ""], "expected a path, not an empty one, got ''"),
                       (["score", "--run", str(run), "--out", ""], "expected a path, not an empty one")]:
        with pytest.raises(SystemExit) if "" in args else contextlib.nullcontext():
            assert main(args) == 2
        assert says in capsys.readouterr().err, args
    assert (image.read_bytes(), bundle.read_bytes(), (run / "config.json").read_bytes()) == before
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((20, 12, 12), np.uint8), labels=np.array([0] * 15 + [1] * 5))
    cfg = json.loads((run / "config.json").read_text())
    other = tmp_path / "npz-run"
    cfg.update(dataset="npz", data_file=str(data), normal_class=["0"], data_root=None, image_size=None,
               center_crop=None, out=str(other))
    train(TrainConfig.from_dict(cfg), progress=False)
    for command in (["score", "--run", str(other)], ["report", "--run", str(other)]):
        assert main([*command, "--out", str(data)]) == 2
        assert "is one of this command's inputs" in capsys.readouterr().err
    assert np.load(data)["images"].shape == (20, 12, 12)
