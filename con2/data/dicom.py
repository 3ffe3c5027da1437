"""DICOM files (optional extra `con2[dicom]`, pydicom 3): recognising one (by its suffix, or by the
"DICM" marker of an export named IM0001 or by a UID), reading its header, and decoding its pixels as
radiology viewers show them. Each refusal is a one-line DataError naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError, MissingDependency

DICOM_SUFFIXES = {".dcm", ".dicom"}
# The suffixes Pillow decodes: a file with one of these is never opened to look for DICOM's marker
PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm"}
# Photometric interpretations read: grayscale, and colour that pydicom gives (or converts to) as RGB
DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom(path) -> bool:
    """A .dcm / .dicom file, or a file of another (or no) suffix with DICOM's "DICM" marker at byte
    128 (PACS exports are often named IM0001); files of Pillow's suffixes are not opened to check."""
    suffix = Path(path).suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        return False
    return suffix in DICOM_SUFFIXES or has_marker(path)


def has_marker(path, strict: bool = False) -> bool:
    """DICOM's "DICM" marker at byte 128. A file that cannot be read: False (left to the decoder to
    name), or with `strict` the OSError."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        if strict:
            raise
        return False


def may_be_unnamed_dicom(name: str) -> bool:
    """A file name a PACS or scanner export gives DICOM files without a .dcm suffix: none (IM0001),
    digits (a UID such as 1.2.840.113619.2.55.3.1), or Siemens' .IMA. Such a file in a folder is read
    when it is a DICOM image (is_unnamed_dicom_image); DICOMDIR, an export's index, holds none."""
    suffix = Path(name).suffix.lower()
    return name.upper() != "DICOMDIR" and (suffix in ("", ".ima") or suffix[1:].isdigit())


def is_unnamed_dicom_image(path) -> bool:
    """Whether a regular file named as exports name DICOM files (may_be_unnamed_dicom) is an image to
    read: it carries the marker and its header has Rows and Columns (an export's structured reports,
    presentation states and key-object notes have none). A file that cannot be opened, or whose
    header cannot be parsed, counts as one, so that reading it names it (or --skip-bad-files skips
    it) instead of it being left out without a word."""
    try:
        if not has_marker(path, strict=True):
            return False
    except OSError:
        return True
    try:
        import pydicom
    except ImportError:
        return True  # read_dicom asks for pydicom
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    except Exception:  # noqa: BLE001 - damaged: named when read
        return True
    return "Rows" in ds and "Columns" in ds


def dicom_header(path) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of a DICOM file from its header; a file con2 cannot decode (multi-frame,
    no decoder plugin, ...) raises here."""
    ds = read_dicom(path, pixels=False)
    return (3 if ds.PhotometricInterpretation in DICOM_COLOUR else 1), (int(ds.Rows), int(ds.Columns))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_dicom(path, pixels: bool):
    """The pydicom data set of a DICOM file (its header only unless `pixels`), checked to be one 2-D
    image con2 can decode; each refusal is a one-line DataError naming the file."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import get_decoder  # pydicom 3: it names the plugin a compressed file lacks
    except ImportError:
        raise MissingDependency(f"{path}: reading DICOM files needs pydicom 3: pip install 'con2[dicom]'") from None
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            ds = _without_preamble(path, pixels)
        frames = int(ds.get("NumberOfFrames") or 1)
        pi = str(ds.get("PhotometricInterpretation") or "").strip()
        samples = int(ds.get("SamplesPerPixel") or 1)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128, and no image data set "
                        "without one)") from None
    except Exception as e:  # truncated, or a damaged header
        raise DataError(f"{path}: cannot read the DICOM file: {type(e).__name__}: {_one_line(e)}") from None
    if frames > 1:
        raise DataError(f"{path}: a multi-frame DICOM of {frames} frames; con2 reads 2-D images "
                        f"(save the frame to use as a file of its own)")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: the DICOM file holds no image (no Rows / Columns)")
    if pi not in DICOM_GRAY + DICOM_COLOUR or samples != (3 if pi in DICOM_COLOUR else 1):
        raise DataError(f"{path}: DICOM photometric interpretation {pi or '(none)'} with {samples} sample(s) "
                        f"per pixel is not read (con2 reads MONOCHROME1, MONOCHROME2, RGB and YBR)")
    if pixels and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path}: the DICOM file has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax) if syntax else None
    except NotImplementedError:
        raise DataError(f"{path}: pydicom cannot decode DICOM transfer syntax {syntax} ({syntax.name})") from None
    if decoder is not None and not decoder.is_available:
        raise MissingDependency(f"{path}: no decoder for its compressed DICOM transfer syntax {syntax.name} is "
                                f"installed ({'; '.join(decoder.missing_dependencies)})")
    return ds


