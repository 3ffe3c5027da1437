"""Data-set loaders: real shared files when present, small fake files and folders otherwise."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from con2.config import TrainConfig
from con2.data.datasets import CIFAR100_FINE_TO_COARSE, CIFAR100_SUPERCLASSES, DataError, load_split


def shared_data() -> Path:
    """../shared/data beside the checkout, or $CON2_SHARED_DATA."""
    env = os.environ.get("CON2_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def need(name: str) -> Path:
    path = shared_data() / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def check_split(s, n_train, n_val, n_test, n_anom):
    assert (len(s.train), len(s.val), len(s.test), int(s.test_labels.sum())) == (n_train, n_val, n_test, n_anom)
    for part in (s.train, s.val, s.test):
        assert part.dtype == np.uint8 and part.ndim == 4
    assert len(s.test_classes) == len(s.test)


# --------------------------------------------------------------------------- real files

def test_breastmnist_official_split():
    need("breastmnist.npz")
    s = load_split(cfg(dataset="breast", data_root=str(shared_data())))
    check_split(s, 399, 57, 156, 42)
    assert s.normal_classes == (1,) and s.train.shape[1:] == (28, 28, 1)
    assert set(s.test_classes[s.test_labels == 1]) == {0}


def test_breastmnist_64():
    need("breastmnist_64.npz")
    s = load_split(cfg(dataset="breast", resolution=64, data_root=str(shared_data())))
    check_split(s, 399, 57, 156, 42)
    assert s.train.shape[1:] == (64, 64, 1)


def test_pneumoniamnist_official_split():
    need("pneumoniamnist.npz")
    s = load_split(cfg(dataset="pneumonia", data_root=str(shared_data())))
    check_split(s, 1214, 135, 624, 390)
    assert s.normal_classes == (0,)


def test_br35h_seeded_split():
    path = need("br35h_64.npz")
    # METHOD section 10: 1000 normals for training, other 500 normals + 1500 tumours for testing.
    s = load_split(cfg(dataset="npz", data_file=str(path), normal_class=["0"], n_train=1000))
    check_split(s, 1000, 0, 2000, 1500)
    assert s.train.shape[1:] == (64, 64, 1)
    s2 = load_split(cfg(dataset="npz", data_file=str(path), normal_class=["0"]))  # test_fraction 0.3
    check_split(s2, 1050, 0, 1950, 1500)
    s3 = load_split(cfg(dataset="npz", data_file=str(path), normal_class=["0"], n_train=1000))
    assert np.array_equal(s.train, s3.train)  # seeded: reproducible


def test_cifar10_npz_class0():
    need("cifar10.npz")
    s = load_split(cfg(dataset="cifar10", normal_class=["airplane"], data_root=str(shared_data())))
    check_split(s, 5000, 0, 10000, 9000)
    assert s.train.shape[1:] == (32, 32, 3) and s.normal_classes == (0,)


# --------------------------------------------------------------------------- fake MedMNIST files

def write_medmnist(path: Path, n_classes: int, size=28, channels=1, n=(40, 10, 20), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, size, size) + ((channels,) if channels == 3 else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % n_classes).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_oct_default_normal_class(tmp_path):
    a = write_medmnist(tmp_path / "octmnist.npz", 4)
    s = load_split(cfg(dataset="oct", data_root=str(tmp_path)))
    assert s.normal_classes == (3,)
    check_split(s, 10, 2, 20, 15)
    assert np.array_equal(s.train, a["train_images"][3::4, ..., None])
    # score files name each row of the official file (they had no file column for MedMNIST)
    assert s.sources["train"][:2] == ["octmnist.npz:train_images[3]", "octmnist.npz:train_images[7]"]
    assert s.sources["test"] == [f"octmnist.npz:test_images[{i}]" for i in range(20)]


def test_derma_needs_normal_class_and_reads_64(tmp_path):
    write_medmnist(tmp_path / "dermamnist_64.npz", 7, size=64, channels=3, n=(70, 14, 21))
    with pytest.raises(DataError, match="needs --normal-class"):
        load_split(cfg(dataset="derma", data_root=str(tmp_path), resolution=64))
    s = load_split(cfg(dataset="derma", data_root=str(tmp_path), resolution=64, normal_class=["melanocytic nevi"]))
    assert s.normal_classes == (5,) and s.train.shape == (10, 64, 64, 3)
    check_split(s, 10, 2, 21, 18)


def test_blood_by_index_with_resize(tmp_path):
    write_medmnist(tmp_path / "bloodmnist.npz", 8, channels=3, n=(80, 16, 24))
    s = load_split(cfg(dataset="blood", data_root=str(tmp_path), normal_class=["6"], image_size=32))
    assert s.normal_classes == (6,) and s.train.shape == (10, 32, 32, 3) and s.test.shape == (24, 32, 32, 3)
    with pytest.raises(DataError, match="unknown normal class 'nope'"):
        load_split(cfg(dataset="blood", data_root=str(tmp_path), normal_class=["nope"]))


def test_medmnist_missing_file_names_path(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # where it is installed, con2 would download the file
    with pytest.raises(DataError, match=r"breastmnist\.npz"):
        load_split(cfg(dataset="breast", data_root=str(tmp_path)))
    write_medmnist(tmp_path / "breastmnist.npz", 2)  # the file given as the folder: not ".../x.npz/x.npz"
    with pytest.raises(DataError, match=r"--data-root .*breastmnist\.npz is a file; give the folder it is in"):
        load_split(cfg(dataset="breast", data_root=str(tmp_path / "breastmnist.npz")))


def test_a_failed_medmnist_download_says_why(tmp_path, monkeypatch):
    """With medmnist installed, a failed download (no network, a read-only folder) was swallowed:
    the error only said to install medmnist."""
    import sys
    import types

    class BreastMNIST:
        def __init__(self, **kwargs):
            raise ConnectionError("no route to zenodo.org")

    fake = types.SimpleNamespace(INFO={"breastmnist": {"python_class": "BreastMNIST"}}, BreastMNIST=BreastMNIST)
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    with pytest.raises(DataError, match=r"breastmnist\.npz.*medmnist could not download it "
                                        r"\(ConnectionError: no route to zenodo.org\)"):
        load_split(cfg(dataset="breast", data_root=str(tmp_path)))


def test_max_train_samples(tmp_path):
    write_medmnist(tmp_path / "octmnist.npz", 4)
    s = load_split(cfg(dataset="oct", data_root=str(tmp_path), max_train_samples=4))
    assert len(s.train) == 4


# --------------------------------------------------------------------------- npz / cifar

def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(DataError, match="needs keys"):
        load_split(cfg(dataset="npz", data_file=str(tmp_path / "x.npz"), normal_class=["0"]))
    with pytest.raises(DataError, match="not found"):
        load_split(cfg(dataset="npz", data_file=str(tmp_path / "absent.npz"), normal_class=["0"]))


def test_npz_normal_class_without_samples(tmp_path):
    imgs = np.zeros((6, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", train_images=imgs, train_labels=np.zeros(6, np.uint8),
             test_images=imgs, test_labels=np.array([0, 1, 2, 0, 1, 2], np.uint8))
    with pytest.raises(DataError, match="'2' has no training samples.*available"):
        load_split(cfg(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["2"]))
    s = load_split(cfg(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0"]))
    check_split(s, 6, 0, 6, 4)
    assert s.val.shape == (0, 8, 8, 1)


def test_resize_and_crop_reach_an_empty_val_split(tmp_path):
    # images + labels only, seeded split without val (the BR35H file): the paper's 256 -> 224
    imgs = np.random.RandomState(0).randint(0, 256, (12, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.array([0] * 8 + [1] * 4, np.uint8))
    s = load_split(cfg(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0"], image_size=32,
                       center_crop=28))
    assert len(s.val) == 0 and len(s.train) > 0
    for part in (s.train, s.val, s.test):
        assert part.shape[1:] == (28, 28, 1)


def test_cifar_npz_fake_and_missing(tmp_path):
    rng = np.random.default_rng(0)
    fine = np.arange(200) % 100
    np.savez(tmp_path / "cifar100.npz", train_images=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
             train_labels=fine, test_images=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), test_labels=fine)
    s = load_split(cfg(dataset="cifar100", data_root=str(tmp_path), normal_class=["4"]))
    check_split(s, 10, 0, 200, 190)  # 5 fine classes x 2 images
    assert set(s.test_classes) == set(range(20))
    # the score files name an npz's rows (its order need not be the official files'; named by its filenames array)
    assert s.sources["test"][:2] == ["cifar100.npz:test_images[0]", "cifar100.npz:test_images[1]"]
    np.savez(tmp_path / "cifar100.npz", **dict(np.load(tmp_path / "cifar100.npz")),
             test_filenames=np.array([f"img{i}.png" for i in range(200)]))
    s = load_split(cfg(dataset="cifar100", data_root=str(tmp_path), normal_class=["4"]))
    assert s.sources["test"][:2] == ["cifar100.npz:img0.png", "cifar100.npz:img1.png"]
    train_rows = [int(r.split("[")[1][:-1]) for r in s.sources["train"]]
    assert (CIFAR100_FINE_TO_COARSE[fine[train_rows]] == 4).all()  # each name in step with its image
    with pytest.raises(DataError, match="cifar10 not found"):
        load_split(cfg(dataset="cifar10", data_root=str(tmp_path), normal_class=["0"]))


def test_cifar100_superclass_table():
    assert len(CIFAR100_FINE_TO_COARSE) == 100 and len(CIFAR100_SUPERCLASSES) == 20
    assert np.array_equal(np.bincount(CIFAR100_FINE_TO_COARSE, minlength=20), np.full(20, 5))
    # Spot checks: apple -> fruit_and_vegetables, beaver -> aquatic_mammals, tractor -> vehicles_2.
    assert CIFAR100_SUPERCLASSES[CIFAR100_FINE_TO_COARSE[0]] == "fruit_and_vegetables"
    assert CIFAR100_SUPERCLASSES[CIFAR100_FINE_TO_COARSE[4]] == "aquatic_mammals"
    assert CIFAR100_SUPERCLASSES[CIFAR100_FINE_TO_COARSE[89]] == "vehicles_2"


# --------------------------------------------------------------------------- digits

def test_digits_default():
    s = load_split(cfg(dataset="digits"))
    assert s.normal_classes == (8,) and s.train.shape[1:] == (16, 16, 1)
    assert 0 < len(s.val) < len(s.train) and s.test_labels.mean() > 0.8
    assert load_split(cfg(dataset="digits", image_size=8)).train.shape[1:] == (8, 8, 1)


def test_resize_then_center_crop_is_the_papers_preprocessing():
    import torch
    from torchvision.transforms import v2

    plain = load_split(cfg(dataset="digits", image_size=32))
    s = load_split(cfg(dataset="digits", image_size=32, center_crop=28))
    assert s.train.shape[1:] == (28, 28, 1) and s.test.shape[1:] == (28, 28, 1) and len(s.val) == len(plain.val)
    expected = v2.CenterCrop(28)(torch.from_numpy(plain.test).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(s.test, expected)
    odd = load_split(cfg(dataset="digits", image_size=31, center_crop=28)).train  # torchvision's rounding
    ref = v2.CenterCrop(28)(torch.from_numpy(load_split(cfg(dataset="digits", image_size=31)).train).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(odd, ref.permute(0, 2, 3, 1).numpy())
    with pytest.raises(DataError, match="larger than the 16x16 px images"):
        load_split(cfg(dataset="digits", center_crop=20))
    with pytest.raises(ValueError, match="larger than --image-size"):
        cfg(dataset="digits", image_size=20, center_crop=24).validate()


# --------------------------------------------------------------------------- folders

def save(path: Path, size=(20, 20), mode="L", fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)


def test_folder_with_train_test_tree_mixed_modes(tmp_path):
    for i in range(4):
        save(tmp_path / "train" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "train" / "bad" / f"{i}.png", seed=i)  # anomalies in train are ignored
    for i in range(3):
        save(tmp_path / "test" / "good" / f"{i}.jpg", mode="RGB", seed=i)
        save(tmp_path / "test" / "bad" / f"{i}.png", seed=10 + i)
    for i in range(2):
        save(tmp_path / "val" / "good" / f"{i}.png", seed=20 + i)
    (tmp_path / "test" / "bad" / "notes.txt").write_text("not an image")
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"]))
    check_split(s, 4, 2, 6, 3)
    assert s.channels == 3  # one RGB image makes the whole set RGB
    assert len(s.train_files) == 4 and len(s.test_files) == 6
    assert all("/train/good/" in f for f in s.train_files)
    assert s.class_names == {0: "bad", 1: "good"} and s.meta["skipped_files"] == 0
    # what a split tree does not read is named (a Kaggle-style valid/ folder, images loose in test/)
    (tmp_path / "val").rename(tmp_path / "valid")
    save(tmp_path / "test" / "loose.png", seed=30)
    with pytest.warns(UserWarning) as caught:
        s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"]))
    said = [str(w.message) for w in caught]
    assert any("valid/ not read: the split folders are train/, val/ and test/" in m for m in said)
    assert any("1 image(s) directly in a split folder are not read (test/loose.png)" in m for m in said)
    assert len(s.val) == 0 and len(s.test) == 6
    (tmp_path / "valid").rename(tmp_path / "val")
    (tmp_path / "test" / "loose.png").unlink()
    (tmp_path / "test" / "good").rename(tmp_path / "test" / "Good")  # every test normal would be an anomaly
    with pytest.warns(UserWarning, match="class folders 'Good' and 'good' differ only in case"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"]))


def test_folder_seeded_split_grayscale_resized(tmp_path):
    for i in range(10):
        save(tmp_path / "normal" / f"{i}.png", size=(20 + i, 16), seed=i)
    for i in range(5):
        save(tmp_path / "tumour" / f"{i}.jpeg", size=(30, 30), fmt="JPEG", seed=i)
    with pytest.raises(DataError, match="differ in size"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["normal"]))
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["normal"], image_size=12))
    check_split(s, 7, 0, 8, 5)  # 30 % of 10 normals to test, all tumours to test
    assert s.train.shape == (7, 12, 12, 1)
    assert not set(s.train_files) & set(s.test_files)
    with pytest.raises(DataError, match="no class folder 'x'.*normal, tumour"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["x"], image_size=12))


def test_folder_corrupt_image(tmp_path):
    for i in range(5):
        save(tmp_path / "a" / f"{i}.png", seed=i)
        save(tmp_path / "b" / f"{i}.png", seed=i)
    broken = tmp_path / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["a"]))
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["a"], skip_bad_files=True))
    assert s.meta["skipped_files"] == 1 and s.meta["skipped_paths"] == [str(broken)]
    assert len(s.train) + int((s.test_labels == 0).sum()) == 5
    assert str(broken) not in s.train_files + s.test_files
    assert "skipped 1 unreadable file(s), first: " in s.summary() and "broken.png" in s.summary()
    assert "note: the test split needs" not in s.summary()
    # why it was skipped, after its name; and the first by name, not by when it failed
    (tmp_path / "a" / "0-empty.png").write_bytes(b"")
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["a"], skip_bad_files=True))
    assert s.meta["skipped_paths"] == [str(tmp_path / "a" / "0-empty.png"), str(broken)]
    first = s.summary().split("first: ")[1]
    assert first.startswith(f"{tmp_path / 'a' / '0-empty.png'}: ") and "Error" in first.split(";")[0]
    s.test_labels = np.zeros_like(s.test_labels)  # a test split without anomalies is said up front
    assert "note: the test split needs normal and anomalous images" in s.summary()


def test_npz_labels_that_do_not_fit_the_images_fail_clearly(tmp_path):
    imgs = np.zeros((10, 8, 8), np.uint8)
    npz = lambda name, **arrays: np.savez(tmp_path / name, **arrays) or str(tmp_path / name)  # noqa: E731
    cases = [
        (npz("short.npz", images=imgs, labels=np.zeros(8, np.int64)), "10 images but 8 labels"),
        (npz("given.npz", train_images=imgs, train_labels=np.zeros(9, np.int64), test_images=imgs,
             test_labels=np.zeros(10, np.int64)), "train split: 10 images but 9 labels"),
        (npz("nan.npz", images=imgs, labels=np.array([0, 1, np.nan] + [0] * 7)), "whole numbers.*nan"),
        (npz("frac.npz", images=imgs, labels=np.array([0, 1.5] + [0] * 8)), "whole numbers"),
    ]
    for path, match in cases:
        with pytest.raises(DataError, match=match):
            load_split(cfg(dataset="npz", data_file=path, normal_class=["0"]))
    (tmp_path / "junk.npz").write_bytes(b"\x80\x04 this is a pickle, not a zip")
    with pytest.raises(DataError, match="not an .npz file"):
        load_split(cfg(dataset="npz", data_file=str(tmp_path / "junk.npz"), normal_class=["0"]))


def test_decode_image_reads_high_bit_depth_and_float_by_their_range(tmp_path):
    from con2.data.decode import decode_image

    ramp = np.arange(0, 256, dtype=np.float64).reshape(16, 16)
    Image.fromarray((ramp / 255.0).astype(np.float32), "F").save(tmp_path / "unit.tif")  # fractions of 1
    Image.fromarray(ramp.astype(np.int32), "I").save(tmp_path / "eight.tif")  # 8-bit values in 32-bit ints
    Image.fromarray((ramp * 257).astype(np.int32), "I").save(tmp_path / "sixteen.tif")  # 16-bit values
    for name in ("unit.tif", "eight.tif", "sixteen.tif"):
        np.testing.assert_array_equal(decode_image(tmp_path / name, None)[..., 0], ramp.astype(np.uint8), err_msg=name)
    Image.fromarray((ramp * 1000).astype(np.float32), "F").save(tmp_path / "wide.tif")
    Image.fromarray((ramp - 10).astype(np.float32), "F").save(tmp_path / "negative.tif")
    Image.fromarray(np.full((16, 16), np.nan, np.float32), "F").save(tmp_path / "nan.tif")
    for name, match in (("wide.tif", "outside 0..1 or 0..255, the ranges con2 reads float"), ("negative.tif", "negative"), ("nan.tif", "NaN")):
        with pytest.raises(DataError, match=match):
            decode_image(tmp_path / name, None)


def test_decode_image_turns_photos_upright_by_exif_as_dali_does(tmp_path):
    from con2.data.decode import decode_image

    a = np.zeros((8, 24, 3), np.uint8)
    a[:, :4] = 255  # a bright left edge
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rotated.jpg", None)
    assert out.shape == (24, 8, 3)  # upright: tall, its bright edge now on top
    assert out[:4].mean() > 200 and out[8:].mean() < 50


def _late_exif_png(a: np.ndarray, path: Path, orientation: int = 6) -> None:
    """A PNG whose eXIf chunk (rotate 90 degrees) follows its pixel data, as some tools write it."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    data = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    iend = data.rfind(b"IEND") - 4
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:iend] + chunk + data[iend:])


