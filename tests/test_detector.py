"""Con2Detector: fit / score / predict, input layouts, save -> load, tampered and foreign bundles."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from con2 import Con2Detector
from con2.bundle import BundleError
from con2.detector import NotFittedError
from con2.files import tensor_digest


def blobs(n, seed, bright):
    """12x12 grayscale images: a bright (normal) or dark (anomalous) square on noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, 12, 12), dtype=np.uint8)
    x[:, 3:9, 3:9] += np.uint8(180 if bright else 40)
    return x


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    det = Con2Detector(epochs=1, width=8, batch_size=16, views=2, scorer="nnd", progress=False,
                       score_batch_size=32, target_fpr=0.1, device="cpu")
    det.fit(blobs(60, 0, True))
    path = tmp_path_factory.mktemp("det") / "det.safetensors"
    det.save(path)
    return det, path


def test_fit_sets_calibrated_threshold(fitted):
    det, _ = fitted
    assert det.decision_scores_.shape == (6,)  # 10 % of 60 held out
    assert (det.decision_scores_ > det.threshold_).mean() <= 0.1
    assert det.labels_.shape == (6,)
    x = blobs(8, 1, False)
    s = det.decision_function(x)
    assert s.shape == (8,) and s.dtype == np.float64 and np.isfinite(s).all()
    np.testing.assert_array_equal(det.predict(x), (s > det.threshold_).astype(int))
    np.testing.assert_allclose(det.score_samples(x), -s)


def test_input_layouts_agree(fitted):
    det, _ = fitted
    x = blobs(5, 2, True)
    s = det.decision_function(x)
    np.testing.assert_allclose(det.decision_function(x[..., None]), s)
    np.testing.assert_allclose(det.decision_function(torch.from_numpy(x)[:, None]), s)  # torch: [N, C, H, W]