def _without_preamble(path, pixels: bool):
    """A .dcm / .dicom file written without DICOM's preamble and file meta (older ACR-NEMA style
    exports): read as a bare data set, its transfer syntax the encoding pydicom found. A file that
    is no image data set read this way (any file parses as some elements) is InvalidDicomError."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if Path(path).suffix.lower() not in DICOM_SUFFIXES:
        raise InvalidDicomError(f"{path}: no DICOM preamble")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
    except Exception:
        raise InvalidDicomError(f"{path}: not a DICOM data set") from None
    if "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds:
        raise InvalidDicomError(f"{path}: not an image data set")
    implicit, little = ds.original_encoding
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _voi_range(ds, apply_voi_lut) -> tuple[float, float, bool] | None:
    """(black, white, is_lut): what apply_voi_lut makes of values below and above the first VOI LUT
    or window of `ds` (the LUT first, as apply_voi_lut prefers it), or None when it has neither."""
    lut = (ds.get("VOILUTSequence") or [None])[0]
    if lut is not None and lut.get("LUTDescriptor") is not None and lut.get("LUTData") is not None:
        entries, first = lut.LUTDescriptor[0] or 2**16, lut.LUTDescriptor[1]
        probe = np.array([first - 1, first + entries])  # its first and last entries
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        probe = np.array([-np.inf, np.inf])  # a window's output range, whatever its VOI LUT function
    else:
        return None
    black, white = apply_voi_lut(probe, ds, index=0)
    return float(black), float(white), probe.dtype.kind == "i"


def decode_dicom(path) -> np.ndarray:
    """A 2-D DICOM image as uint8 [H, W] or [H, W, 3], shown as radiology viewers show it. Grayscale:
    the Rescale Slope / Intercept (modality LUT), then the first VOI LUT or window from black to
    white when the file has one, else its own min..max (a constant image is black); MONOCHROME1
    inverted, so that white is dense as in MONOCHROME2. Colour: RGB (YBR converted), by its bit depth."""
    ds = read_dicom(path, pixels=True)  # first: it names a missing pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pi = ds.PhotometricInterpretation
    try:
        a = ds.pixel_array  # YBR converted to RGB by pydicom
        if pi in DICOM_COLOUR:
            frac = a / float(2 ** int(ds.BitsStored) - 1)
        else:
            a = apply_modality_lut(a, ds)
            if not np.isfinite(a).all():
                raise DataError(f"{path}: the image has NaN or infinite pixel values")
            voi = _voi_range(ds, apply_voi_lut)
            if voi is None:
                black, white = float(a.min()), float(a.max())
            else:
                black, white, is_lut = voi
                if is_lut and a.dtype.kind == "f":  # rescaled: a LUT maps whole values (pydicom warns of floats)
                    a = np.round(a).astype(np.int64)
                a = apply_voi_lut(a, ds, index=0)
            if white == black:  # a constant image (or window): black, not 0 / 0
                return np.zeros(a.shape, np.uint8)
            frac = (a - black) / (white - black)
            if pi == "MONOCHROME1":
                frac = 1.0 - frac
    except DataError:
        raise
    except Exception as e:  # damaged pixel data, or a window pydicom refuses
        raise DataError(f"{path}: cannot decode the DICOM pixel data: {type(e).__name__}: {_one_line(e)}") from None
    return (np.asarray(frac, np.float64) * 255.0).clip(0, 255).round().astype(np.uint8)