@pytest.mark.parametrize("budget", [None, "0"], ids=["held", "decoded-on-access"])
def test_a_png_rotated_by_an_exif_chunk_after_its_pixels_is_sized_upright(tmp_path, monkeypatch, budget):
    from con2.data.decode import decode_image, read_header

    rng = np.random.default_rng(0)
    for cls, n in (("good", 6), ("bad", 3)):
        for i in range(n):
            _late_exif_png(rng.integers(0, 256, (16, 20), dtype=np.uint8), tmp_path / cls / f"{i}.png")
    first = tmp_path / "good" / "0.png"
    with Image.open(first) as img:
        assert "exif" not in img.info  # the header alone does not show it
    assert read_header(first) == (1, (20, 16)) and decode_image(first, None).shape == (20, 16, 1)
    if budget is not None:
        monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", budget)
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"]))
    assert s.train.shape[1:] == (20, 16, 1) and np.asarray(s.test).shape[1:] == (20, 16, 1)
    # a file that decodes to another size than its header said is named, never skipped as unreadable
    from con2.data.images import FolderImages

    Image.fromarray(rng.integers(0, 256, (16, 20), dtype=np.uint8)).save(first)  # 20 wide, 16 high
    with pytest.raises(DataError, match=r"0\.png decodes to 20x16 px.*folder's images are 16x20.*--image-size"):
        FolderImages([str(first)], (20, 16), 1, resize=False).load(skip_bad=True)


