"""Con2Detector: fit / score / predict, input layouts, save -> load, tampered and foreign bundles."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from con2 import Con2Detector
from con2.detector import BundleError, NotFittedError, _digest


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
        meta["sha256"] = _digest(tensors, meta)
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
    with pytest.raises(BundleError):
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

    cases = [dict(edit_meta=state_edit(threshold=float("nan"))), dict(edit_meta=state_edit(input_shape=[16])),
             dict(edit_meta=state_edit(plan=[[0, 0]])), dict(edit_tensors=drop("bank.nnd")),
             dict(edit_tensors=nan_bank)]
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
