"""DICOM (.dcm) images: decoded as radiology viewers show them (rescale, window, MONOCHROME1
inverted), their headers read, refused with a one-line error naming the file when con2 cannot
read them, and flowing through the folder loader, the pipeline choice and con2 predict."""
import dataclasses
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from con2.config import TrainConfig
from con2.data import DataError, load_split
from con2.data.decode import decode_image, list_images, read_header
from con2.data.input_format import InputFormat
from con2.predict import _read as _predict_read


@pytest.fixture
def write_dcm():
    """write_dcm(path, pixels, **tags): a DICOM file of uint8 / uint16 / int16 pixels [H, W], [H, W, 3]
    (colour) or [frames, H, W], MONOCHROME2 unless a tag says otherwise."""
    pytest.importorskip("pydicom", minversion="3.0")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def write(path, pixels, transfer_syntax=ExplicitVRLittleEndian, **tags):
        pixels = np.asarray(pixels)
        colour = pixels.ndim == 3 and pixels.shape[-1] == 3 and "NumberOfFrames" not in tags
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.tobytes()
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


def test_a_16_bit_image_is_rescaled_then_windowed(tmp_path, write_dcm):
    raw = np.array([[0, 400, 431, 432, 450], [500, 530, 560, 600, 631], [632, 633, 700, 4095, 512]], np.uint16)
    slope, intercept, center, width = 2.0, -1024.0, 40.0, 400.0
    f = write_dcm(tmp_path / "ct.dcm", raw, BitsStored=12, HighBit=11, RescaleSlope=slope,
                  RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): black at or below c - 0.5 - (w - 1) / 2, white above c - 0.5 + (w - 1) / 2
    value = raw * slope + intercept
    fraction = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected = np.round(fraction * 255).astype(np.uint8)
    assert np.abs(fraction * 255 % 1 - 0.5).min() > 1e-6  # no value on a rounding tie
    out = decode_image(f, None)
    assert out.shape == (3, 5, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], expected)
    assert expected.min() == 0 and expected.max() == 255 and 0 < expected[1, 1] < 255


def test_the_first_of_several_windows_is_used(tmp_path, write_dcm):
    raw = np.arange(0, 4000, 100, dtype=np.uint16).reshape(5, 8)
    one = write_dcm(tmp_path / "one.dcm", raw, WindowCenter=1000, WindowWidth=1001)
    two = write_dcm(tmp_path / "two.dcm", raw, WindowCenter=[1000, 3000], WindowWidth=[1001, 50])
    np.testing.assert_array_equal(decode_image(two, None), decode_image(one, None))


def test_a_voi_lut_is_applied_before_any_window(tmp_path, write_dcm):
    import warnings

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 10, 8])  # LUT Descriptor: 4 entries, the first for value 10, 8 bits each
    lut.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUT Data
    raw = np.array([[5, 10, 11], [12, 13, 40]], np.uint16)
    f = write_dcm(tmp_path / "lut.dcm", raw, VOILUTSequence=Sequence([lut]), WindowCenter=30, WindowWidth=4,
                  RescaleSlope=1, RescaleIntercept=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rescaled values are floats: pydicom would warn of a LUT on floats
        out = decode_image(f, None)[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 50], [200, 255, 255]])


def test_monochrome1_is_inverted_and_without_a_window_the_full_range_is_used(tmp_path, write_dcm):
    raw = np.array([[100, 237, 300], [419, 500, 1100]], np.uint16)
    m2 = decode_image(write_dcm(tmp_path / "m2.dcm", raw), None)[..., 0]
    m1 = decode_image(write_dcm(tmp_path / "m1.dcm", raw, PhotometricInterpretation="MONOCHROME1"), None)[..., 0]
    np.testing.assert_array_equal(m2, np.round((raw - 100) / 1000 * 255))  # min..max -> 0..255
    np.testing.assert_array_equal(m1, np.round((1100 - raw) / 1000 * 255))  # low values are white in MONOCHROME1


def test_a_constant_image_is_black(tmp_path, write_dcm):
    flat = np.full((4, 6), 777, np.uint16)
    for pi in ("MONOCHROME2", "MONOCHROME1"):
        out = decode_image(write_dcm(tmp_path / f"{pi}.dcm", flat, PhotometricInterpretation=pi), None)
        assert out.shape == (4, 6, 1) and not out.any()