def test_folder_ignores_hidden_folders_and_names_half_trees_and_skipped_normals(tmp_path):
    for i in range(4):
        save(tmp_path / "flat" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "flat" / "bad" / f"{i}.png", seed=10 + i)
    save(tmp_path / "flat" / "good" / ".ipynb_checkpoints" / "0-checkpoint.png", seed=0)
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path / "flat"), normal_class=["good"]))
    assert len(s.train) + int((s.test_labels == 0).sum()) == 4
    assert not any(".ipynb_checkpoints" in f for f in s.train_files + s.test_files)

    save(tmp_path / "half" / "train" / "good" / "0.png")
    save(tmp_path / "half" / "val" / "good" / "0.png")
    with pytest.raises(DataError, match="has train/ but no test/"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "half"), normal_class=["good"]))

    for i in range(3):
        (tmp_path / "unreadable" / "good").mkdir(parents=True, exist_ok=True)
        (tmp_path / "unreadable" / "good" / f"{i}.png").write_bytes(b"not a png")
        save(tmp_path / "unreadable" / "bad" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match=r"no readable training image of normal class good \(3 unreadable"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "unreadable"), normal_class=["good"],
                       skip_bad_files=True))


def test_folder_of_nearly_black_images_warns(tmp_path):
    for i, cls in enumerate(("good", "good", "good", "bad")):
        a = (np.random.default_rng(i).integers(0, 4096, (12, 12))).astype(np.uint16)  # 12-bit in 16-bit PNGs
        Image.fromarray(a).save(_mk(tmp_path / cls) / f"{i}.png")
    with pytest.warns(UserWarning, match="every image is darker.*12-bit data stored in 16-bit"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"]))
    dark_sample = r"every image checked \(2 held in memory, 2 of 2 decoded on access\) is darker"
    with pytest.warns(UserWarning, match=dark_sample):  # the train part decoded on access
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["good"], pipeline="dali"))


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- bad input, refused at load time

