"""Scoring: the two native-op boundaries against NumPy/SciPy, S_LH with n < d, the test-time-view
formula, finiteness checks, float16 banks and batch-size invariance."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from scipy.stats import multivariate_normal

from con2 import ops
from con2.data import ContextSet, ViewConfig
from con2.model import Con2Model
from con2.data.keys import image_keys, keyed_uniforms, view_stream
from con2.scoring import (CollapsedFeatures, FeatureBank, Gaussian, NonFiniteFeatures, Scorer, View, ViewEncoder, aggregate,
                          ledoit_wolf, view_plan)

IDENTITY_VIEWS = ViewConfig(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)


def np_top1(q, b):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = qn @ bn.T
    return s.max(1), s.argmax(1)


# ----------------------------------------------------------------------------- top1_cosine

def test_top1_cosine_matches_numpy():
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(37, 64, generator=g), torch.randn(501, 64, generator=g)
    v, i = ops.top1_cosine(q, b)
    ev, ei = np_top1(q.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(v.numpy(), ev, atol=1e-5)
    np.testing.assert_array_equal(i.numpy(), ei)


def test_top1_cosine_ties_go_to_lowest_index_and_scale_is_ignored():
    b = torch.randn(10, 16)
    b[7] = b[2] * 4.0  # same direction, later index (power of two: an exact tie)
    v, i = ops.top1_cosine(b[2:3] * 0.5, b)
    assert i.item() == 2 and v.item() == pytest.approx(1.0, abs=1e-6)


def test_top1_cosine_rejects_zero_vectors():
    b = torch.randn(5, 8)
    with pytest.raises(ValueError, match="zero vector"):
        ops.top1_cosine(torch.zeros(2, 8), b)
    b[3] = 0
    with pytest.raises(ValueError, match="zero vector"):
        ops.top1_cosine(torch.randn(2, 8), b)


def test_top1_cosine_non_contiguous_inputs():
    q = torch.randn(64, 20)[:, ::2]  # strided columns
    b = torch.randn(10, 300).T  # transposed
    assert not q.is_contiguous() and not b.is_contiguous()
    v, i = ops.top1_cosine(q, b)
    v2, i2 = ops.top1_cosine(q.contiguous(), b.contiguous())
    torch.testing.assert_close(v, v2)
    torch.testing.assert_close(i, i2)


def test_top1_cosine_float16_bank_within_tolerance():
    q, b = torch.randn(50, 512), torch.randn(2000, 512)
    v32, _ = ops.top1_cosine(q, b)
    v16, _ = ops.top1_cosine(q, b.half())
    assert (v32 - v16).abs().max() < 2e-3


# ----------------------------------------------------------------------------- mahalanobis / LH

def test_mahalanobis_sq_matches_scipy():
    rng = np.random.default_rng(1)
    d = 12
    a = rng.normal(size=(d, d))
    cov = a @ a.T + d * np.eye(d)
    mean = rng.normal(size=d)
    x = rng.normal(size=(30, d))
    g = Gaussian.fit  # noqa: F841 (the whitening below is what Gaussian builds)
    chol = np.linalg.cholesky(cov)
    w = np.linalg.inv(chol).T  # oracle only; con2 uses a triangular solve
    got = ops.mahalanobis_sq(torch.from_numpy(x)[:, :].T.contiguous().T, torch.from_numpy(mean), torch.from_numpy(w))
    vi = np.linalg.inv(cov)
    want = np.array([mahalanobis(r, mean, vi) ** 2 for r in x])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_ledoit_wolf_matches_sklearn():
    from sklearn.covariance import ledoit_wolf as sk_lw

    z = torch.randn(40, 30, dtype=torch.float64)
    _, cov, shrink = ledoit_wolf(z)
    sk_cov, sk_shrink = sk_lw(z.numpy())
    np.testing.assert_allclose(cov.numpy(), sk_cov, atol=1e-12)
    assert shrink == pytest.approx(sk_shrink)


def test_lh_with_fewer_samples_than_dims_is_finite_and_ranks_a_shift_higher():
    g = torch.Generator().manual_seed(0)
    d, n = 128, 40  # n < d: the sample covariance is singular
    center = torch.randn(d, generator=g)
    train = center + 0.3 * torch.randn(n, d, generator=g)
    unit = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    gauss = Gaussian.fit(unit(train))
    same = center + 0.3 * torch.randn(20, d, generator=g)
    shifted = center + 1.5 * torch.randn(d, generator=g) + 0.3 * torch.randn(20, d, generator=g)
    s_same, s_shift = gauss.nll(unit(same)), gauss.nll(unit(shifted))
    assert torch.isfinite(s_same).all() and torch.isfinite(s_shift).all()
    assert s_shift.min() > s_same.max()
    # the NLL is the exact Gaussian NLL of the fitted (shrunk) covariance
    _, cov, _ = ledoit_wolf(unit(train))
    cov.diagonal().add_(1e-6 * float(torch.trace(cov)) / d)
    want = -multivariate_normal(gauss.mean.numpy(), cov.numpy()).logpdf(unit(same).double().numpy())
    np.testing.assert_allclose(s_same.numpy(), want, rtol=1e-8)


def test_gaussian_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        Gaussian.fit(torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        Gaussian.fit(torch.randn(8))
    with pytest.raises(NonFiniteFeatures, match="NaN"):
        Gaussian.fit(torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="samples, views"):
        aggregate(torch.randn(5))


# ----------------------------------------------------------------------------- view plan

def test_view_plan_halves_and_special_counts():
    ctx = ContextSet("invert")
    plan = view_plan(6, ctx)
    assert [v.context for v in plan] == [0, 0, 0, 1, 1, 1] and all(v.augmented for v in plan)
    assert view_plan(0, ctx) == [View(0, 0, False)]
    assert all(v.context == 0 for v in view_plan(4, None))  # SimCLR runs: original only
    assert [v.context for v in view_plan(4, ContextSet("invert,flip"))] == [0, 0, 1, 1]
    for bad in (1, 3, -2):
        with pytest.raises(ValueError, match="even"):
            view_plan(bad, ctx)


def mean_pixel_encoder(x: torch.Tensor) -> torch.Tensor:
    """A deterministic 'model': [mean pixel, 1] (normalised pixels, so invert negates the mean)."""
    return torch.stack([x.mean(dim=(1, 2, 3)), torch.ones(len(x))], dim=1)


def test_test_time_views_put_the_context_on_the_second_half():
    ctx = ContextSet("invert")
    imgs = torch.full((3, 1, 8, 8), 200, dtype=torch.uint8)
    enc = ViewEncoder(mean_pixel_encoder, IDENTITY_VIEWS, ctx, view_plan(4, ctx), batch_size=2)
    m = (200 / 255 - 0.5) / 0.5
    means = [enc.encode(imgs, v, 0)[:, 0] for v in enc.plan]
    for v, got in zip(enc.plan, means):
        want = m if v.index < 2 else -m
        torch.testing.assert_close(got, torch.full((3,), want))
    # bank and queries of the same view see the same kind of view: an identical image scores ~-1
    with pytest.warns(CollapsedFeatures):  # three equal images: one point
        bank = FeatureBank.build(enc, imgs, scorers=("nnd",), log=lambda s: None)
    per_view = bank.score_views(enc, imgs[:1], ("nnd",))["nnd"]
    assert per_view.shape == (1, 4)
    torch.testing.assert_close(per_view, torch.full((1, 4), -1.0, dtype=torch.float64))


def test_view_draws_are_reproducible_and_differ_between_views():
    ctx = ContextSet("flip")
    cfg = ViewConfig(size=8)
    imgs = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    enc = ViewEncoder(lambda x: x.flatten(1), cfg, ctx, view_plan(4, ctx), seed=3, batch_size=2)
    a = enc.encode(imgs, enc.plan[0], 0)
    torch.testing.assert_close(a, enc.encode(imgs, enc.plan[0], 0))
    assert not torch.allclose(a, enc.encode(imgs, enc.plan[1], 0))
    enc_big = ViewEncoder(lambda x: x.flatten(1), cfg, ctx, view_plan(4, ctx), seed=3, batch_size=64)
    torch.testing.assert_close(a, enc_big.encode(imgs, enc.plan[0], 0))  # batch size does not matter


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("names,c", [("invert", 3), ("flip", 1), ("flip,equalize,invert", 3)])
def test_native_test_time_views_match_the_torch_ops(names, c, device):
    # the native kernel (contexts read by the kernel, equalize materialised) against the torch ops
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not ops.native_views(device):
        pytest.skip(f"no native simclr_views kernel for {device}")
    ctx = ContextSet(names)
    imgs = torch.randint(0, 256, (7, c, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(c))
    plan = [View(i, k, True) for i, k in enumerate(range(len(ctx)))]
    make = lambda native: ViewEncoder(lambda x: x.flatten(1), ViewConfig(size=9), ctx, plan, seed=5,  # noqa: E731
                                      batch_size=3, device=device, native=native)
    native, torch_ops = make(None), make(False)
    assert native.native and not torch_ops.native
    for view in plan:
        got, want = native.encode(imgs, view, 0), torch_ops.encode(imgs, view, 0)
        torch.testing.assert_close(got, want, rtol=0, atol=5e-4)


def test_nan_and_zero_features_are_reported_not_scored():
    def nan_encoder(x):
        f = mean_pixel_encoder(x)
        f[1, 0] = float("nan")
        return f

    ctx = ContextSet("invert")
    imgs = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    enc = ViewEncoder(nan_encoder, IDENTITY_VIEWS, ctx, view_plan(0, ctx))
    with pytest.raises(NonFiniteFeatures, match="NaN or inf.*sample 1"):
        FeatureBank.build(enc, imgs, log=lambda s: None)
    enc = ViewEncoder(lambda x: torch.zeros(len(x), 4), IDENTITY_VIEWS, ctx, view_plan(0, ctx))
    with pytest.raises(NonFiniteFeatures, match="all zero"):
        FeatureBank.build(enc, imgs, log=lambda s: None)


def test_features_whose_norm_leaves_float32_range_are_reported_not_scored():
    # finite rows whose L2 norm overflows (or underflows) float32: normalised, they were all-zero
    # (or NaN) unit rows, and S_LH scored every query the same
    ctx = ContextSet("invert")
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=g)
    for scale, what in ((1e20, "overflow"), (1e-25, "underflow")):
        enc = ViewEncoder(lambda x: mean_pixel_encoder(x) * scale, IDENTITY_VIEWS, ctx, view_plan(0, ctx))  # noqa: B023
        for scorers in (("lh",), ("nnd",)):
            with pytest.raises(NonFiniteFeatures, match=f"L2 norm.*{what}s float32.*view 0.*sample 0"):
                FeatureBank.build(enc, train, scorers=scorers, log=lambda s: None)


def test_a_collapsed_train_bank_warns_and_a_spread_one_does_not():
    ctx = ContextSet("invert")
    same = torch.full((6, 1, 8, 8), 90, dtype=torch.uint8)
    enc = ViewEncoder(mean_pixel_encoder, IDENTITY_VIEWS, ctx, view_plan(2, ctx))
    with pytest.warns(CollapsedFeatures, match=r"6 train images have nearly the same representation under test-time view \d \(spread 0.0e\+00"):
        bank = FeatureBank.build(enc, same, log=lambda s: None)
    assert bank.gaussians is not None  # a warning, not a refusal: the scores stay available
    spread = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 8, 8) * 40
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedFeatures)
        FeatureBank.build(enc, spread.contiguous(), log=lambda s: None)


# ----------------------------------------------------------------------------- on a tiny model

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Con2Model(in_channels=3, image_size=12, width=8).eval()
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (24, 3, 12, 12), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8, generator=g)
    return model, train, test


def test_scorer_on_a_tiny_model(tiny):
    model, train, test = tiny
    s = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=4, batch_size=7)
    out = s.score(test, per_view=True)
    for name in ("nnd", "lh"):
        assert out[name].shape == (10,) and torch.isfinite(out[name]).all()
        assert out[f"{name}_views"].shape == (10, 4)
        torch.testing.assert_close(out[name], out[f"{name}_views"].mean(1))
        torch.testing.assert_close(aggregate(out[f"{name}_views"], "max"), out[f"{name}_views"].max(1).values)
    assert (out["nnd"] >= -1 - 1e-6).all() and (out["nnd"] <= 1 + 1e-6).all()
    from con2.data.images import ImageSet

    wrapped = Scorer(model, ViewConfig(size=12), ContextSet("invert"), ImageSet(train), views=4, batch_size=7)
    torch.testing.assert_close(wrapped.score(ImageSet(test))["nnd"], out["nnd"])  # an ImageSet as any image input
    # same draws whatever the batch size
    s2 = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=4, batch_size=256)
    torch.testing.assert_close(s2.score(test)["nnd"], out["nnd"], atol=1e-5, rtol=0)
    # train images find themselves under the deterministic view
    s0 = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=0)
    torch.testing.assert_close(s0.score(train[:5])["nnd"], torch.full((5,), -1.0, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    for none in ([], ()):  # were taken as "every scorer"
        with pytest.raises(ValueError, match="no scorer given; choose from nnd, lh"):
            s0.score(train[:5], scorers=none)


def test_float16_bank_scores_close_to_float32(tiny):
    model, train, test = tiny
    a = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=2, scorers=("nnd",))
    b = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=2, scorers=("nnd",),
               bank_dtype="float16")
    assert b.bank.nnd.dtype == torch.float16
    assert (a.score(test)["nnd"] - b.score(test)["nnd"]).abs().max() < 2e-3
    # features beyond float16's range (65504) or near zero: the float16 bank holds unit rows
    for scale in (1e6, 1e-6):
        big = copy.deepcopy(model)
        big.encoder.fc = _Scale(scale)
        a = Scorer(big, ViewConfig(size=12), ContextSet("invert"), train, views=2, scorers=("nnd",))
        b = Scorer(big, ViewConfig(size=12), ContextSet("invert"), train, views=2, scorers=("nnd",),
                   bank_dtype="float16")
        assert (a.score(test)["nnd"] - b.score(test)["nnd"]).abs().max() < 2e-3, scale


class _Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_wrong_images_fail_clearly(tiny):
    model, train, test = tiny
    s = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=0, scorers=("nnd",))
    with pytest.raises(ValueError, match="channel"):
        s.score(test[:, :1])
    with pytest.raises(ValueError, match="px"):
        s.score(torch.zeros(2, 3, 10, 10, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        s.score(test.float())
    with pytest.raises(ValueError, match="without the lh scorer"):
        s.score(test, scorers=("lh",))


def test_test_time_crop_scale_reaches_the_views_and_the_metrics(tmp_path, capsys, monkeypatch):
    # CSI's evaluation fixes the test-time crops at 54 % of the area; the default keeps the training views'
    from con2.cli.main import main
    from con2.config import TrainConfig
    from con2.data import load_split
    from con2.evaluate import scorer_for_run, scoring_view_config
    from con2.run import load_run
    from con2.train import train

    cfg = TrainConfig(dataset="digits", width=4, epochs=1, image_size=12, batch_size=16, max_train_samples=32,
                      device="cpu", out=str(tmp_path / "run"))
    run = train(cfg, progress=False)
    cfg, model = load_run(run)
    split = load_split(cfg)
    assert scoring_view_config(cfg, split).scale == (0.08, 1.0)
    assert scoring_view_config(cfg, split, (0.54, 0.54)).scale == (0.54, 0.54)
    with pytest.raises(ValueError, match="crop scale"):
        scoring_view_config(cfg, split, (0.9, 0.5))
    default = scorer_for_run(model, cfg, split, views=4, scorers=("nnd",), progress=False)
    csi = scorer_for_run(model, cfg, split, views=4, scorers=("nnd",), progress=False, crop_scale=(0.54, 0.54))
    assert csi.encoder.view_cfg.scale == (0.54, 0.54)
    assert not torch.allclose(default.score(split.test[:8])["nnd"], csi.score(split.test[:8])["nnd"])

    main(["evaluate", "--run", str(run), "--views", "2", "--per-view", "--quiet"])
    assert (run / "scores_views.npz").exists()
    main(["evaluate", "--run", str(run), "--views", "4", "--crop-scale", "0.54", "0.54", "--quiet"])
    assert "crop area 0.54-0.54" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["crop_scale"] == [0.54, 0.54] and metrics["views"] == 4
    assert {"con2_version", "torch_version", "bank_dtype", "device", "date"} <= set(metrics)
    assert not (run / "scores_views.npz").exists()  # the 2-view file no longer matched metrics.json
    # the CLI prints a warning as one line, like its errors (any bank counts as collapsed here)
    monkeypatch.setattr("con2.scoring.COLLAPSED_SPREAD", 2.0)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--views", "2", "--scorers", "nnd", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [e for e in err if "warning" in e] == [e for e in err if "collapsed" in e] != []
    assert all(e.startswith("con2 evaluate: warning: the 32 train images have nearly the same") for e in err
               if "warning" in e)
    with pytest.raises(IsADirectoryError, match="is a directory"):  # before any scoring
        main(["score", "--run", str(run), "--out", str(run), "--debug"])
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--run", str(run), "--crop-scale", "0", "1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # train refuses a negative seed; the scoring commands took it
        main(["evaluate", "--run", str(run), "--seed", "-1"])
    assert exc.value.code == 2 and "--seed: expected an integer in [0, 2**63)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="under one pixel"):  # all its crops would be the whole image
        scoring_view_config(cfg, split, (1e-4, 1e-3))


def test_a_score_depends_on_the_image_only_not_on_its_company(tiny):
    """The test-time draws are keyed by the image's pixels: an image scores the same alone, inside
    a batch, or at another position, so a calibrated `predict` cannot flip with the batch."""
    model, train, test = tiny
    s = Scorer(model, ViewConfig(size=12), ContextSet("invert"), train, views=4, batch_size=3)
    full = s.score(test)
    for name in ("nnd", "lh"):
        torch.testing.assert_close(s.score(test[4:5])[name], full[name][4:5], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(s.score(test.flip(0))[name], full[name].flip(0), atol=1e-5, rtol=1e-6)
    # and the draws still differ between images, views and roles
    keys = image_keys(test)
    assert keys.unique().numel() == len(test)
    u = keyed_uniforms(keys, view_stream(0, 1, 1), 8)
    assert u.unique().numel() == u.numel() and 0 <= float(u.min()) and float(u.max()) < 1
    assert not torch.equal(u, keyed_uniforms(keys, view_stream(0, 2, 1), 8))
    assert not torch.equal(u, keyed_uniforms(keys, view_stream(0, 1, 0), 8))


def test_keyed_uniforms_are_uniform_and_independent():
    keys = image_keys(torch.randint(0, 256, (20000, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    u = keyed_uniforms(keys, view_stream(3, 0, 0), 4).double()
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    hist = torch.histc(u[:, 0], bins=10, min=0, max=1)
    assert float(hist.min()) > 1800 and float(hist.max()) < 2200  # expected 2000 per bin
    c = torch.corrcoef(u.T)
    assert float((c - torch.eye(4, dtype=c.dtype)).abs().max()) < 0.03


def test_evaluate_model_metrics_are_json_with_numpy_options(tmp_path):
    # a sweep's np.arange views / np.float32 target: the metrics were scored, then not JSON-writable
    from con2.config import TrainConfig
    from con2.data import OneClassSplit
    from con2.evaluate import evaluate_model, write_results

    torch.manual_seed(0)
    cfg = TrainConfig(dataset="digits", width=4, image_size=12, device="cpu", out=str(tmp_path / "run"))
    model = Con2Model(in_channels=1, image_size=12, width=4).eval()
    rng = np.random.default_rng(0)
    imgs = lambda n: rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8)  # noqa: E731
    split = OneClassSplit(name="t", train=imgs(8), test=imgs(6), test_labels=np.array([0, 1] * 3), val=imgs(4))
    metrics, scores = evaluate_model(model, cfg, split, views=np.int64(2), scorers=("nnd",), seed=np.int64(1),
                                     target_fpr=np.float32(0.25), progress=False)
    assert json.loads(json.dumps(metrics))["views"] == 2 and scores["nnd_views"].shape == (6, 2)
    write_results(tmp_path, metrics, scores, split)


def test_a_bad_target_fpr_fails_before_any_scoring(tmp_path, monkeypatch):
    # the threshold came last: a target of 5 (meaning 5 %) failed after the whole test split was scored
    import con2.evaluate
    import con2.run
    from con2.config import TrainConfig
    from con2.data import OneClassSplit
    from con2.predict import predict_files

    def no_scoring(*a, **k):
        raise AssertionError("scored before the options were checked")

    monkeypatch.setattr(con2.evaluate, "scorer_for_run", no_scoring)
    monkeypatch.setattr(con2.run, "load_run", no_scoring)
    cfg = TrainConfig(dataset="digits", width=4, image_size=12, device="cpu", out=str(tmp_path / "run"))
    imgs = np.zeros((4, 12, 12, 1), np.uint8)
    split = OneClassSplit(name="t", train=imgs, test=imgs, test_labels=np.array([0, 1, 0, 1]), val=imgs)
    (tmp_path / "a.png").write_bytes(b"")
    for bad in (5, -0.1, float("nan"), "0.05"):
        with pytest.raises(ValueError, match="target FPR must be a number in"):
            con2.evaluate.evaluate_model(None, cfg, split, target_fpr=bad, progress=False)
        with pytest.raises(ValueError, match="target FPR must be a number in"):
            predict_files(tmp_path / "run", [tmp_path / "a.png"], target_fpr=bad)


def test_scoring_helpers_name_bad_input():
    """From a review: these raised AttributeError / IndexError from inside, or blamed the Gaussian's mean."""
    with pytest.raises(ValueError, match="at least one feature row"):
        ledoit_wolf(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"\[n, d\] features"):
        ledoit_wolf(torch.zeros(4))
    g = Gaussian.fit(torch.nn.functional.normalize(torch.randn(20, 3), dim=1))
    with pytest.raises(ValueError, match="fitted on 3-dimensional features; got features of shape"):
        g.nll(torch.randn(5, 6))
    with pytest.raises(TypeError, match="torch tensor"):
        aggregate(np.zeros((2, 3)))