def test_rgb_and_ybr_are_read_as_rgb_and_resized_as_other_files(tmp_path, write_dcm):
    from PIL import Image
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    f = write_dcm(tmp_path / "rgb.dcm", rgb)
    np.testing.assert_array_equal(decode_image(f, None), rgb)
    assert read_header(f) == (3, (10, 14))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for size, keep in ((6, False), ((5, 7), False), (6, True)):
        np.testing.assert_array_equal(decode_image(f, size, keep), decode_image(tmp_path / "rgb.png", size, keep))
    ybr = write_dcm(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"),
                    PhotometricInterpretation="YBR_FULL")
    assert np.abs(decode_image(ybr, None).astype(int) - rgb).max() <= 2


def test_a_grayscale_dicom_resizes_as_a_grayscale_png(tmp_path, write_dcm):
    from PIL import Image

    a = np.random.default_rng(1).integers(0, 256, (9, 13), dtype=np.uint8)
    a[0, 0], a[0, 1] = 0, 255  # the full range: min..max leaves the values as they are
    Image.fromarray(a).save(tmp_path / "g.png")
    f = write_dcm(tmp_path / "g.dcm", a)
    for size, keep in ((None, False), (8, False), ((4, 6), False), (5, True)):
        np.testing.assert_array_equal(decode_image(f, size, keep), decode_image(tmp_path / "g.png", size, keep))


def test_headers_and_listing(tmp_path, write_dcm):
    write_dcm(tmp_path / "a.dcm", np.zeros((7, 9), np.uint16))
    (tmp_path / "sub").mkdir()
    write_dcm(tmp_path / "sub" / "B.DICOM", np.zeros((3, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == [tmp_path / "a.dcm", tmp_path / "sub" / "B.DICOM"]
    assert read_header(tmp_path / "a.dcm") == (1, (7, 9))
    assert read_header(tmp_path / "sub" / "B.DICOM") == (1, (3, 4))


def test_a_dicom_without_a_suffix_is_recognised_by_its_marker(tmp_path, write_dcm):
    raw = np.arange(12, dtype=np.uint16).reshape(3, 4)
    f = write_dcm(tmp_path / "IM0001", raw)
    assert read_header(f) == (1, (3, 4))
    np.testing.assert_array_equal(decode_image(f, None), decode_image(write_dcm(tmp_path / "a.dcm", raw), None))


def test_folders_list_dicom_files_named_as_exports_name_them(tmp_path, write_dcm, monkeypatch):
    """PACS exports name DICOM files IM0001 or by a UID, without .dcm: a folder of them read as empty."""
    import os

    from con2.data import ContextSet, ViewConfig, dali
    from con2.data.sources import make_batch_source, resolve_pipeline
    from con2.predict import list_inputs

    raw = np.arange(20, dtype=np.uint16).reshape(4, 5)
    export = tmp_path / "export"
    for cls in ("good", "bad"):
        (export / cls / "SE1").mkdir(parents=True)
        for name in ("IM0001", "IM0002", "1.2.840.113619.2.55.3", "scan.IMA"):
            write_dcm(export / cls / "SE1" / name, raw)
    write_dcm(export / "good" / "DICOMDIR", raw)  # an export's index: not an image (real ones hold no pixels)
    (export / "good" / "README").write_text("x" * 200)  # suffix-less, no marker
    (export / "good" / "1.2.3").write_bytes(b"\0" * 200)  # a UID-like name, no marker
    (export / "good" / "report.pdf").write_bytes(b"\0" * 128 + b"DICM")  # a marker, but another kind of file
    os.mkfifo(export / "good" / "IM9999")  # never opened: it would wait for a writer
    sr = write_dcm(tmp_path / "sr.dcm", raw)  # a structured report of the export: a DICOM object, no image
    import pydicom

    ds = pydicom.dcmread(sr)
    for tag in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, tag)
    ds.save_as(export / "good" / "SR0001")
    listed = list_images(export / "good")
    assert [p.name for p in listed] == ["1.2.840.113619.2.55.3", "IM0001", "IM0002", "scan.IMA"]
    assert list_inputs([export / "good"]) == listed
    locked = export / "good" / "IM0003"
    shutil.copy(listed[1], locked)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: refuse it as the file system would
        import con2.data.dicom

        def has_marker(path, strict=False, real=con2.data.dicom.has_marker):
            if Path(path).name == "IM0003":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, strict)

        monkeypatch.setattr(con2.data.dicom, "has_marker", has_marker)
    assert list_images(export / "good") == [locked] + listed
    monkeypatch.undo()  # a file that cannot be opened is listed, so that reading it names it
    locked.unlink()

    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")  # files decoded on access: auto picks a file pipeline
    split = load_split(TrainConfig(dataset="folder", data_root=str(export), normal_class=["good"], image_size=5))
    assert sorted(Path(f).name for f in split.train_files + split.test_files).count("IM0001") == 2
    np.testing.assert_array_equal(np.asarray(split.train)[0], decode_image(write_dcm(tmp_path / "a.dcm", raw), 5))
    monkeypatch.setattr(dali, "available", lambda: True)
    assert resolve_pipeline("auto", split, "cpu") == "workers"
    with pytest.raises(ValueError, match=r"DALI cannot decode DICOM files such as .*export"):
        make_batch_source("dali", split, ContextSet("flip"), ViewConfig(size=5), 2, 0, "cpu")


def test_files_con2_cannot_read_are_named_in_one_line(tmp_path, write_dcm):
    multi = write_dcm(tmp_path / "multi.dcm", np.zeros((2, 4, 5), np.uint16), NumberOfFrames=2)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 20)
    nopix = write_dcm(tmp_path / "nopix.dcm", np.zeros((4, 5), np.uint16))
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    for f, why in ((multi, "multi-frame DICOM of 2 frames"), (junk, "not a DICOM file"),
                   (nopix, "no pixel data")):
        with pytest.raises(DataError) as e:
            decode_image(f, 8)
        assert str(f) in str(e.value) and why in str(e.value) and "\n" not in str(e.value)
        # no deep traceback: nothing chained
        assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
    for f, why in ((multi, "2 frames"), (junk, "not a DICOM file")):  # refused by the header scan already
        with pytest.raises(DataError, match=why):
            read_header(f)