def given_npz(path: Path, train, test, val=None, train_labels=None, test_labels=None):
    arrays = dict(train_images=train, test_images=test,
                  train_labels=np.zeros(len(train), np.uint8) if train_labels is None else train_labels,
                  test_labels=np.arange(len(test)) % 2 if test_labels is None else test_labels)
    if val is not None:
        arrays.update(val_images=val, val_labels=np.zeros(len(val), np.uint8))
    np.savez(path, **arrays)
    return str(path)


def test_parts_of_other_sizes_or_channels_are_refused_before_training(tmp_path):
    gray = lambda n, s: np.zeros((n, s, s), np.uint8)  # noqa: E731
    rgb = lambda n, s: np.zeros((n, s, s, 3), np.uint8)  # noqa: E731
    load = lambda path, **kw: load_split(cfg(dataset="npz", data_file=path, normal_class=["0"], **kw))  # noqa: E731
    path = given_npz(tmp_path / "test20.npz", gray(6, 16), gray(6, 20))
    with pytest.raises(DataError, match=r"test20\.npz: the test images are 20x20 px with 1 channel\(s\), the train "
                                        r"images 16x16 px with 1: .*--image-size"):
        load(path)
    assert load(path, image_size=16).test.shape[1:] == (16, 16, 1)  # resizing makes them agree
    with pytest.raises(DataError, match=r"rgb\.npz: the test images are 16x16 px with 3 channel.*same channel count"):
        load(given_npz(tmp_path / "rgb.npz", gray(6, 16), rgb(6, 16)), image_size=16)
    with pytest.raises(DataError, match=r"val20\.npz: the val images are 20x20"):
        load(given_npz(tmp_path / "val20.npz", gray(6, 16), gray(6, 16), val=gray(3, 20)))
    a = write_medmnist(tmp_path / "octmnist.npz", 4)
    np.savez(tmp_path / "octmnist.npz", **{**a, "test_images": a["test_images"][:, :20, :20]})
    with pytest.raises(DataError, match=r"octmnist\.npz: the test images are 20x20"):
        load_split(cfg(dataset="oct", data_root=str(tmp_path)))