def test_evaluation_refuses_labels_other_than_0_and_1_before_scoring(monkeypatch):
    import con2.evaluate as evaluate_mod
    from con2.config import TrainConfig
    from con2.data import OneClassSplit

    x = np.zeros((6, 8, 8, 1), np.uint8)
    split = OneClassSplit(name="s", train=x, test=x, test_labels=np.array([0, 2, 0, 2, 0, 2]), val=x[:0])
    monkeypatch.setattr(evaluate_mod, "scorer_for_run", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(ValueError, match=r"s: test labels must be 0 \(normal\) or 1 \(anomaly\), got 2$"):
        evaluate_mod.evaluate_model(None, TrainConfig(), split, 2)
    for odd, shown in (([0, 0.7, 1, 1, 0, 1], "0.7"), ([0, np.nan, 1, 1, 0, 1], "nan")):  # were cast to 0 / -2**63
        split = OneClassSplit(name="s", train=x, test=x, test_labels=np.array(odd), val=x[:0])
        with pytest.raises(ValueError, match=f"got {shown}$"):
            evaluate_mod.evaluate_model(None, TrainConfig(), split, 2)


def test_scoring_progress_is_a_bar_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from con2.progress import progress as _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, bar_shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = _progress(3, "scoring", enabled=True)
        bar.update(3)
        bar.close()
        assert ("\r" in stream.getvalue()) == bar_shown
        if not bar_shown:  # a log file gets one plain line saying what starts
            assert stream.getvalue() == "scoring: 3 image views\n"
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert _progress(3, "scoring", enabled=False).disable and quiet.getvalue() == ""


def test_an_interrupted_evaluation_write_never_leaves_new_scores_beside_old_metrics(tmp_path, monkeypatch):
    """scores_views.npz was written in place (an interruption left a truncated zip) and after the new
    scores.csv, so the old metrics.json could describe them (con2 report then plotted them under the
    old evaluation's settings)."""
    from con2.data import OneClassSplit
    from con2.evaluate import METRICS_FILE, SCORES_FILE, VIEWS_FILE, write_results

    imgs = np.zeros((4, 8, 8, 1), np.uint8)
    split = OneClassSplit(name="t", train=imgs, test=imgs, test_labels=np.array([0, 0, 1, 1]), val=imgs[:0])
    scores = {"nnd": np.arange(4.0), "nnd_views": np.ones((4, 2))}
    write_results(tmp_path, {"views": 2, "aggregate": "mean"}, scores, split, per_view=True)
    with np.load(tmp_path / VIEWS_FILE) as z:
        np.testing.assert_array_equal(z["nnd"], np.ones((4, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([METRICS_FILE, SCORES_FILE, VIEWS_FILE])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(tmp_path, {"views": 4, "aggregate": "mean"}, {**scores, "nnd": -np.arange(4.0)}, split,
                      per_view=True)
    assert not (tmp_path / METRICS_FILE).exists()  # the new scores.csv is not described by the old metrics
    assert not list(tmp_path.glob("*.tmp"))


def test_scorers_refuse_features_and_scores_that_are_no_numbers():
    """Complex features lost their imaginary part (a torch warning only), int and bool ones were fitted,
    a numpy array was 'not [n, d]' though it was, and integer per-view scores failed inside torch."""
    from con2.scoring import Gaussian, aggregate

    z = torch.nn.functional.normalize(torch.randn(20, 6, dtype=torch.float64), dim=1)
    for bad in (z.to(torch.complex64), (z > 0).long(), z > 0):
        with pytest.raises(TypeError, match="the Gaussian scorer needs floating-point features"):
            Gaussian.fit(bad)
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got numpy.ndarray"):
        Gaussian.fit(z.numpy())
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got numpy.ndarray"):
        Gaussian.fit(z).nll(z.numpy())
    for how in ("mean", "max"):
        with pytest.raises(TypeError, match="per-view scores must be floating point, got torch.int64"):
            aggregate(torch.ones(3, 2, dtype=torch.long), how)


def test_view_seeds_2_to_the_32_apart_draw_other_views_and_low_seeds_keep_theirs():
    """The seed was reduced to 32 bits, so --seed 4294967296 scored exactly as --seed 0."""
    assert view_stream(0, 1, 1) != view_stream(2**32, 1, 1) != view_stream(2**33, 1, 1)
    assert view_stream(5, 3, 0) == int(_mix32_reference(((5 * 1_000_003 + 3) * 7) & 0xFFFFFFFF))
    from con2.scoring import ViewEncoder

    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="test-time views' seed must be an integer in"):
            ViewEncoder(lambda x: x, None, None, [], seed=bad)


def _mix32_reference(x: int) -> int:
    from con2.data.keys import _mix32

    return int(_mix32(torch.tensor(x)))


def test_ledoit_wolf_clips_the_shrinkage_at_one_as_sklearn():
    """Nearly isotropic features with n >> d: unclipped, the shrinkage is 1.37 and the covariance
    -0.37 S + 1.37 mu I (mutation QA: the test at n=40, d=30 has 0.92 and cannot tell)."""
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    z = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want_cov, want_shrinkage = sklearn_ledoit_wolf(z.numpy())
    assert want_shrinkage == 1.0  # the case under test
    _, cov, shrinkage = ledoit_wolf(z)
    assert shrinkage == pytest.approx(1.0)
    np.testing.assert_allclose(cov.numpy(), want_cov, atol=1e-12)


def test_feature_bank_lh_is_the_gaussian_nll_of_unit_features():
    """S_LH over g/|g| (METHOD section 7) for train and query features alike: the LH tests fed Gaussian
    rows of unit length already, so dropping either normalisation went unseen (mutation QA)."""
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    from con2.scoring import ROLE_BANK, ROLE_QUERY

    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    contexts = ContextSet("invert")
    encoder = ViewEncoder(lambda x: 50.0 * (x.flatten(1)[:, :6] + 3.0), IDENTITY_VIEWS, contexts,
                          view_plan(0, contexts))  # raw features far from unit norm, of different norms
    bank = FeatureBank.build(encoder, train, scorers=("lh",), log=lambda s: None)
    got = bank.score_views(encoder, test, ("lh",))["lh"][:, 0].numpy()

    def unit(f):
        return (f / f.norm(dim=1, keepdim=True)).double().numpy()

    train_f = unit(encoder.encode(train, encoder.plan[0], ROLE_BANK))
    test_f = unit(encoder.encode(test, encoder.plan[0], ROLE_QUERY))
    cov, _ = sklearn_ledoit_wolf(train_f)
    cov += np.eye(6) * 1e-6 * np.trace(cov) / 6  # the ridge of Gaussian.fit
    want = -multivariate_normal(train_f.mean(0), cov).logpdf(test_f)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bank_and_query_views_of_an_image_are_independent_draws():
    """The role is part of each view's stream: without it an image scored against a bank holding it
    (train images, duplicates) met its own identical views (mutation QA)."""
    from con2.scoring import ROLE_BANK, ROLE_QUERY

    contexts = ContextSet("invert")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    encoder = ViewEncoder(lambda x: x.flatten(1), ViewConfig(size=8), contexts, view_plan(2, contexts), native=False)
    view = encoder.plan[0]
    assert not torch.allclose(encoder.encode(images, view, ROLE_BANK), encoder.encode(images, view, ROLE_QUERY))


def test_evaluation_calibrates_on_val_and_rates_each_class_under_either_aggregate(monkeypatch):
    """metrics.json's threshold block and --aggregate against a scorer of known per-view scores: the
    threshold from the val normals (not the test or train ones), the FPR over the test normals, the
    TPR over the anomalies, the AUROC of the aggregate asked for (mutation QA: none was checked)."""
    import types

    import con2.evaluate as evaluate
    from con2.config import TrainConfig
    from con2.data import OneClassSplit
    from con2.metrics import auroc, calibrate_threshold

    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)

    split = OneClassSplit(name="t", train=images(20), test=images(40), val=images(20),
                          test_labels=np.r_[np.zeros(20), np.ones(20)].astype(int))
    test_scores = np.r_[np.arange(20.0), np.arange(20.0) + 10]  # normals 0..19, anomalies 10..29
    val_scores = np.arange(20.0) + 0.1
    per_view = {id(split.test): torch.from_numpy(np.c_[test_scores, np.r_[test_scores[:20] + 0.5, np.zeros(20)]]),
                id(split.val): torch.from_numpy(np.c_[val_scores, val_scores + 0.5]),
                id(split.train): torch.zeros(20, 2, dtype=torch.float64)}

    def combined(part, how):
        v = per_view[id(part)]
        return (v.mean(1) if how == "mean" else v.max(1).values).numpy()

    class KnownScores:
        encoder = types.SimpleNamespace(view_cfg=types.SimpleNamespace(scale=(0.08, 1.0)), device="cpu")

        def __init__(self, how):
            self.how = how

        def score_views(self, images, scorers=None):
            return {"nnd": per_view[id(images)]}

        def score(self, images, scorers=None):
            return {"nnd": torch.from_numpy(combined(images, self.how))}

    for how in ("mean", "max"):
        monkeypatch.setattr(evaluate, "scorer_for_run", lambda *a, _how=how, **k: KnownScores(_how))
        m, _ = evaluate.evaluate_model(None, TrainConfig(dataset="digits"), split, views=2, scorers=("nnd",),
                                       aggregate=how, target_fpr=0.1, progress=False)
        test = combined(split.test, how)
        assert m["nnd"]["auroc"] == pytest.approx(auroc(split.test_labels, test))
        t = calibrate_threshold(combined(split.val, how), 0.1)
        assert m["nnd"]["threshold"]["value"] == pytest.approx(t)
        assert m["nnd"]["threshold"]["test_fpr"] == pytest.approx((test[:20] > t).mean())
        assert m["nnd"]["threshold"]["test_tpr"] == pytest.approx((test[20:] > t).mean())
        assert m["nnd"]["threshold"]["test_fpr"] == pytest.approx(0.1)  # 2 of the 20 test normals, as on val
