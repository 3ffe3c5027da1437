"""Image folders larger than memory: FolderImages (decoded on access), the loader's choice between
it and decoding into memory, chunked scoring and fingerprinting, and --pipeline auto's choice."""
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from con2.config import TrainConfig
from con2.data import ContextSet, DataError, OneClassSplit, ViewConfig, load_split
from con2.data.decode import decode_image
from con2.data.images import FolderImages, ImageSet
from con2.data.sources import make_batch_source, resolve_pipeline
from con2.model import Con2Model
from con2.run import data_fingerprint
from con2.scoring import FeatureBank, Gaussian, GaussianMoments, Scorer, ViewEncoder, ledoit_wolf, view_plan


def write_folder(root, n_good=12, n_bad=5, size=(20, 16), seed=0, colour_one=True):
    rng = np.random.default_rng(seed)
    for cls, n in (("good", n_good), ("bad", n_bad)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
            img = Image.fromarray(a)
            if colour_one and cls == "bad" and i == 0:
                img = img.convert("RGB")  # one colour file makes the whole set RGB
            img.save(root / cls / f"{i}.png")
    return root


def folder_cfg(root, **kw):
    base = dict(dataset="folder", data_root=str(root), normal_class=["good"], val_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def no_memory(monkeypatch):
    """A memory budget of 0 bytes: every folder is decoded on access."""
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")


def assert_same_split(lazy, held):
    assert not lazy.in_memory and held.in_memory
    for part in ("train", "val", "test"):
        assert lazy.part(part).shape == held.part(part).shape
        np.testing.assert_array_equal(np.asarray(lazy.part(part)), held.part(part))
    np.testing.assert_array_equal(lazy.test_labels, held.test_labels)
    assert lazy.train_files == held.train_files and lazy.test_files == held.test_files
    assert lazy.train.files == lazy.train_files


@pytest.mark.parametrize("kw", [dict(image_size=12), dict(image_size=14, center_crop=10), dict(max_train_samples=5)],
                         ids=["resized", "resized-cropped", "native-size-subsampled"])
def test_a_folder_decoded_on_access_equals_the_folder_decoded_in_memory(tmp_path, monkeypatch, kw):
    write_folder(tmp_path)
    held = load_split(folder_cfg(tmp_path, **kw))
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    lazy = load_split(folder_cfg(tmp_path, **kw))
    assert_same_split(lazy, held)
    assert lazy.channels == 3 and "decoded from the files on access" in lazy.summary()
    assert lazy.file_decoding == held.file_decoding
    assert data_fingerprint(lazy) == data_fingerprint(held)


def test_a_loaded_folder_is_fingerprinted_once(tmp_path, no_memory, monkeypatch):
    """A report that first evaluates its run checks the fingerprint twice: the folder is read once."""
    import con2.run
    write_folder(tmp_path)
    reads = []
    keys = con2.run.image_keys
    monkeypatch.setattr(con2.run, "image_keys", lambda x: reads.append(len(x)) or keys(x))
    lazy = load_split(folder_cfg(tmp_path))
    first = data_fingerprint(lazy)
    assert data_fingerprint(lazy) == first and sum(reads) == len(lazy.train)
    again = load_split(folder_cfg(tmp_path))  # loaded anew: the files are read anew
    assert data_fingerprint(again) == first and sum(reads) == 2 * len(lazy.train)
    import dataclasses

    held = dataclasses.replace(lazy, train=np.ones((3, 8, 8, 1), np.uint8))  # in memory: hashed each time,
    before = data_fingerprint(held)  # as it may change in place
    held.train[0] ^= 1
    assert data_fingerprint(held)["hash"] != before["hash"] and data_fingerprint(held)["pixels"] != before["pixels"]


def test_the_pipeline_and_the_budget_decide_what_is_held(tmp_path, monkeypatch):
    write_folder(tmp_path)
    assert load_split(folder_cfg(tmp_path)).in_memory  # a few KiB fit any budget
    assert not load_split(folder_cfg(tmp_path, pipeline="dali")).in_memory  # DALI reads the files itself
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    tensor = load_split(folder_cfg(tmp_path, pipeline="tensor"))  # it trains from memory: train held whatever
    assert isinstance(tensor.train, np.ndarray) and not isinstance(tensor.test, np.ndarray)  # the budget, not test
    assert not load_split(folder_cfg(tmp_path, pipeline="workers")).in_memory
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "lots")
    with pytest.raises(DataError, match="CON2_MEMORY_BUDGET_MB must be a number of MiB, got 'lots'"):
        load_split(folder_cfg(tmp_path))


def test_headers_name_bad_files_and_size_mismatches_before_any_decoding(tmp_path, no_memory):
    write_folder(tmp_path, size=(20, 16))
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "good" / "odd.png")
    with pytest.raises(DataError, match=r"differ in size .* is 9x9"):
        load_split(folder_cfg(tmp_path))
    (tmp_path / "good" / "odd.png").unlink()
    (tmp_path / "good" / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot read image .*junk.png.*--skip-bad-files"):
        load_split(folder_cfg(tmp_path))
    s = load_split(folder_cfg(tmp_path, skip_bad_files=True))
    assert not s.in_memory and s.meta["skipped_files"] == 1 and s.meta["skipped_paths"][0].endswith("junk.png")
    assert all("junk" not in f for f in s.train_files + s.test_files)


def test_a_rotated_tiff_is_sized_as_it_decodes(tmp_path):
    from con2.data.decode import read_header

    a = np.zeros((16, 20, 3), np.uint8)
    a[:4, :4] = 255
    img = Image.fromarray(a)  # 20 wide, 16 high
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display: 16 wide, 20 high
    for name in ("r.tif", "r.jpg", "r.png"):
        img.save(tmp_path / name, exif=exif)
        assert read_header(tmp_path / name) == (3, (20, 16)), name  # the TIFF was swapped twice
        assert decode_image(tmp_path / name, None).shape == (20, 16, 3), name


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA"])
def test_a_tiff_is_turned_upright_by_each_orientation_as_exif_says(tmp_path, mode):
    from PIL import ImageOps

    from con2.data.decode import read_header

    plane = (np.arange(16 * 20) % 251).astype(np.uint8).reshape(16, 20)  # no symmetry to hide a wrong turn
    stored = {"L": Image.fromarray(plane), "I;16": Image.fromarray(plane.astype(np.uint16) * 257),
              "RGB": Image.fromarray(np.stack([plane] * 3, -1)),
              "RGBA": Image.fromarray(np.stack([plane] * 3 + [np.full_like(plane, 255)], -1))}[mode]
    for orientation in range(1, 9):
        exif = stored.getexif()
        exif[0x0112] = orientation
        stored.save(tmp_path / "o.tif", exif=exif)
        marked = Image.fromarray(plane)
        marked.info["exif"] = exif.tobytes()
        upright = np.asarray(ImageOps.exif_transpose(marked))  # the turn EXIF asks for, on the plain pixels
        got = decode_image(tmp_path / "o.tif", None)
        # Pillow 13 scrambled L, I;16 and RGBA turned by 90 degrees (5-8) while loading them
        np.testing.assert_array_equal(got[..., 0], upright, err_msg=f"{mode} orientation {orientation}")
        assert read_header(tmp_path / "o.tif")[1] == upright.shape


def test_a_folder_that_cannot_be_listed_is_named_not_left_out(tmp_path, monkeypatch):
    write_folder(tmp_path)
    (tmp_path / "bad" / "more").mkdir()
    real = os.scandir

    def scandir(path="."):  # as a folder without read permission (root reads every folder)
        if os.fspath(path).endswith("more"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot list the folder .*bad/more \(Permission denied\): its images "
                                        "would be left out"):
        load_split(folder_cfg(tmp_path))


def test_a_folder_of_32_bit_images_read_in_different_ways_is_refused(tmp_path):
    ramp = np.arange(16 * 20).reshape(16, 20) % 240
    for cls in ("good", "bad"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(ramp.astype(np.int32) + 20 * i, "I").save(tmp_path / cls / f"{i}.tif")  # max 239..339
    with pytest.raises(DataError, match=r"read in different ways .*0.tif as 8-bit values; .*[1-5].tif as "
                                        "16-bit values"):
        load_split(folder_cfg(tmp_path))
    for cls in ("good", "bad"):  # maxima 259..359: all read as 16-bit, so accepted
        for i in range(6):
            Image.fromarray(ramp.astype(np.int32) + 20 + 20 * i, "I").save(tmp_path / cls / f"{i}.tif")
    s = load_split(folder_cfg(tmp_path))
    assert s.train.shape[1:] == (16, 20, 1) and s.meta["wide_values"] == "16-bit values"  # DALI cannot read them


def test_folder_images_index_like_an_array_and_name_a_file_damaged_past_its_header(tmp_path):
    write_folder(tmp_path, colour_one=False)
    files = sorted(str(p) for p in (tmp_path / "good").glob("*.png"))
    imgs = FolderImages(files, (16, 20), 1)
    full = np.asarray(imgs)
    assert full.shape == imgs.shape == (12, 16, 20, 1) and full.dtype == np.uint8
    np.testing.assert_array_equal(imgs[3], full[3])
    np.testing.assert_array_equal(imgs[-1], full[-1])
    mask = np.arange(12) % 3 == 0
    for key in (slice(2, 7), np.array([5, 0, 5]), mask):
        sub = imgs[key]
        assert isinstance(sub, FolderImages)
        np.testing.assert_array_equal(np.asarray(sub), full[key])
    cropped = imgs.center_cropped(8)
    assert cropped.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(cropped), full[:, 4:12, 6:14])
    assert FolderImages(files, (16, 20), 3)[0].shape == (16, 20, 3)
    with pytest.raises(DataError, match="larger than the 20x16 px images"):
        imgs.center_cropped(18)
    data = open(files[0], "rb").read()
    open(files[0], "wb").write(data[: len(data) // 2])  # the header reads, the pixels do not
    with pytest.raises(DataError, match=r"cannot read image .*0\.png.*header was read when the folder was loaded.*remove or replace it"):
        np.asarray(imgs)
    with pytest.raises(DataError, match=r"cannot read image .*0\.png"):
        imgs[0]


def test_image_set_reads_every_layout_in_chunks_and_names_bad_input(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    want = torch.from_numpy(x).permute(0, 3, 1, 2)
    for images in (x, want.contiguous()):
        s = ImageSet(images)
        assert s.shape == (7, 3, 5, 6) and len(s) == 7
        assert torch.equal(torch.cat([c for _, c in s.chunks(3)]), want)
        assert [start for start, _ in s.chunks(3)] == [0, 3, 6]
    assert ImageSet(x[..., 0]).shape == (7, 1, 5, 6)
    assert ImageSet(x).chunk_rows(multiple=4, chunk_bytes=90 * 8) == 8  # 90 bytes per image, whole batches
    assert ImageSet(x).chunk_rows(multiple=4, chunk_bytes=1) == 4  # never below one batch
    with pytest.raises(TypeError, match="must be a uint8 tensor"):
        ImageSet([1, 2, 3])
    with pytest.raises(TypeError, match="must be uint8 in 0..255, got float32"):
        ImageSet(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"query images must be \[N, H, W, C\]"):
        ImageSet(x[0, 0], "query images")
    with pytest.raises(ValueError, match="is empty"):
        ImageSet(x[:0])
    with pytest.raises(ValueError, match="have 3 channel.*expects 1"):
        ImageSet(x).expect(channels=1)
    with pytest.raises(ValueError, match="are 6x5 px, the model was trained on 8x8 px"):
        ImageSet(x).expect(size=(8, 8))


def test_gaussian_moments_in_chunks_equal_the_one_pass_estimate():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(300, 24, generator=g, dtype=torch.float64) * 0.05 + 1.0, dim=1)
    mean, cov, shrink = ledoit_wolf(z)
    m = GaussianMoments()
    for part in torch.split(z, [1, 0, 100, 77, 122]):
        m.update(part)
    cmean, ccov, cshrink = m.ledoit_wolf()
    torch.testing.assert_close(cmean, mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(ccov, cov, rtol=1e-9, atol=1e-15)
    assert abs(cshrink - shrink) < 1e-9
    centred = z - z.mean(0)  # the sklearn formula's own sample covariance
    torch.testing.assert_close(m.ledoit_wolf()[1].trace(), torch.trace(centred.T @ centred / 300), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="at least 2 train samples, got 1"):
        Gaussian.from_moments(GaussianMoments().update(z[:1]))


def _encoder(model, views=4):
    ctx = ContextSet("flip")
    return ViewEncoder(model.encode, ViewConfig(size=12), ctx, view_plan(views, ctx), seed=3, batch_size=4)


def test_banks_and_scores_do_not_depend_on_the_chunking():
    torch.manual_seed(0)
    model = Con2Model(in_channels=1, width=4, image_size=12).eval()
    x = np.random.default_rng(1).integers(0, 256, (13, 12, 12, 1), dtype=np.uint8)
    enc = _encoder(model)
    whole = FeatureBank.build(enc, x, log=lambda s: None)
    chunked = FeatureBank.build(enc, x, log=lambda s: None, chunk_rows=4)
    assert torch.equal(whole.nnd, chunked.nnd) and torch.equal(whole.nnd_norms, chunked.nnd_norms)
    for a, b in zip(whole.gaussians, chunked.gaussians):
        torch.testing.assert_close(a.whitening, b.whitening, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-12)
    q = x[:7]
    s1, s2 = whole.score_views(enc, q), whole.score_views(enc, q, chunk_rows=2)  # float32 GEMMs of other sizes
    torch.testing.assert_close(s1["nnd"], s2["nnd"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s1["lh"], s2["lh"], rtol=1e-6, atol=1e-5)


def test_a_scorer_over_folder_images_scores_as_over_the_decoded_arrays(tmp_path, monkeypatch):
    write_folder(tmp_path, colour_one=False)
    held = load_split(folder_cfg(tmp_path, image_size=12))
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    lazy = load_split(folder_cfg(tmp_path, image_size=12))
    torch.manual_seed(0)
    model = Con2Model(in_channels=1, width=4, image_size=12).eval()
    scores = [Scorer(model, ViewConfig(size=12), ContextSet("flip"), sp.train, views=4, batch_size=4)
              .score(sp.test) for sp in (held, lazy)]
    for s in ("nnd", "lh"):
        torch.testing.assert_close(scores[0][s], scores[1][s], rtol=1e-10, atol=1e-10)


def test_auto_picks_dali_or_workers_for_a_folder_that_is_not_held(tmp_path, monkeypatch, no_memory):
    from con2.data import dali, sources

    write_folder(tmp_path, colour_one=False)
    lazy = load_split(folder_cfg(tmp_path, image_size=12))
    cfg = ViewConfig(size=12)
    kind = lambda split: type(make_batch_source("auto", split, ContextSet("flip"), cfg, 4, 0, "cpu")).__name__  # noqa: E731
    monkeypatch.setattr(dali, "available", lambda: True)
    assert kind(lazy) == "DaliBatchSource"
    gif = dataclasses.replace(lazy, train_files=lazy.train_files[:-1] + ["x.gif"])  # DALI cannot decode GIF
    assert resolve_pipeline("auto", gif, "cpu") == "workers"
    # 32-bit images con2 reads by their range: DALI read float 0..255 as fractions (white) and failed on int32
    for read_as, pipeline in (("8-bit values", "workers"), ("16-bit values", "workers"), ("fractions of 1", "dali")):
        wide = dataclasses.replace(lazy, meta={**lazy.meta, "wide_values": read_as})
        assert resolve_pipeline("auto", wide, "cpu") == pipeline, read_as
    with pytest.raises(ValueError, match="read as 8-bit values, which DALI's decoder does not do; use --pipeline workers"):
        make_batch_source("dali", dataclasses.replace(lazy, meta={**lazy.meta, "wide_values": "8-bit values"}),
                          ContextSet("flip"), cfg, 4, 0, "cpu")
    monkeypatch.setattr(dali, "available", lambda: False)
    assert kind(lazy) == "WorkerBatchSource"
    x = np.zeros((8, 12, 12, 1), np.uint8)
    arrays = OneClassSplit("a", x, x, np.zeros(8, np.int64), x[:0])
    assert kind(arrays) == "TensorBatchSource"
    monkeypatch.setattr(sources, "fits_on_device", lambda nbytes, device: False)  # a GPU too small for them
    assert kind(arrays) == "WorkerBatchSource"


def test_workers_train_from_folder_images_as_from_the_decoded_arrays(tmp_path, monkeypatch):
    write_folder(tmp_path, colour_one=False)
    held = load_split(folder_cfg(tmp_path, image_size=12))
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    lazy = load_split(folder_cfg(tmp_path, image_size=12))
    batches = []
    for sp in (held, lazy):
        src = make_batch_source("workers", sp, ContextSet("flip"), ViewConfig(size=12), 4, 0, "cpu")
        src.num_workers = 0
        batches.append([v for _, v in src.batches_from(1)])
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(*batches):
        assert torch.equal(a, b)


def test_cli_trains_and_evaluates_a_folder_larger_than_the_budget(tmp_path, monkeypatch, capsys):
    from con2.cli.main import main
    from con2.run import run_finished

    write_folder(tmp_path / "data", n_good=20, colour_one=False)
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")
    run = tmp_path / "run"
    main(["train", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--normal-class", "good",
          "--image-size", "12", "--pipeline", "workers", "--epochs", "1", "--width", "4", "--batch-size", "8",
          "--device", "cpu", "--out", str(run)])
    assert run_finished(run)
    assert "decoded from the files on access" in capsys.readouterr().out  # the split summary
    main(["evaluate", "--run", str(run), "--views", "2", "--quiet"])
    assert (run / "scores.csv").exists()


def test_info_names_the_memory_budget(monkeypatch):
    from con2.info import info_text

    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "1536")
    assert "image folders held in memory up to 1,536 MiB decoded (CON2_MEMORY_BUDGET_MB)" in info_text()


def test_a_resumed_auto_run_keeps_its_pipeline_when_the_host_has_less_memory(tmp_path, monkeypatch):
    from con2.run import load_run
    from con2.train import train

    write_folder(tmp_path / "data", n_good=20, colour_one=False)
    cfg = lambda out: folder_cfg(tmp_path / "data", image_size=12, epochs=2, batch_size=4, width=4,  # noqa: E731
                                 out=str(tmp_path / out), device="cpu", checkpoint_every=1)
    straight = train(cfg("a"), progress=False)
    train(cfg("b"), progress=False, stop_after_steps=3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["pipeline"] == "tensor"
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")  # resumed where the folder no longer fits
    monkeypatch.setattr("con2.data.dali.available", lambda: True)  # auto would now pick DALI
    train(cfg("b"), progress=False, resume=True)
    a, b = load_run(straight)[1].state_dict(), load_run(tmp_path / "b")[1].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_folder_images_without_resize_refuse_a_file_that_changed_size(tmp_path, no_memory):
    write_folder(tmp_path, colour_one=False)
    split = load_split(folder_cfg(tmp_path))
    assert not split.train.resize and split.train.shape[1:] == (16, 20, 1)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(split.train.files[0])
    with pytest.raises(DataError, match=r"decodes to 30x30 px with 1 channel\(s\), but the folder's images are 20x16"):
        split.train[0]
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(split.train.files[0])
    with pytest.raises(DataError, match="with 3 channel.*with 1"):
        split.train[0]


def test_each_part_is_held_while_it_fits_train_first(tmp_path, monkeypatch):
    write_folder(tmp_path, colour_one=False)  # image_size 12, grey: 144 bytes an image
    held = load_split(folder_cfg(tmp_path, image_size=12))
    n = {p: len(held.part(p)) for p in ("train", "val", "test")}
    assert n == {"train": 6, "val": 2, "test": 9}
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", str((8 * 144 + 100) / 2**20))  # train + val, not test
    mixed = load_split(folder_cfg(tmp_path, image_size=12))
    assert [type(mixed.part(p)).__name__ for p in ("train", "val", "test")] == ["ndarray", "ndarray", "FolderImages"]
    for p in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(mixed.part(p)), held.part(p))
    assert "; test decoded from the files on access" in mixed.summary() and "train decoded" not in mixed.summary()
    assert resolve_pipeline("auto", mixed, "cpu") == "tensor"  # the training images are in memory
    monkeypatch.delenv("CON2_MEMORY_BUDGET_MB")
    dali_split = load_split(folder_cfg(tmp_path, image_size=12, pipeline="dali"))
    assert [type(dali_split.part(p)).__name__ for p in ("train", "val", "test")] == ["FolderImages", "ndarray", "ndarray"]


def test_a_held_part_drops_a_file_damaged_past_its_header_and_keeps_the_others_in_order(tmp_path):
    write_folder(tmp_path, n_good=12, n_bad=5)
    clean = load_split(folder_cfg(tmp_path))
    victim = clean.train_files[3]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])  # the header reads, the pixels do not
    with pytest.raises(DataError, match=r"cannot read image .*\.png.*use --skip-bad-files"):
        load_split(folder_cfg(tmp_path))
    s = load_split(folder_cfg(tmp_path, skip_bad_files=True))
    assert s.in_memory and s.meta["skipped_paths"] == [victim]
    assert s.train_files == [f for f in clean.train_files if f != victim]
    np.testing.assert_array_equal(s.train, np.delete(clean.train, 3, axis=0))  # the rows after it moved up
    np.testing.assert_array_equal(s.test, clean.test)


def test_a_folder_whose_only_colour_file_is_skipped_is_grayscale(tmp_path):
    write_folder(tmp_path)  # bad/0.png is the only RGB file
    colour = str(tmp_path / "bad" / "0.png")
    clean = load_split(folder_cfg(tmp_path))
    assert clean.channels == 3
    data = open(colour, "rb").read()
    open(colour, "wb").write(data[: len(data) // 2])
    s = load_split(folder_cfg(tmp_path, skip_bad_files=True))
    assert s.in_memory and s.meta["skipped_paths"] == [colour] and s.channels == 1 and s.test.shape[-1] == 1
    assert colour not in s.test_files
    np.testing.assert_array_equal(s.train, clean.train[..., :1])  # gray files: every channel was the gray one


def test_a_held_folder_is_decoded_once_into_its_array(tmp_path):
    """Decoding into memory holds the images once (not a list of images and then their stack)."""
    import tracemalloc

    write_folder(tmp_path, n_good=300, n_bad=2, size=(128, 128), colour_one=False)
    tracemalloc.start()
    try:
        s = load_split(folder_cfg(tmp_path, val_fraction=0.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = sum(s.part(p).nbytes for p in ("train", "test"))
    assert held == 302 * 128 * 128
    assert peak < 1.25 * held, f"peak {peak / held:.2f} x the decoded images"


def test_load_decodes_a_repeated_file_into_every_row_it_fills(tmp_path):
    write_folder(tmp_path, colour_one=False)
    imgs = FolderImages(sorted(str(p) for p in (tmp_path / "good").glob("*.png")), (16, 20), 1)
    picked = imgs[np.array([0, 3, 0, 3])]
    loaded, skipped = picked.load()
    assert skipped == [] and loaded.shape == (4, 16, 20, 1)
    want = [decode_image(imgs.files[i], (16, 20)) for i in (0, 3, 0, 3)]  # each row its own file, decoded alone
    np.testing.assert_array_equal(loaded, np.stack(want))
    assert not np.array_equal(want[0], want[1])
    np.testing.assert_array_equal(np.asarray(picked), loaded)


def test_a_damaged_file_in_a_part_decoded_on_access_does_not_fail_the_dark_check(tmp_path, no_memory):
    write_folder(tmp_path, n_good=12, n_bad=5)
    clean = load_split(folder_cfg(tmp_path, pipeline="workers"))
    victim = clean.test_files[0]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])  # the header reads, the pixels do not
    s = load_split(folder_cfg(tmp_path, pipeline="workers", skip_bad_files=True))  # loads as before the check
    assert not s.in_memory and victim in s.test_files
    with pytest.raises(DataError, match="header was read when the folder was loaded"):
        np.asarray(s.test)  # it fails where it is used, naming the file


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-5", "1e400"])
def test_a_memory_budget_that_is_not_a_finite_number_of_mib_at_least_0_is_named(tmp_path, monkeypatch, value):
    write_folder(tmp_path)
    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", value)
    with pytest.raises(DataError, match=rf"CON2_MEMORY_BUDGET_MB must be a number of MiB, got '{value}' \(finite"):
        load_split(folder_cfg(tmp_path))


def test_a_dangling_symlink_is_named_or_skipped_as_an_unreadable_file(tmp_path):
    write_folder(tmp_path, colour_one=False)
    ghost = tmp_path / "good" / "ghost.png"
    ghost.symlink_to(tmp_path / "gone.png")
    (tmp_path / "good" / ".cache").mkdir()
    (tmp_path / "good" / ".cache" / "0.png").symlink_to(tmp_path / "gone.png")  # hidden: ignored as before
    with pytest.raises(DataError, match=r"cannot read image .*ghost\.png: a dangling symlink .*gone\.png.*"
                                        r"--skip-bad-files"):
        load_split(folder_cfg(tmp_path))
    s = load_split(folder_cfg(tmp_path, skip_bad_files=True))
    assert s.meta["skipped_paths"] == [str(ghost)] and "ghost.png" in s.summary()
    assert len(s.train) + len(s.val) + int((s.test_labels == 0).sum()) == 12


def test_a_fifo_named_like_an_image_is_named_or_skipped_not_waited_on(tmp_path):
    """list_images passed it over without a word (an image the folder lacks), and reading it would
    wait for a writer forever."""
    write_folder(tmp_path, colour_one=False)
    fifo = tmp_path / "good" / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"cannot read image .*pipe\.png: not a regular file .*--skip-bad-files"):
        load_split(folder_cfg(tmp_path))
    s = load_split(folder_cfg(tmp_path, skip_bad_files=True))
    assert s.meta["skipped_paths"] == [str(fifo)]