def test_seeded_split_options_on_data_with_its_own_split_are_refused(tmp_path):
    write_medmnist(tmp_path / "octmnist.npz", 4)
    oct_ = lambda **kw: load_split(cfg(dataset="oct", data_root=str(tmp_path), **kw))  # noqa: E731
    for kw, flag in ((dict(n_train=5), "--n-train 5"), (dict(test_fraction=0.2), "--test-fraction 0.2"),
                     (dict(val_fraction=0.1), "--val-fraction 0.1"), (dict(split_seed=3), "--split-seed 3")):
        with pytest.raises(DataError, match=f"{flag} cannot apply: octmnist has its official train/val/test split"):
            oct_(**kw)
    check_split(oct_(test_fraction=0.3, val_fraction=0.0), 10, 2, 20, 15)  # the defaults, set: fine
    picks = [oct_(split_seed=s, max_train_samples=4).train for s in (0, 1, 2)]  # the seed picks the subsample
    assert all(len(t) == 4 for t in picks) and not all(np.array_equal(picks[0], t) for t in picks[1:])
    path = given_npz(tmp_path / "given.npz", np.zeros((6, 8, 8), np.uint8), np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"--n-train 3 cannot apply: .*given\.npz has its own split"):
        load_split(cfg(dataset="npz", data_file=path, normal_class=["0"], n_train=3))
    for i in range(3):
        save(tmp_path / "tree" / "train" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "tree" / "test" / "good" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match=r"--test-fraction 0.5 cannot apply: .*tree has its own split"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "tree"), normal_class=["good"], test_fraction=0.5))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar10.npz", train_images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             train_labels=np.arange(20) % 10, test_images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             test_labels=np.arange(20) % 10)
    with pytest.raises(DataError, match="--val-fraction 0.2 cannot apply: cifar10 has its official train/test"):
        load_split(cfg(dataset="cifar10", data_root=str(tmp_path), normal_class=["0"], val_fraction=0.2))
    # digits: its per-class split takes the fractions, not --n-train
    with pytest.raises(DataError, match="--n-train 50 does not apply to --dataset digits"):
        load_split(cfg(dataset="digits", n_train=50))
    assert len(load_split(cfg(dataset="digits", test_fraction=0.5)).test) > len(load_split(cfg(dataset="digits")).test)
    with pytest.raises(DataError, match="--resolution picks a MedMNIST file"):
        load_split(cfg(dataset="npz", data_file=path, normal_class=["0"], resolution=64))
    # it used to do nothing on data read whole from one file (or from none)
    for data in ({"dataset": "digits"}, {"dataset": "npz", "data_file": path, "normal_class": ["0"]}):
        with pytest.raises(DataError, match=f"--skip-bad-files .* --dataset {data['dataset']} has no image files"):
            load_split(cfg(**data, skip_bad_files=True))


def test_a_file_given_for_a_named_data_set_must_look_like_it(tmp_path):
    rng = np.random.default_rng(0)
    breast = write_medmnist(tmp_path / "breast.npz", 2, n=(546, 78, 156))  # the official breastmnist sizes
    with pytest.raises(DataError, match=r"breast\.npz: its 546/78/156 train/val/test images are the official "
                                        r"breastmnist split, not pneumoniamnist's"):
        load_split(cfg(dataset="pneumonia", data_file=str(tmp_path / "breast.npz")))
    with pytest.raises(DataError, match=r"breast\.npz: its images are 28x28 px, not the 64x64 px of --resolution 64"):
        load_split(cfg(dataset="breast", data_file=str(tmp_path / "breast.npz"), resolution=64))
    assert load_split(cfg(dataset="breast", data_file=str(tmp_path / "breast.npz"))).train.shape[1:] == (28, 28, 1)
    np.savez(tmp_path / "breastmnist.npz", **{k: v[:, :16, :16] if k.endswith("images") else v
                                              for k, v in breast.items()})
    with pytest.raises(DataError, match=r"its images are 16x16 px, not the 28x28 px of MedMNIST's breastmnist\.npz"):
        load_split(cfg(dataset="breast", data_root=str(tmp_path)))
    write_medmnist(tmp_path / "derma.npz", 7, channels=3)
    with pytest.raises(DataError, match=r"derma\.npz: its images have 3 channel\(s\), octmnist's have 1"):
        load_split(cfg(dataset="oct", data_file=str(tmp_path / "derma.npz")))
    write_medmnist(tmp_path / "seven.npz", 7)
    with pytest.raises(DataError, match=r"seven\.npz: train_labels run 0\.\.6, but breastmnist has 2 classes"):
        load_split(cfg(dataset="breast", data_file=str(tmp_path / "seven.npz")))
    for which in ("cifar10", "cifar100"):
        with pytest.raises(DataError, match=rf"breast\.npz: its train images are 28x28 px with 1 channel\(s\), "
                                            rf"{which}'s are 32x32 RGB"):
            load_split(cfg(dataset=which, data_file=str(tmp_path / "breast.npz"), normal_class=["0"]))
    img = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    np.savez(tmp_path / "c100.npz", train_images=img(200), train_labels=np.arange(200) % 100,
             test_images=img(100), test_labels=np.arange(100))
    with pytest.raises(DataError, match=r"c100\.npz: train_labels run 0\.\.99, but cifar10 labels are 0\.\.9"):
        load_split(cfg(dataset="cifar10", data_file=str(tmp_path / "c100.npz"), normal_class=["0"]))
    np.savez(tmp_path / "c10.npz", train_images=img(20), train_labels=np.arange(20) % 10,
             test_images=img(20), test_labels=np.arange(20) % 10)
    with pytest.raises(DataError, match=r"c10\.npz: its labels are all 0\.\.9, as in CIFAR-10"):
        load_split(cfg(dataset="cifar100", data_file=str(tmp_path / "c10.npz"), normal_class=["0"]))
    np.savez(tmp_path / "c100.npz", train_images=img(200), train_labels=np.arange(200) % 100 + 1,
             test_images=img(100), test_labels=np.arange(100))
    with pytest.raises(DataError, match=r"train_labels run 1\.\.100, but cifar100 labels are 0\.\.99"):
        load_split(cfg(dataset="cifar100", data_file=str(tmp_path / "c100.npz"), normal_class=["0"]))