def test_bad_inputs_fail_clearly(fitted):
    det, _ = fitted
    with pytest.raises(ValueError, match="channel"):
        det.decision_function(np.zeros((2, 12, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="10x10 px"):
        det.decision_function(np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        det.decision_function(np.zeros((2, 12, 12), np.float32))
    with pytest.raises(ValueError, match="shape"):
        det.decision_function(np.zeros((12, 12), np.uint8))
    with pytest.raises(NotFittedError, match="not fitted"):
        Con2Detector().decision_function(np.zeros((2, 12, 12), np.uint8))
    with pytest.raises(ValueError, match="scorer"):
        Con2Detector(scorer="knn").fit(np.zeros((10, 12, 12), np.uint8))
    with pytest.raises(ValueError, match="crop scale"):  # before any training
        Con2Detector(crop_scale=(0.6, 0.5)).fit(np.zeros((10, 12, 12), np.uint8))


def test_a_single_rgb_torch_image_is_named_and_fit_predict_is_not_offered(tmp_path):
    rng = np.random.default_rng(0)
    det = Con2Detector(epochs=1, width=8, batch_size=16, views=2, progress=False, device="cpu")
    det.fit(rng.integers(0, 255, size=(40, 12, 12, 3), dtype=np.uint8))
    one = torch.from_numpy(rng.integers(0, 255, size=(3, 12, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"read as 3 grayscale images by an RGB detector: pass one RGB image as "
                                         r"\[1, 3, H, W\]"):
        det.decision_function(one)
    resizing = Con2Detector(epochs=1, width=8, batch_size=16, views=2, progress=False, device="cpu", image_size=12)
    resizing.fit(rng.integers(0, 255, size=(40, 12, 12, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="read as 3 grayscale images"):  # its input format made them RGB: 3 scores
        resizing.decision_function(one)
    assert det.decision_function(one[None]).shape == (1,)
    assert not hasattr(det, "fit_predict")  # as LocalOutlierFactor(novelty=True)
    with pytest.raises(AttributeError, match="novelty detector.*det.fit\\(X_normal\\).predict\\(X_new\\)"):
        det.fit_predict(one[None])


def test_crop_scale_sets_the_test_time_views_and_survives_save_load(fitted, tmp_path):
    det = Con2Detector(epochs=1, width=8, batch_size=16, views=2, progress=False, device="cpu",
                       crop_scale=(0.54, 0.54)).fit(blobs(40, 0, True))
    assert det.view_cfg_.scale == (0.54, 0.54) and fitted[0].view_cfg_.scale == (0.08, 1.0)
    det.save(tmp_path / "d.safetensors")
    loaded = Con2Detector.load(tmp_path / "d.safetensors", device="cpu")
    assert loaded.view_cfg_.scale == (0.54, 0.54)
    x = blobs(6, 1, False)
    np.testing.assert_allclose(loaded.decision_function(x), det.decision_function(x), rtol=1e-5, atol=1e-6)


def test_save_load_gives_identical_scores(fitted):
    det, path = fitted
    loaded = Con2Detector.load(path, device="cpu")
    x = blobs(7, 3, False)
    np.testing.assert_array_equal(loaded.decision_function(x), det.decision_function(x))
    assert loaded.threshold_ == det.threshold_
    assert loaded.get_params()["views"] == 2


def _rewrite(path, out, edit_meta=None, edit_tensors=None, rehash=False):
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    if rehash:
        meta["sha256"] = tensor_digest(tensors, meta)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_tampered_bundles_fail(fitted, tmp_path):
    _, path = fitted

    def bump_bank(t):
        t["bank.nnd"] = t["bank.nnd"].clone()
        t["bank.nnd"][0, 0, 0] += 1e-3

    def lower_threshold(m):
        state = json.loads(m["state"])
        state["threshold"] = -10.0
        m["state"] = json.dumps(state, sort_keys=True)

    for i, kw in enumerate([dict(edit_tensors=bump_bank), dict(edit_meta=lower_threshold)]):
        bad = _rewrite(path, tmp_path / f"bad{i}.safetensors", **kw)
        with pytest.raises(BundleError, match="modified"):
            Con2Detector.load(bad)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip a byte in the tensor data
    (tmp_path / "flip.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="modified since it was saved: its SHA-256 does not match"):
        Con2Detector.load(tmp_path / "flip.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a bundle")
    with pytest.raises(BundleError, match="not a readable"):
        Con2Detector.load(tmp_path / "junk.safetensors")


def test_bundle_from_another_version_fails(fitted, tmp_path):
    _, path = fitted
    old = _rewrite(path, tmp_path / "old.safetensors",
                   edit_meta=lambda m: m.update(con2_version="0.0.1"), rehash=True)
    with pytest.raises(BundleError, match="written by con2 0.0.1"):
        Con2Detector.load(old)
    other = _rewrite(path, tmp_path / "other.safetensors",
                     edit_meta=lambda m: m.update(format="something-else/9"), rehash=True)
    with pytest.raises(BundleError, match="not a con2 detector bundle"):
        Con2Detector.load(other)


def test_more_bad_inputs_and_options_fail_before_training(fitted, tmp_path):
    det, _ = fitted
    with pytest.raises(ValueError, match="image 2 is"):  # a list of mixed sizes
        det.decision_function([np.zeros((12, 12), np.uint8)] * 2 + [np.zeros((10, 12), np.uint8)])
    with pytest.raises(ValueError, match="at least 8x8"):  # one RGB image without its batch axis
        det.decision_function(np.zeros((12, 12, 3), np.uint8))
    x = np.zeros((10, 4, 4), np.uint8)
    for params, match in [(dict(views=3), "views"), (dict(score_batch_size=0), "score_batch_size"),
                          (dict(), "at least 8x8"), (dict(width=0), "width"), (dict(seed=-1), "seed"),
                          (dict(lr=float("nan")), "lr"), (dict(weight_decay=-1.0), "weight-decay")]:
        with pytest.raises(ValueError, match=match):
            Con2Detector(progress=False, device="cpu", **params).fit(
                x if not params else np.zeros((10, 12, 12), np.uint8))
    with pytest.raises(IsADirectoryError, match="directory"):
        det.save(tmp_path)
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp"))
    with pytest.raises(ValueError, match="not a device"):
        Con2Detector.load(fitted[1], device="bogus")


def test_inconsistent_bundles_fail_at_load_and_norms_are_recomputed(fitted, tmp_path):
    det, path = fitted

    def state_edit(**changes):
        def edit(m):
            state = json.loads(m["state"])
            state.update(changes)
            m["state"] = json.dumps(state, sort_keys=True)
        return edit

    def drop(name):
        return lambda t: t.pop(name)

    def nan_bank(t):
        t["bank.nnd"] = t["bank.nnd"].clone()
        t["bank.nnd"][0, 0, 0] = float("nan")

    def four_views(m):  # a 2-view plan and bank: the first score failed on the mismatch
        m["params"] = json.dumps(dict(json.loads(m["params"]), views=4), sort_keys=True)

    def no_calibration(t):  # set_params(target_fpr=...) failed inside the threshold calibration
        t["calibration.scores"] = t["calibration.scores"][:0]
        t.pop("calibration.views", None)

    cases = [dict(edit_meta=state_edit(threshold=float("nan"))), dict(edit_meta=state_edit(input_shape=[16])),
             dict(edit_meta=state_edit(plan=[[0, 0]])), dict(edit_tensors=drop("bank.nnd")),
             dict(edit_tensors=nan_bank), dict(edit_meta=four_views), dict(edit_tensors=no_calibration)]
    for i, kw in enumerate(cases):
        bad = _rewrite(path, tmp_path / f"bad{i}.safetensors", rehash=True, **kw)
        with pytest.raises(BundleError, match="inconsistent"):
            Con2Detector.load(bad, device="cpu")

    def halve_norms(t):
        t["bank.nnd_norms"] = t["bank.nnd_norms"] * 0.5

    stale = _rewrite(path, tmp_path / "stale.safetensors", rehash=True, edit_tensors=halve_norms)
    x = blobs(4, 5, False)
    np.testing.assert_allclose(Con2Detector.load(stale, device="cpu").decision_function(x),
                               det.decision_function(x), rtol=1e-6)


def test_scikit_learn_pipeline_clone_and_pickle(fitted):
    import pickle

    from sklearn.base import clone, is_outlier_detector
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    det, _ = fitted
    assert is_outlier_detector(det)
    x = blobs(5, 4, False)
    pipe = make_pipeline(FunctionTransformer(), clone(det)).fit(blobs(40, 0, True))
    assert pipe.decision_function(x).shape == (5,) and set(pipe.predict(x)) <= {0, 1}
    again = pickle.loads(pickle.dumps(det))  # the narrow test model pickles too
    np.testing.assert_array_equal(again.decision_function(x), det.decision_function(x))
    with pytest.raises(SklearnNotFittedError):
        clone(det).decision_function(x)
    with pytest.raises(ValueError, match="contamination"):
        Con2Detector(contamination=0.6).fit(blobs(20, 0, True))


def _copy(det):
    import pickle

    return pickle.loads(pickle.dumps(det))  # the module's fitted detector stays as it is


def test_every_option_is_either_refit_or_applied_after_fit():
    from con2.detector import LIVE_PARAMS, REFIT_PARAMS

    assert set(REFIT_PARAMS) | set(LIVE_PARAMS) == set(Con2Detector().get_params())
    assert not set(REFIT_PARAMS) & set(LIVE_PARAMS)


@pytest.mark.parametrize("name,value", [
    ("context", "flip"), ("objective", "simclr"), ("epochs", 2), ("batch_size", 8), ("image_size", 16),
    ("scorer", "lh"), ("views", 4), ("seed", 7), ("amp", True), ("lr", 1e-2), ("weight_decay", 0.0),
    ("temperature", 0.5), ("width", 4), ("calibration_fraction", 0.2), ("bank_dtype", "float16"),
    ("crop_scale", (0.5, 1.0))])
def test_scoring_refuses_a_changed_option_the_fit_depends_on(fitted, tmp_path, name, value):
    det = _copy(fitted[0])
    x = blobs(4, 6, False)
    before, old = det.decision_function(x), getattr(det, name)
    det.set_params(aggregate="max", **{name: value})  # taken (set_params(...).fit(X) must work) ...
    assert getattr(det, name) == value and det.aggregate == "max"
    for use in (det.decision_function, det.predict, lambda _: det.save(tmp_path / "d.safetensors")):
        with pytest.raises(ValueError, match=f"{name} was .* when this detector was fitted.*fit again"):
            use(x)  # ... but the fitted state is not used with it
    setattr(det, name, old)  # assigned back directly: scoring works again
    det.aggregate = "mean"
    np.testing.assert_array_equal(det.decision_function(x), before)


def test_set_params_then_fit_refits(fitted):
    det = _copy(fitted[0])
    det.decision_function(blobs(3, 1, False))  # the options of the first fit checked once
    det.set_params(epochs=2, calibration_fraction=0.2).fit(blobs(40, 0, True))
    assert det.decision_scores_.shape == (8,)  # 20 % of 40
    # back to the first fit's options at once: the refitted model depends on the new ones (the
    # check made for the first fit must not pass for it)
    det.set_params(epochs=1, calibration_fraction=0.1)
    with pytest.raises(ValueError, match="epochs was 2 when this detector was fitted"):
        det.decision_function(blobs(3, 1, False))
    det.set_params(epochs=2, calibration_fraction=0.2)
    assert det.decision_function(blobs(3, 1, False)).shape == (3,)


def test_new_target_fpr_or_contamination_recalibrates_the_threshold(fitted):
    det = _copy(fitted[0])
    cal, t0 = det.decision_scores_.copy(), det.threshold_
    det.set_params(target_fpr=0.5)
    assert det.threshold_ < t0 and (cal > det.threshold_).mean() == 0.5  # 3 of the 6 held-out normals
    np.testing.assert_array_equal(det.labels_, (cal > det.threshold_).astype(int))
    x = blobs(5, 7, True)
    np.testing.assert_array_equal(det.predict(x), (det.decision_function(x) > det.threshold_).astype(int))
    det.set_params(contamination=0.0)  # replaces target_fpr
    assert cal.max() < det.threshold_ == pytest.approx(cal.max(), rel=2e-5)
    with pytest.raises(ValueError, match="contamination"):
        det.set_params(contamination=0.7)
    assert det.contamination == 0.0 and cal.max() < det.threshold_ == pytest.approx(cal.max(), rel=2e-5)
    det.contamination, det.target_fpr = None, 0.1  # assigned directly: applied when scoring
    det.predict(x)
    assert det.threshold_ == t0


def test_new_aggregate_recalibrates_as_a_fit_with_it_would(fitted, tmp_path):
    from sklearn.base import clone

    det = _copy(fitted[0])
    t_mean, s_mean = det.threshold_, det.decision_scores_.copy()
    det.set_params(aggregate="max")
    # numpy integer options work, in fit and in the bundle
    ints = dict(epochs=np.int64(1), width=np.int64(8), batch_size=np.int64(16), views=np.int64(2))
    ref = clone(fitted[0]).set_params(aggregate="max", **ints).fit(blobs(60, 0, True))
    np.testing.assert_allclose(det.decision_scores_, ref.decision_scores_, rtol=1e-6)
    assert det.threshold_ == pytest.approx(ref.threshold_, rel=1e-6) and det.threshold_ != t_mean
    x = blobs(5, 8, False)
    np.testing.assert_array_equal(det.predict(x), (det.decision_function(x) > det.threshold_).astype(int))
    ref.save(tmp_path / "max.safetensors")
    loaded = Con2Detector.load(tmp_path / "max.safetensors", device="cpu")
    assert loaded.threshold_ == ref.threshold_ and loaded.get_params()["epochs"] == 1
    loaded.set_params(aggregate="mean")  # the bundle keeps the per-view calibration scores
    np.testing.assert_allclose(loaded.decision_scores_, s_mean, rtol=1e-6)
    det.set_params(aggregate="mean")
    assert det.threshold_ == t_mean


def test_a_bundle_without_per_view_calibration_scores_refuses_a_new_aggregate(fitted, tmp_path):
    _, path = fitted
    old = _rewrite(path, tmp_path / "old.safetensors", edit_tensors=lambda t: t.pop("calibration.views"),
                   rehash=True)
    det = Con2Detector.load(old, device="cpu")
    with pytest.raises(ValueError, match="per-view calibration scores.*fit again"):
        det.set_params(aggregate="max")
    assert det.aggregate == "mean"
    det.set_params(target_fpr=0.5)  # the aggregated scores are enough for this
    assert (det.decision_scores_ > det.threshold_).mean() == 0.5


def test_device_and_batch_size_after_fit(fitted):
    det = _copy(fitted[0])
    x = blobs(5, 9, False)
    s = det.decision_function(x)
    det.set_params(score_batch_size=2, progress=False, out="elsewhere", device="auto")
    np.testing.assert_allclose(det.decision_function(x), s, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="not a device"):
        det.set_params(device="bogus")
    with pytest.raises(ValueError, match="'meta': con2 runs on cpu or cuda"):  # the model moved there was lost
        det.set_params(device="meta")
    with pytest.raises(ValueError, match="not a device name"):  # not torch's list of overloads
        det.set_params(device=None)
    assert det.device == "auto"
    np.testing.assert_allclose(det.decision_function(x), s, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="meta device: it holds no pixel data"):
        det.decision_function(torch.empty((2, 12, 12), dtype=torch.uint8, device="meta"))
    with pytest.raises(ValueError, match="score_batch_size"):
        det.set_params(score_batch_size=0)
    if torch.cuda.is_available():  # the model and bank move with the option
        det.set_params(device="cuda")
        assert next(det.model_.parameters()).is_cuda and det.bank_.nnd.is_cuda
        np.testing.assert_allclose(det.decision_function(x), s, rtol=1e-4, atol=1e-5)


def test_option_types_are_checked_before_training():
    x = np.zeros((10, 12, 12), np.uint8)
    for params, err, match in [
            (dict(batch_size="8"), TypeError, "--batch-size must be an integer, got '8'"),
            (dict(width=2.5), TypeError, "--width must be an integer, got 2.5"),
            (dict(epochs=1.5), TypeError, "--epochs must be an integer, got 1.5"),
            (dict(epochs=True), TypeError, "--epochs must be an integer, got True"),
            (dict(lr="0.001"), TypeError, "--lr must be a number"),
            (dict(amp="no"), TypeError, "--amp must be True or False"),
            (dict(target_fpr="0.1"), TypeError, "target_fpr must be a number"),
            (dict(contamination="0.1"), TypeError, "contamination must be a number"),
            (dict(calibration_fraction=None), TypeError, "calibration_fraction must be a number"),
            (dict(score_batch_size=True), ValueError, "score_batch_size"),
            (dict(device="bogus"), ValueError, "not a device")]:
        with pytest.raises(err, match=match):
            Con2Detector(progress=False, device=params.pop("device", "cpu"), **params).fit(x)


def test_empty_inputs_and_lists_of_images(fitted):
    det, _ = fitted
    for empty in ([], (), np.zeros((0, 12, 12), np.uint8), torch.zeros((0, 1, 12, 12), dtype=torch.uint8),
                  np.array([])):
        with pytest.raises(ValueError, match="holds no images"):
            Con2Detector(progress=False, device="cpu").fit(empty)
    x = blobs(4, 10, False)
    s = det.decision_function(x)
    np.testing.assert_array_equal(det.decision_function(list(x)), s)  # numpy [H, W] images
    np.testing.assert_array_equal(det.decision_function([im[..., None] for im in x]), s)  # [H, W, 1]
    np.testing.assert_array_equal(det.decision_function([torch.from_numpy(im)[None] for im in x]), s)  # [1, H, W]
    with pytest.raises(TypeError, match="mixes torch tensors"):
        det.decision_function([x[0], torch.from_numpy(x[1])])
    with pytest.raises(TypeError, match=r"uint8.*got dtype int64 \(its values are in 0..255: convert with x.astype"):
        det.decision_function([im.tolist() for im in x])  # nested Python lists: int64


# ----------------------------------------------------------------------------- from a review of the API

def _tiny(**kw):
    return Con2Detector(**{**dict(epochs=1, width=4, batch_size=16, views=2, progress=False, device="cpu"), **kw})


def test_a_failed_fit_keeps_the_previous_fit(fitted, monkeypatch):
    """A fit that failed after training left the new model and input shape with the old threshold:
    predict and save then used both, silently."""
    import copy

    import con2.detector as detector_mod
    from con2.data import OneClassSplit

    det = copy.deepcopy(fitted[0])
    x = blobs(8, 3, False)
    before = (det.decision_function(x), det.threshold_, det.input_shape_)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    # val images unlike the train ones: refused before any training
    bad = OneClassSplit(name="x", train=rgb, test=rgb[:2], test_labels=np.zeros(2, int),
                        val=np.zeros((5, 20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="val images are 20x20 px with 3 channel.*, its train images 12x12 px with 3"):
        det.fit(bad)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(detector_mod.FeatureBank, "build", interrupted)  # after training, during the bank
    with pytest.raises(KeyboardInterrupt):
        det.fit(rgb)
    np.testing.assert_array_equal(det.decision_function(x), before[0])
    assert (det.threshold_, det.input_shape_) == before[1:]
    fresh = _tiny()
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(rgb)
    with pytest.raises(NotFittedError):
        fresh.decision_function(x)


def test_scoring_a_split_is_refused(fitted):
    """decision_function(split) scored the split's *train* images (the bank's own)."""
    from con2.data import OneClassSplit

    x = blobs(12, 4, True)[..., None]
    split = OneClassSplit(name="x", train=x, test=x[:4], test_labels=np.zeros(4, int), val=x[:0])
    for call in (fitted[0].decision_function, fitted[0].predict):
        with pytest.raises(TypeError, match="OneClassSplit: only fit takes one; score its images"):
            call(split)


def test_option_types_found_by_a_review_are_checked_before_training(monkeypatch):
    import con2.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("trained"))
    x = blobs(20, 0, True)
    for kw, match in ((dict(crop_scale=np.array([0.5, 0.9])), "crop_scale must be None or a"),
                      (dict(crop_scale=torch.tensor([0.5, 0.9])), "crop_scale must be None or a"),
                      (dict(progress="no"), "progress must be True or False"),
                      (dict(out=123), "out must be a folder path")):
        with pytest.raises(TypeError, match=match):
            _tiny(**kw).fit(x)
    with pytest.raises(ValueError, match="views=0 makes none"):
        _tiny(views=0, crop_scale=(0.5, 1.0)).fit(x)
    with pytest.raises(ValueError, match="aggregate=max combines the scores of test-time views, but views=0"):
        _tiny(views=0, aggregate="max").fit(x)
    wide = np.zeros((20, 12, 16), np.uint8)
    with pytest.raises(ValueError, match=r"16x12 px; .*pass image_size=S"):
        _tiny().fit(wide)


def test_image_size_resizes_every_image_as_con2_train_does_and_a_path_out_saves(tmp_path):
    """image_size=S made the views straight from the full-size images (grid_sample, no antialiasing),
    unlike `con2 train --image-size S`, and scored images had to keep the fitted size; a Path given as
    out= failed in save, after the training."""
    from pathlib import Path

    from con2.data.loaders.common import resize_images

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, size=(30, 12, 16), dtype=np.uint8)
    det = _tiny(image_size=8, out=Path(tmp_path / "runs")).fit(wide)
    assert det.input_shape_ == (8, 8, 1)
    small = resize_images(wide[..., None], 8)
    np.testing.assert_array_equal(det.decision_function(wide), det.decision_function(small))
    big = np.repeat(np.repeat(small, 3, axis=1), 3, axis=2)  # 24x24: any size is resized
    assert det.decision_function(big).shape == (30,)
    loaded = Con2Detector.load(det.save(tmp_path / "d.safetensors"))
    np.testing.assert_array_equal(loaded.decision_function(wide), det.decision_function(wide))
    with pytest.raises(ValueError, match="fitted on 12x12 px .*image_size=S"):
        _tiny().fit(blobs(30, 0, True)).decision_function(small)


def test_each_fit_into_out_keeps_its_own_run(tmp_path, capsys):
    """With out= a second fit (or a clone's, in a grid search) found the folder taken and raised
    "pass --resume", a CLI flag; `con2 evaluate` of such a run asked for --data-file."""
    from sklearn.base import clone

    from con2.evaluate import evaluate_run

    x = blobs(30, 0, True)
    det = _tiny(out=str(tmp_path / "runs"), progress=True).fit(x)
    assert "note: the test split" not in capsys.readouterr().out  # the held-out normals are not a test split
    det.fit(x)
    other = clone(det).fit(x)
    assert [det.run_dir_.name, other.run_dir_.name] == ["fit-2", "fit-3"]
    assert all((tmp_path / "runs" / f"fit-{i}" / "model.safetensors").exists() for i in (1, 2, 3))
    with pytest.raises(ValueError, match="trained by Con2Detector.fit on images in memory"):
        evaluate_run(det.run_dir_, views=0, progress=False)


def test_a_loaded_detector_has_its_crop_scale_as_a_tuple(fitted, tmp_path):
    from sklearn.base import clone

    det = clone(fitted[0]).set_params(crop_scale=(0.5, 1.0))
    det.fit(blobs(30, 0, True))
    loaded = Con2Detector.load(det.save(tmp_path / "d.safetensors"))
    assert loaded.get_params()["crop_scale"] == (0.5, 1.0)
    assert isinstance(loaded.get_params()["crop_scale"], tuple)


def test_read_only_images_score_without_a_warning(fitted, tmp_path, recwarn):
    x = blobs(6, 5, True)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(fitted[0].decision_function(mapped), fitted[0].decision_function(x))
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_load_is_told_from_its_misuses(fitted, tmp_path):
    """load on an instance returns a new detector (the instance stays unfitted); a run folder or None
    is not a bundle path; a bundle may be saved under /proc (no stream there)."""
    det, path = fitted
    unfitted = Con2Detector()
    unfitted.load(path)
    with pytest.raises(NotFittedError, match=r"det = Con2Detector.load\(path\); it makes a new one"):
        unfitted.predict(blobs(2, 0, True))
    with pytest.raises(IsADirectoryError, match="a training run's folder is read by Con2Detector.from_run"):
        Con2Detector.load(tmp_path)
    with pytest.raises(TypeError, match="load takes the bundle's path"):
        Con2Detector.load(None)
    with pytest.raises(TypeError, match="save takes the bundle's path"):
        det.save(None)
    with pytest.raises(ValueError, match="is a standard stream"):
        det.save(f"/proc/{__import__('os').getpid()}/fd/1")
    import con2
    assert "Con2Detector" in dir(con2)


# ----------------------------------------------------------------------------- from a second review of the API

def test_the_uint8_hint_follows_the_values_not_the_dtype(fitted):
    """Every float input was told to multiply by 255: float images in 0..255 (OpenCV, PIL) then wrapped
    round uint8 silently; integers above 255 were told to cast, which wraps too."""
    det, _ = fitted
    x = blobs(2, 0, True)
    for arr, match in [(x / 255.0, r"in \[0, 1\]: convert with \(x \* 255\).round\(\)"),
                       (x.astype(np.float32), r"in 0..255: convert with x.round\(\).astype\(np.uint8\)"),
                       (x.astype(np.uint16) * 4, "values run from 0 to 9.*scale them to 0..255 first"),
                       (np.where(x > 200, np.nan, x / 255.0), "NaN or infinite"),
                       (x.astype(np.complex64), "complex64")]:
        with pytest.raises(TypeError, match=match):
            det.decision_function(arr)
    for other in (None, {"a": 1}, "images"):
        with pytest.raises(TypeError, match=f"must be uint8 images .*got {type(other).__name__}"):
            det.decision_function(other)


def test_a_numpy_channels_first_rgb_image_is_refused_like_a_tensor(tmp_path):
    """tensor.numpy() of one RGB image, [3, H, W], was scored as 3 grey images by an RGB detector that
    resizes (its input format turns grey into RGB); the tensor itself was refused."""
    rng = np.random.default_rng(0)
    det = _tiny(image_size=12).fit(rng.integers(0, 255, size=(30, 12, 12, 3), dtype=np.uint8))
    one = rng.integers(0, 255, size=(3, 12, 12), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"numpy \[3, H, W\] array.*\[1, H, W, 3\] \(channels last\)"):
        det.decision_function(one)
    assert det.decision_function(one.transpose(1, 2, 0)[None]).shape == (1,)


def test_target_fpr_is_checked_while_contamination_replaces_it():
    with pytest.raises(ValueError, match="target_fpr must be in"):
        _tiny(target_fpr=2.0, contamination=0.1).fit(blobs(30, 0, True))


def test_images_of_different_sizes_are_resized_one_by_one_with_image_size(tmp_path):
    """The docstring says every image, of any size, is resized to image_size; a list of images of
    different sizes was refused ("all images must have one shape") in fit and in scoring."""
    from con2.data.loaders.common import resize_images

    rng = np.random.default_rng(0)
    sized = [rng.integers(0, 255, size=(10 + i % 5, 12 + i % 3), dtype=np.uint8) for i in range(30)]
    det = _tiny(image_size=8).fit(sized)
    assert det.input_shape_ == (8, 8, 1)
    one_by_one = np.concatenate([resize_images(im[None, ..., None], 8) for im in sized[:6]])
    np.testing.assert_array_equal(det.decision_function(sized[:6]), det.decision_function(one_by_one))
    with pytest.raises(ValueError, match="image 0 has 1 channel.*image 1 has 3: give them in one colour mode"):  # fit resizes, it does not convert colour
        _tiny(image_size=8).fit([sized[0], np.zeros((9, 9, 3), np.uint8)] + sized[2:])
    with pytest.raises(ValueError, match="image 1 is .*or fit with image_size=S"):
        _tiny().fit(sized)


def test_from_run_given_a_file_names_it(fitted, tmp_path):
    with pytest.raises(NotADirectoryError, match="is a file, not a run folder .*Con2Detector.load"):
        Con2Detector.from_run(fitted[1])
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=f"give the run's folder, {tmp_path}"):
        Con2Detector.from_run(tmp_path / "model.safetensors")


def test_detector_option_errors_name_the_option_and_an_int_device_is_an_index():
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 2\*\*63\), got -1$"):
        _tiny(seed=-1).fit(blobs(30, 0, True))
    from con2.run import resolve_device

    if torch.cuda.is_available():
        assert resolve_device(0) == torch.device("cuda", 0)
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(0)
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device(True)


def test_images_under_8_px_are_taken_when_they_are_resized():
    """The size floor ran before the resize: image_size=16 refused 4x4 images that it would resize
    (con2 train --image-size trains on 1x1 images); one image without its batch axis is still named."""
    rng = np.random.default_rng(0)
    det = _tiny(image_size=8).fit(rng.integers(0, 255, size=(30, 4, 4), dtype=np.uint8))
    assert det.decision_function(rng.integers(0, 255, size=(3, 1, 1), dtype=np.uint8)).shape == (3,)
    assert det.decision_function([np.zeros((2, 300), np.uint8), np.zeros((5, 5), np.uint8)]).shape == (2,)
    with pytest.raises(ValueError, match=r"looks like one image \[H, W, C\] without its batch axis"):
        det.decision_function(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 8x8"):  # no resize: the floor holds
        _tiny().fit(rng.integers(0, 255, size=(30, 4, 4), dtype=np.uint8))


def test_a_crop_scale_under_one_pixel_is_refused_before_training():
    """torchvision takes the whole image when no crop of the asked area has a pixel: 1e-4 of 16x16
    images gave whole-image views, the opposite of the small crops asked for."""
    with pytest.raises(ValueError, match=r"crop scale 0.0001 of a 12x12 px image is under one pixel"):
        _tiny(crop_scale=(1e-4, 1e-3), epochs=10**6).fit(blobs(30, 0, True))


def test_the_calibration_images_are_held_out_of_training_and_of_the_bank():
    """An in-sample threshold sits too low (FPR on new normals above target_fpr); only the shape of
    decision_scores_ was checked (mutation QA: training on every image passed)."""
    x = np.random.default_rng(0).integers(0, 256, size=(20, 12, 12), dtype=np.uint8)
    det = Con2Detector(epochs=1, width=4, batch_size=8, views=0, scorer="nnd", progress=False, target_fpr=0.1,
                       calibration_fraction=0.2, device="cpu").fit(x)
    assert det.bank_.nnd.shape[1] == 16 and det.decision_scores_.shape == (4,)
    assert (det.decision_scores_ > -1 + 1e-4).all()  # no calibration image finds itself in the bank