def test_nan_pixels_are_refused(tmp_path, write_dcm):
    f = write_dcm(tmp_path / "nan.dcm", np.zeros((2, 3), np.uint16))
    import pydicom

    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = np.array([[0, 1, np.nan], [2, 3, 4]], np.float32).tobytes()
    ds.save_as(f)
    with pytest.raises(DataError, match="nan.dcm: the image has NaN or infinite pixel values"):
        decode_image(f, None)


def test_a_compressed_file_without_its_decoder_plugin_is_named(tmp_path, write_dcm):
    from pydicom import uid
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    # with con2[dicom] (python-gdcm) the JPEG / JPEG-LS / JPEG 2000 syntaxes decode; HTJ2K needs pylibjpeg-openjpeg
    missing = next((getattr(uid, n) for n in ("HTJ2KLossless", "JPEGLSLossless")
                    if not get_decoder(getattr(uid, n)).is_available), None)
    if missing is None:
        pytest.skip("every decoder plugin this test could lack is installed")
    f = write_dcm(tmp_path / "jls.dcm", np.zeros((4, 4), np.uint16), transfer_syntax=missing,
                  PixelData=encapsulate([b"\xff\xd8 not really compressed"]))
    for read in (read_header, lambda p: decode_image(p, 8)):
        with pytest.raises(DataError, match=rf"jls.dcm: no decoder for its compressed DICOM transfer syntax "
                                            rf"{re.escape(missing.name)} is installed \(pylibjpeg - requires"):
            read(f)
    # a missing plugin is not a damaged file: neither training nor con2 predict skips it
    for cls in ("good", "bad"):
        (tmp_path / cls).mkdir()
        write_dcm(tmp_path / cls / "ok.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4))
    shutil.copy(f, tmp_path / "good" / "jls.dcm")
    with pytest.raises(DataError, match="jls.dcm: no decoder"):
        load_split(TrainConfig(dataset="folder", data_root=str(tmp_path), normal_class=["good"], skip_bad_files=True))
    with pytest.raises(DataError, match="jls.dcm: no decoder"):
        _predict_read([tmp_path / "good" / "ok.dcm", f], InputFormat(size=(8, 8), channels=1), skip_bad=True)


def test_without_pydicom_a_dicom_file_asks_for_it_and_is_not_skipped(tmp_path, monkeypatch):
    from PIL import Image

    for cls, n in (("good", 4), ("bad", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "good" / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom raises ImportError
    for read in (read_header, lambda p: decode_image(p, 8)):
        with pytest.raises(DataError, match=r"scan.dcm: reading DICOM files needs pydicom 3: "
                                            r"pip install 'con2\[dicom\]'"):
            read(tmp_path / "good" / "scan.dcm")
    # a missing package is not a damaged file: --skip-bad-files does not drop every DICOM file
    with pytest.raises(DataError, match=r"pip install 'con2\[dicom\]'"):
        load_split(TrainConfig(dataset="folder", data_root=str(tmp_path), normal_class=["good"], skip_bad_files=True))
    with pytest.raises(DataError, match=r"pip install 'con2\[dicom\]'"):  # con2 predict --skip-bad-files
        _predict_read([tmp_path / "good" / "0.png", tmp_path / "good" / "scan.dcm"],
                      InputFormat(size=(6, 6), channels=1), skip_bad=True)


def _dicom_folder(root, write_dcm, n_good=8, n_bad=4):
    rng = np.random.default_rng(0)
    for cls, n in (("good", n_good), ("bad", n_bad)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            raw = rng.integers(0, 4096, (20, 16), dtype=np.uint16)
            write_dcm(root / cls / f"{i}.dcm", raw, BitsStored=12, HighBit=11, RescaleSlope=1, RescaleIntercept=0,
                      WindowCenter=2048, WindowWidth=4096,
                      PhotometricInterpretation="MONOCHROME1" if i % 2 else "MONOCHROME2")
    return root


@pytest.mark.parametrize("budget", [None, "0"], ids=["held", "on-access"])
def test_a_folder_of_dicom_files_loads_and_fingerprints(tmp_path, write_dcm, monkeypatch, budget):
    from con2.run import data_fingerprint

    if budget is not None:
        monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", budget)
    root = _dicom_folder(tmp_path / "data", write_dcm)
    split = load_split(TrainConfig(dataset="folder", data_root=str(root), normal_class=["good"], image_size=8,
                                   val_fraction=0.2))
    assert split.channels == 1 and all(f.endswith(".dcm") for f in split.train_files + split.test_files)
    assert isinstance(split.train, np.ndarray) == (budget is None)
    train = np.asarray(split.train)
    assert train.shape == (len(split.train_files), 8, 8, 1)
    for row, f in zip(train, split.train_files):
        np.testing.assert_array_equal(row, decode_image(f, 8))
    assert data_fingerprint(split)["count"] == len(split.train_files)


def test_dali_is_not_picked_for_dicom_files_and_refuses_them(tmp_path, write_dcm, monkeypatch):
    from con2.data import ContextSet, ViewConfig, dali
    from con2.data.sources import make_batch_source, resolve_pipeline

    monkeypatch.setenv("CON2_MEMORY_BUDGET_MB", "0")  # not held: auto chooses among the file pipelines
    root = _dicom_folder(tmp_path / "data", write_dcm)
    split = load_split(TrainConfig(dataset="folder", data_root=str(root), normal_class=["good"], image_size=8))
    monkeypatch.setattr(dali, "available", lambda: True)
    assert resolve_pipeline("auto", split, "cpu") == "workers"
    png = dataclasses.replace(split, train_files=[f.replace(".dcm", ".png") for f in split.train_files])
    assert resolve_pipeline("auto", png, "cpu") == "dali"  # the suffix alone decides it
    with pytest.raises(ValueError, match=r"DALI cannot decode DICOM files such as .*0\.dcm"):
        make_batch_source("dali", split, ContextSet("flip"), ViewConfig(size=8), 4, 0, "cpu")


def test_predict_lists_and_reads_dicom_files(tmp_path, write_dcm):
    from con2.predict import list_inputs, read_images

    root = _dicom_folder(tmp_path / "data", write_dcm, n_good=2, n_bad=1)
    files = list_inputs([root / "good", root / "bad" / "0.dcm"])
    assert files == [root / "good" / "0.dcm", root / "good" / "1.dcm", root / "bad" / "0.dcm"]
    for channels in (1, 3):
        out = read_images(files, (8, 8), channels, folder=True)
        assert out.shape == (3, 8, 8, channels)
        np.testing.assert_array_equal(out[1], np.repeat(decode_image(files[1], 8), channels, axis=-1))


def test_a_run_trained_on_dicom_files_predicts_dicom_files(tmp_path, write_dcm, capsys):
    import csv
    import io

    from PIL import Image

    from con2.cli.main import main
    from con2.train import train

    rng = np.random.default_rng(0)
    for cls, n in (("good", 10), ("bad", 4)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (12, 12), dtype=np.uint8)
            a[0, :2] = 0, 255  # the full range: decoded as the PNG of these pixels is
            write_dcm(tmp_path / "data" / cls / f"{i}.dcm", a)
            if cls == "bad" and i == 0:
                Image.fromarray(a).save(tmp_path / "same.png")
    run = train(TrainConfig(dataset="folder", data_root=str(tmp_path / "data"), normal_class=["good"],
                            test_fraction=0.3, val_fraction=0.2, epochs=1, width=4, batch_size=8, device="cpu",
                            out=str(tmp_path / "run")), progress=False)
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(tmp_path / "data" / "bad"), str(tmp_path / "same.png"),
                 "--views", "2", "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [Path(r["file"]).name for r in rows] == ["0.dcm", "1.dcm", "2.dcm", "3.dcm", "same.png"]
    assert rows[0]["score"] == rows[-1]["score"]  # a DICOM file scores as the PNG of its pixels
    # a suffix-less DICOM file now listed among a run's images (earlier con2 left such files out): named
    shutil.copy(tmp_path / "data" / "good" / "0.dcm", tmp_path / "data" / "good" / "IM0001")
    from con2.evaluate import evaluate_run

    with pytest.raises(DataError, match=r"the data changed since training .*; among them 1 DICOM file\(s\) without "
                                        r"a \.dcm suffix such as .*IM0001, which con2 now reads"):
        evaluate_run(run, views=0, progress=False)


def test_info_says_which_compressed_dicom_syntaxes_are_decoded_here():
    pytest.importorskip("pydicom")
    from pydicom import uid
    from pydicom.pixels import get_decoder

    from con2.info import info_text

    text = info_text()
    decoded = next(line for line in text.splitlines() if "compressed DICOM decoded:" in line)
    for name in ("RLELossless", "JPEGLSLossless"):
        assert (name in decoded) == get_decoder(getattr(uid, name)).is_available
        if not get_decoder(getattr(uid, name)).is_available:
            assert f"not decoded: {name} (" in text


@pytest.mark.parametrize("syntax", ["JPEGLosslessSV1", "JPEGLossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_archives_decode_as_their_uncompressed_original(tmp_path, write_dcm, syntax):
    """CT / MR archives are mostly stored JPEG Lossless (or JPEG-LS, JPEG 2000): `con2[dicom]` brings
    python-gdcm, which decodes them; the pixels are those of the uncompressed file."""
    gdcm = pytest.importorskip("gdcm")
    from pydicom import uid

    raw = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 37) % 4096
    plain = write_dcm(tmp_path / "plain.dcm", raw, BitsStored=12, HighBit=11, WindowCenter=1500, WindowWidth=2000)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(plain))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()  # gdcm also encodes: the test makes its own compressed file
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(getattr(uid, syntax)))))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "IM0001"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    import pydicom

    assert pydicom.dcmread(tmp_path / "IM0001").file_meta.TransferSyntaxUID == getattr(uid, syntax)
    np.testing.assert_array_equal(decode_image(tmp_path / "IM0001", None), decode_image(plain, None))
    assert read_header(tmp_path / "IM0001") == (1, (12, 16))


def test_a_dcm_file_without_the_dicom_preamble_is_read_as_a_bare_data_set(tmp_path):
    """Older (ACR-NEMA style) exports hold the data set alone: no 128-byte preamble, no 'DICM'."""
    pydicom = pytest.importorskip("pydicom", minversion="3.0")
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 5, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(20, dtype=np.uint16) * 100).tobytes()
    f = tmp_path / "old.dcm"
    pydicom.dcmwrite(f, ds, implicit_vr=True, little_endian=True)
    assert f.read_bytes()[128:132] != b"DICM"
    assert read_header(f) == (1, (4, 5))
    want = np.round(np.arange(20, dtype=np.float64) / 19 * 255).astype(np.uint8).reshape(4, 5, 1)
    np.testing.assert_array_equal(decode_image(f, None), want)