def test_real_files_given_for_other_data_sets_are_refused():
    breast = str(need("breastmnist.npz"))
    with pytest.raises(DataError, match="the official breastmnist split, not pneumoniamnist's"):
        load_split(cfg(dataset="pneumonia", data_file=breast))
    with pytest.raises(DataError, match="not the 64x64 px of --resolution 64"):
        load_split(cfg(dataset="breast", data_file=breast, resolution=64))
    with pytest.raises(DataError, match="cifar10's are 32x32 RGB"):
        load_split(cfg(dataset="cifar10", data_file=breast, normal_class=["airplane"]))
    s = load_split(cfg(dataset="breast", data_file=str(need("breastmnist_64.npz"))))  # any resolution, unasked
    assert s.train.shape[1:] == (64, 64, 1) and s.meta["resolution"] == 64


def test_empty_files_and_labels_not_one_per_image_are_named(tmp_path):
    npz = lambda name, **arrays: np.savez(tmp_path / name, **arrays) or str(tmp_path / name)  # noqa: E731
    load = lambda path: load_split(cfg(dataset="npz", data_file=path, normal_class=["0"]))  # noqa: E731
    none = np.zeros((0, 8, 8), np.uint8)
    with pytest.raises(DataError, match=r"empty\.npz: the file holds no images"):
        load(npz("empty.npz", images=none, labels=np.zeros(0, np.uint8)))
    with pytest.raises(DataError, match=r"empty_given\.npz: the file holds no images"):
        load(given_npz(tmp_path / "empty_given.npz", none, none))
    with pytest.raises(DataError, match=r"no_train\.npz: train_images holds no images"):
        load(given_npz(tmp_path / "no_train.npz", none, np.zeros((4, 8, 8), np.uint8)))
    with pytest.raises(DataError, match=r"labels must be one per image, shape \(N,\) or \(N, 1\), got \(40, 2\)"):
        load(npz("pairs.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.zeros((40, 2), np.uint8)))
    with pytest.raises(DataError, match=r"has val_labels but no val_images"):
        load(npz("val.npz", train_images=none[:0], train_labels=np.zeros(0), test_images=none, test_labels=np.zeros(0),
                 val_labels=np.zeros(3)))


def test_a_training_split_of_one_normal_image_is_refused(tmp_path):
    imgs = np.zeros((6, 8, 8), np.uint8)
    seeded = str(tmp_path / "d.npz")
    np.savez(seeded, images=imgs, labels=np.array([0, 0, 1, 1, 1, 1], np.uint8))
    load = lambda path, **kw: load_split(cfg(dataset="npz", data_file=path, normal_class=["0"], **kw))  # noqa: E731
    with pytest.raises(DataError, match=r"only 1 normal training image\(s\); at least 2.*S_LH.*lower --test-fraction"):
        load(seeded)  # 2 normals, 30 % (1) to test
    with pytest.raises(DataError, match="only 1 normal training image.*raise --n-train"):
        load(seeded, n_train=1)
    with pytest.raises(DataError, match="only 1 normal training image.*raise --max-train-samples"):
        load(seeded, test_fraction=0.1, max_train_samples=1)
    one = given_npz(tmp_path / "one.npz", imgs, imgs, train_labels=np.array([0, 1, 1, 1, 1, 1], np.uint8))
    with pytest.raises(DataError, match="only 1 normal training image.*add normal images to the training split"):
        load(one)
    assert len(load(seeded, test_fraction=0.1).train) == 2
    with pytest.raises(DataError, match="only 1 normal training image.*lower --test-fraction"):  # "seeded per class"
        load_split(cfg(dataset="digits", normal_class=["8"], test_fraction=0.895))


def test_demo_refuses_zero_epochs(tmp_path, monkeypatch):
    import con2.data
    import con2.demo
    import con2.evaluate  # noqa: F401 - imported before the patch, so their own load_split stays the real one
    import con2.run  # noqa: F401
    import con2.train  # noqa: F401

    def loaded(cfg):
        raise AssertionError(f"the demo went on to load its data with epochs={cfg.epochs}")

    # run_demo imports load_split from con2.data when it runs (not at module level)
    monkeypatch.setattr(con2.data, "load_split", loaded)
    with pytest.raises(ValueError, match="--epochs must be >= 1, got 0"):
        con2.demo.run_demo(out=str(tmp_path / "demo"), epochs=0)


# --------------------------------------------------------------------------- regressions (data review)

def test_a_normal_class_folder_without_images_is_refused_not_dropped(tmp_path):
    # two normal classes, one of them empty: training on the other alone was silent
    for i in range(4):
        save(tmp_path / "flat" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "flat" / "bad" / f"{i}.png", seed=10 + i)
    (tmp_path / "flat" / "good2").mkdir()
    (tmp_path / "flat" / "good2" / "scan.raw").write_bytes(b"not a listed image type")
    with pytest.raises(DataError, match=r"flat: normal class folder 'good2' holds no images"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "flat"), normal_class=["good", "good2"]))
    # a train/ test/ tree: the normal class must have training images, wherever else it has some
    for i in range(3):
        save(tmp_path / "tree" / "train" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "tree" / "test" / "good2" / f"{i}.png", seed=i)
        save(tmp_path / "tree" / "test" / "bad" / f"{i}.png", seed=10 + i)
    with pytest.raises(DataError, match=r"tree/train has no class folder 'good2' \(it is only under test/\)"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "tree"), normal_class=["good", "good2"]))
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path / "tree"), normal_class=["good"]))
    assert len(s.train) == 3 and int(s.test_labels.sum()) == 6


def _pgm16(path: Path, values: np.ndarray) -> None:
    """A 16-bit binary PGM (maxval 65535), which Pillow opens in mode I, not I;16."""
    h, w = values.shape
    path.write_bytes(b"P5\n%d %d\n65535\n" % (w, h) + values.astype(">u2").tobytes())


def test_16_bit_pgm_files_are_scaled_as_16_bit_whatever_their_content(tmp_path):
    from con2.data.decode import decode_image

    ramp = np.arange(0, 256, dtype=np.int64).reshape(16, 16)
    _pgm16(tmp_path / "bright.pgm", ramp * 257)
    _pgm16(tmp_path / "dim.pgm", ramp)  # the same format, values that happen to stay below 256
    np.testing.assert_array_equal(decode_image(tmp_path / "bright.pgm", None)[..., 0], ramp.astype(np.uint8))
    expected = np.round(ramp * 255 / 65535).astype(np.uint8)  # near black, as in any 16-bit file
    np.testing.assert_array_equal(decode_image(tmp_path / "dim.pgm", None)[..., 0], expected)


def test_cifar100_superclass_labels_stored_as_train_labels_are_refused(tmp_path):
    # superclass labels 0..19 under train_labels were read as fine labels 0..19 and mapped again
    rng = np.random.default_rng(0)
    img = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    np.savez(tmp_path / "coarse.npz", train_images=img(100), train_labels=np.arange(100) % 20,
             test_images=img(40), test_labels=np.arange(40) % 20)
    with pytest.raises(DataError, match=r"coarse\.npz: its labels are all 0\.\.19.*train_coarse_labels"):
        load_split(cfg(dataset="cifar100", data_file=str(tmp_path / "coarse.npz"), normal_class=["fish"]))
    np.savez(tmp_path / "both.npz", train_images=img(100), train_labels=np.arange(100), test_images=img(40),
             test_labels=np.arange(40), train_coarse_labels=np.arange(100) % 20, test_coarse_labels=np.arange(40) % 20)
    s = load_split(cfg(dataset="cifar100", data_file=str(tmp_path / "both.npz"), normal_class=["fish"]))
    assert len(s.train) == 5 and set(s.test_classes) == set(range(20))


def test_npz_class_names_stored_as_bytes_read_as_text(tmp_path):
    images = np.zeros((20, 8, 8), np.uint8)
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(20) % 2, class_names=np.array([b"cat", b"dog"]))
    s = load_split(cfg(dataset="npz", data_file=str(tmp_path / "b.npz"), normal_class=["dog"]))
    assert s.class_names == {0: "cat", 1: "dog"} and s.normal_classes == (1,)


def test_npz_class_names_must_name_every_label_once(tmp_path):
    images = np.zeros((20, 8, 8), np.uint8)
    cases = [([1, 2], ["normal", "tumor"], r"names 2 classes \(labels 0..1\), but the labels also hold 2"),
             ([0, 1], [["a", "b"]], r"one name per class \(1-D\), got shape \(1, 2\)"),
             ([0, 1], ["same", "same"], "gives 'same' to more than one label")]
    for labels, names, match in cases:  # 1-based labels named from 0 trained on the wrong class, unsaid
        np.savez(tmp_path / "c.npz", images=images, labels=np.resize(labels, 20), class_names=np.array(names))
        with pytest.raises(DataError, match=match):
            load_split(cfg(dataset="npz", data_file=str(tmp_path / "c.npz"), normal_class=["0"]))
    np.savez(tmp_path / "c.npz", images=images, labels=np.resize([0, 2], 20), class_names=np.array(["a", "b", "c"]))
    assert load_split(cfg(dataset="npz", data_file=str(tmp_path / "c.npz"), normal_class=["c"])).normal_classes == (2,)


def test_images_in_a_symlinked_sub_folder_of_a_class_are_read(tmp_path):
    # rglob does not enter symlinked folders: their images were dropped without a word
    for i in range(4):
        save(tmp_path / "root" / "good" / f"{i}.png", seed=i)
        save(tmp_path / "root" / "bad" / f"{i}.png", seed=10 + i)
        save(tmp_path / "elsewhere" / f"{i}.png", seed=20 + i)
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "good" / "site_b")
    os.symlink(tmp_path / "root" / "good", tmp_path / "root" / "good" / "loop")  # a cycle is walked once
    s = load_split(cfg(dataset="folder", data_root=str(tmp_path / "root"), normal_class=["good"]))
    normals = s.train_files + [f for f, y in zip(s.test_files, s.test_labels) if y == 0]
    assert len(normals) == 8 and sum("/site_b/" in f for f in normals) == 4
    assert not any("/loop/" in f for f in normals)


def test_a_data_root_that_is_a_file_is_named_so(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"--data-root .*x\.png is a file, not a folder of class folders"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "x.png"), normal_class=["a"]))
    with pytest.raises(DataError, match="image folder not found"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path / "nowhere"), normal_class=["a"]))


# --resize shorter-side: torchvision's Resize(S) (aspect kept) + CenterCrop(S) instead of a stretch

def _tall_folder(root, n=6, size=(30, 40)):
    """Class folders of images 30 wide and 40 high: a bright top band that a stretch keeps and a
    shorter-side resize crops away, so the two modes give visibly different pixels."""
    rng = np.random.default_rng(3)
    for cls in ("good", "bad"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 120, (size[1], size[0], 3), dtype=np.uint8)
            a[:4] = 255
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def test_shorter_side_resize_of_a_folder_is_torchvisions_resize_and_center_crop(tmp_path):
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    root = _tall_folder(tmp_path / "data")
    files = sorted((root / "good").glob("*.png"))
    want = np.stack([np.asarray(TF.center_crop(TF.resize(Image.open(f), 16, InterpolationMode.BICUBIC), 16))
                     for f in files])
    for pipeline in ("tensor", "workers"):  # decoded into memory / on access (FolderImages)
        sp = load_split(cfg(dataset="folder", data_root=str(root), normal_class=["good"], image_size=16,
                            resize="shorter-side", test_fraction=0.5, pipeline=pipeline))
        got = np.concatenate([np.asarray(sp.train), np.asarray(sp.test)[np.asarray(sp.test_labels) == 0]])
        assert got.shape[1:] == (16, 16, 3)
        order = [str(f) for f in files]
        idx = [order.index(f) for f in list(sp.train_files) + [f for f, y in zip(sp.test_files, sp.test_labels) if y == 0]]
        np.testing.assert_array_equal(got, want[idx])
    stretched = load_split(cfg(dataset="folder", data_root=str(root), normal_class=["good"], image_size=16,
                               test_fraction=0.5))
    assert np.asarray(stretched.train)[:, 0].mean() > 200 > np.asarray(sp.train)[:, 0].mean()  # the band: kept / cut


def test_shorter_side_resize_of_an_npz_and_its_checks(tmp_path):
    import torch
    from torchvision.transforms import v2

    x = np.random.default_rng(0).integers(0, 256, (20, 40, 30, 1), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=np.array([0, 1] * 10))
    sp = load_split(cfg(dataset="npz", data_file=str(path), normal_class=["0"], image_size=16,
                        resize="shorter-side", test_fraction=0.5))
    ref = v2.CenterCrop(16)(v2.Resize(16, antialias=True)(torch.from_numpy(x).permute(0, 3, 1, 2)))
    ref = ref.permute(0, 2, 3, 1).numpy()
    assert sp.train.shape[1:] == (16, 16, 1) and len(sp.train) == 5
    # each training image is torchvision's resize + crop of one of the normals (to a grey level of rounding)
    err = np.abs(sp.train[:, None].astype(int) - ref[None, ::2].astype(int)).max(axis=(2, 3, 4))
    assert (err.min(axis=1) <= 1).all()
    with pytest.raises(ValueError, match="--resize shorter-side says how --image-size S is reached"):
        cfg(dataset="npz", data_file=str(path), resize="shorter-side").validate()
    with pytest.raises(ValueError, match="unknown --resize 'fit'"):
        cfg(resize="fit").validate()


def test_a_normal_class_only_under_test_is_named_as_such(tmp_path):
    """It said the train folder's class "holds no images (image files end in ...)", about a folder
    that does not exist."""
    for part, classes in (("train", ["good"]), ("test", ["good", "scratch"])):
        for c in classes:
            (tmp_path / part / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / part / c / "0.png")
    with pytest.raises(DataError, match=r"train has no class folder 'scratch' \(it is only under test/\); "
                                        r"classes to train on: good"):
        load_split(cfg(dataset="folder", data_root=str(tmp_path), normal_class=["scratch"]))


def test_npz_score_rows_name_the_row_or_the_file_each_image_came_from(tmp_path):
    """A seeded npz split (BR35H's protocol) shuffled its rows into train / val / test: a score row's
    index could not be traced back to an image of the file."""
    from con2.evaluate import sample_columns

    n = 30
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 8, 8), np.uint8)  # pixel value = row
    labels = (np.arange(n) >= 20).astype(np.uint8)
    names = np.array([f"scan{i:02d}.jpg".encode() for i in range(n)])  # as BR35H's file stores them (bytes)
    np.savez(tmp_path / "named.npz", images=images, labels=labels, filenames=names)
    np.savez(tmp_path / "plain.npz", images=images, labels=labels)
    for file, name in (("named.npz", lambda r: f"named.npz:scan{r:02d}.jpg"),
                       ("plain.npz", lambda r: f"plain.npz:images[{r}]")):
        s = load_split(cfg(dataset="npz", data_file=str(tmp_path / file), normal_class=["0"], val_fraction=0.2,
                           max_train_samples=5))
        for part in ("train", "val", "test"):
            _, _, files = sample_columns(s, part)
            assert files == [name(int(img[0, 0, 0])) for img in s.part(part)], (file, part)
    given = given_npz(tmp_path / "given.npz", images[:10], images[10:16])
    _, _, files = sample_columns(load_split(cfg(dataset="npz", data_file=given, normal_class=["0"])), "test")
    assert files == [f"given.npz:test_images[{i}]" for i in range(6)]


def test_a_val_fraction_asked_for_gives_at_least_one_val_normal(tmp_path):
    """0.01 of 50 normals rounded to no val image, silently; con2 predict then asked for a val fraction."""
    labels = np.array([0] * 50 + [1] * 10, np.uint8)
    np.savez(tmp_path / "d.npz", images=np.zeros((60, 8, 8), np.uint8), labels=labels)
    s = load_split(cfg(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0"], val_fraction=0.01))
    check_split(s, 34, 1, 25, 10)
    s = load_split(cfg(dataset="npz", data_file=str(tmp_path / "d.npz"), normal_class=["0"], val_fraction=0.0))
    check_split(s, 35, 0, 25, 10)  # none asked for: none
    s = load_split(cfg(dataset="digits", val_fraction=0.001))
    assert len(s.val) == 1  # the normal digit's own share


def test_the_seeded_split_rounds_its_test_share_and_sends_every_anomaly_to_test():
    """round(test_fraction * n) normals to test (a floor passed: only an unrelated test saw it, by chance)."""
    from con2.data.loaders.common import seeded_normal_split

    labels = np.array([0] * 10 + [1] * 4)
    parts = seeded_normal_split(labels, (0,), cfg(dataset="npz", test_fraction=0.27))  # 2.7 normals: 3
    assert (labels[parts["test"]] == 0).sum() == 3 and len(parts["train"]) == 7 and len(parts["val"]) == 0
    assert set(np.flatnonzero(labels == 1)) <= set(parts["test"])
    assert sorted(np.concatenate(list(parts.values()))) == list(range(14))  # each index in one part
    parts = seeded_normal_split(labels, (0,), cfg(dataset="npz", test_fraction=0.27, val_fraction=0.16))
    assert (len(parts["train"]), len(parts["val"]), (labels[parts["test"]] == 0).sum()) == (5, 2, 3)  # 1.6 val: 2
