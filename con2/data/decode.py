"""Reading image files: listing a folder's images, decoding one file as every con2 loader does,
reading a file's header only, and decoding many files on threads (I/O and decoding overlap).
Files are read with Pillow, DICOM files with pydicom (con2.data.dicom)."""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .dicom import (DICOM_SUFFIXES, PILLOW_SUFFIXES, decode_dicom, dicom_header, is_dicom, is_unnamed_dicom_image,
                    may_be_unnamed_dicom)
from .errors import DataError, ImageChanged, MissingDependency


IMAGE_SUFFIXES = PILLOW_SUFFIXES | DICOM_SUFFIXES
# What a folder's listing reads, for the errors that find none
IMAGE_NAMES = (f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}, or are DICOM files named without a "
               "suffix (IM0001) or by a UID")

# A decoded image whose every pixel is under this is near black: most often 12-bit data stored in
# 16-bit files, read as 16-bit (training and con2 predict warn of it).
NEAR_BLACK = 32

# Pillow modes decoded to one channel: more than 8 bits (scaled by _to_8bit), and 8 bits or fewer.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
GRAY_MODES = ("1", "L", "LA")
_EXIF_ORIENTATION = 0x0112


def list_images(folder: Path, strict: bool = False, keep_odd: bool = False) -> list[Path]:
    """Image files under `folder` (recursively, into symlinked folders too, each real folder once),
    sorted (is_image_file: by suffix, and DICOM files by their marker); hidden files, anything inside
    hidden folders (.ipynb_checkpoints, .thumbnails, ...) and other files ignored. An image-named
    entry that is not a file (a dangling symlink, a FIFO) is passed over, or with `strict` (con2
    predict) a DataError naming it, or with `keep_odd` (predict --skip-bad-files) listed, for its
    reader to name as unreadable (never opening it: see not_a_file)."""
    found, seen = [], set()
    # os.walk, not rglob: rglob skips symlinked sub-folders, and their images would be left out unsaid
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_unlistable):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back into the tree (or a second link to one folder): walked once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(Path(dirpath) / f)]
    if strict:  # else such an image would silently get no score
        bad = next((p for p in sorted(found) if not p.is_file()), None)
        if bad is not None:
            raise DataError(f"cannot read image {bad}: {not_a_file(bad)}")
    return sorted(p for p in found if keep_odd or p.is_file())


def _unlistable(exc: OSError):
    # os.walk passes over a folder it cannot list: its images (a whole class) would vanish unsaid
    raise DataError(f"cannot list the folder {exc.filename} ({exc.strerror or exc}): its images would be left "
                    "out; make it readable or move it out of the image tree")


def is_image_file(path: Path) -> bool:
    """A name con2 reads as an image: one of IMAGE_SUFFIXES, or a regular file named as exports name
    DICOM files (IM0001, a UID; see may_be_unnamed_dicom) that is a DICOM image (or cannot be read
    to tell: then reading it names it)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    # is_file first: opening a FIFO to look for the marker would wait for a writer
    return may_be_unnamed_dicom(path.name) and path.is_file() and is_unnamed_dicom_image(path)


def not_a_file(path: Path) -> str:
    """Why an image-named entry is not a readable file (a dangling symlink, a FIFO, ...), for the
    errors of training's folder loader and of con2 predict."""
    if path.is_symlink() and not path.exists():
        return f"a dangling symlink (its target {os.readlink(path)} does not exist)"
    return "not a regular file (a FIFO, socket or device)"


# Formats whose mode I images are 16-bit files (a 16-bit PGM / PPM; a 16-bit PNG in older Pillow):
# scaled as 16-bit whatever their content, not by their range like a 32-bit TIFF
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")


def _to_8bit(img, path, fmt=None):
    """Grayscale of more than 8 bits as 8-bit L, scaled as _wide_scale says."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    scale, _ = _wide_scale(a, img.mode, fmt, path)
    return Image.fromarray((a * scale).clip(0, 255).round().astype(np.uint8))


def _wide_scale(a: np.ndarray, mode: str, fmt: str | None, path) -> tuple[float, str]:
    """(factor to 0..255, how the values were read) for pixels `a` of a Pillow image of more than
    8 bits: 16-bit modes and files (mode I of a 16-bit format, `fmt`) by 255 / 65535 (not clipped, as
    convert("L") would); other 32-bit integer (I) and float (F) images by their value range: 0..255
    as is, 0..65535 as 16-bit, float 0..1 as fractions; other ranges are refused, not guessed. A folder
    whose 32-bit images are read in different ways is refused (read_header's value_kind, the folder loader)."""
    if not np.isfinite(a).all():
        raise DataError(f"{path}: the image has NaN or infinite pixel values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and fmt in SIXTEEN_BIT_I_FORMATS):
        return 255.0 / 65535.0, "16-bit"
    if lo < 0:
        raise DataError(f"{path}: mode {mode} pixel values {lo:g}..{hi:g} are negative; convert it to 8 or 16 bit")
    if mode == "F" and hi <= 1.0:
        return 255.0, "fractions of 1"
    if hi <= 255.0:
        return 1.0, "8-bit values"
    if hi <= 65535.0 and mode == "I":
        return 255.0 / 65535.0, "16-bit values"
    ranges = "0..255 or 0..65535" if mode == "I" else "0..1 or 0..255"
    raise DataError(f"{path}: mode {mode} pixel values {lo:g}..{hi:g} are outside {ranges}, the ranges con2 reads "
                    f"{'32-bit integer' if mode == 'I' else 'float'} images in; convert it to an 8- or 16-bit image")


def decode_image(path: Path, size: int | tuple[int, int] | None, keep_aspect: bool = False) -> np.ndarray:
    """One image file as uint8 [H, W, 1] (grayscale) or [H, W, 3] (colour), upright by its EXIF
    orientation (as DALI's decoder and photo viewers show it), resized to size x size or (H, W) when
    set (bicubic, as folder data sets are resized); keep_aspect (--resize shorter-side, a square
    size): the shorter side to that size, then the centred square. Grayscale of more than 8 bits:
    see _to_8bit; DICOM files: see con2.data.dicom.decode_dicom."""
    from PIL import Image, ImageOps

    if is_dicom(path):
        arr = np.array(resize_decoded(Image.fromarray(decode_dicom(path)), size, keep_aspect), dtype=np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr
    with Image.open(path) as img:
        fmt = img.format  # a transposed copy has none
        turned = _tiff_turned_here(path) if fmt == "TIFF" and img.tag_v2.get(_EXIF_ORIENTATION, 1) != 1 else None
        if turned is not None:
            img = turned
        else:
            img.load()
            img = ImageOps.exif_transpose(img)
        if img.mode in WIDE_GRAY_MODES:
            img = _to_8bit(img, path, fmt)
        elif img.mode in GRAY_MODES:
            img = img.convert("L")
        else:  # RGB, RGBA, P, CMYK, YCbCr, ...
            img = img.convert("RGB")
        img = resize_decoded(img, size, keep_aspect)
        arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)
    return arr[..., None] if arr.ndim == 2 else arr


def _tiff_turned_here(path: Path):
    """A TIFF with an EXIF orientation, loaded as stored and then turned upright here (None where
    its orientation entry is not the plain one this reads: Pillow's own turn then): Pillow (13) turns
    it itself while loading and scrambles the pixels of L, I;16 and RGBA images rotated by 90 degrees
    (orientations 5-8). The orientation entry of the first IFD is set to 1 in a copy of the bytes,
    so Pillow loads the pixels as stored."""
    import io
    import struct

    from PIL import Image

    turns = Image.Transpose  # as ImageOps.exif_transpose maps EXIF orientations
    turn = {2: turns.FLIP_LEFT_RIGHT, 3: turns.ROTATE_180, 4: turns.FLIP_TOP_BOTTOM, 5: turns.TRANSPOSE,
            6: turns.ROTATE_270, 7: turns.TRANSVERSE, 8: turns.ROTATE_90}
    data = bytearray(Path(path).read_bytes())
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(bytes(data[:4]))
    if order is None:  # BigTIFF
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (entries,) = struct.unpack_from(order + "H", data, ifd)
        for at in range(ifd + 2, ifd + 2 + 12 * entries, 12):
            tag, kind, count = struct.unpack_from(order + "HHI", data, at)
            if tag == _EXIF_ORIENTATION and kind == 3 and count == 1:  # one SHORT, held in the entry
                (orientation,) = struct.unpack_from(order + "H", data, at + 8)
                if orientation not in turn:
                    return None
                struct.pack_into(order + "H", data, at + 8, 1)
                img = Image.open(io.BytesIO(bytes(data)))
                img.load()
                return img.transpose(turn[orientation])
    except struct.error:  # an entry past the end of the file
        return None
    return None


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') of torchvision's Resize(size) of an H x W image: the shorter side becomes size, the
    longer one keeps the aspect ratio (truncated, as torchvision does)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def crop_corner(h: int, w: int, size: int) -> tuple[int, int]:
    """(top, left) of the centred size x size square of an H x W image (torchvision's CenterCrop offsets)."""
    if size > h or size > w:
        raise DataError(f"--center-crop {size} is larger than the {w}x{h} px images; resize them first (--image-size)")
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def resize_decoded(img, size, keep_aspect):
    """An L or RGB Pillow image resized as decode_image describes (itself when size is None)."""
    from PIL import Image

    if size is None:
        return img
    h, w = (size, size) if isinstance(size, int) else size
    if keep_aspect and img.size[0] != img.size[1]:
        hh, ww = shorter_side_size(img.size[1], img.size[0], h)
        top, left = crop_corner(hh, ww, h)  # the centred square, at torchvision's offsets
        return img.resize((ww, hh), Image.BICUBIC).crop((left, top, left + w, top + h))
    return img.resize((w, h), Image.BICUBIC) if img.size != (w, h) else img


def with_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """A decoded [H, W, C] image in the data set's channel count: a grayscale image in a data set
    with colour images gets 3 equal channels."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] < channels else image


def _png_late_orientation(path: Path) -> int | None:
    """The EXIF orientation of a PNG whose eXIf chunk follows its pixel data, found by walking the
    chunk headers (Pillow's getexif() would decode every pixel to reach it)."""
    from PIL import Image

    with open(path, "rb") as f:
        f.seek(8)  # the signature, checked by Image.open
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                exif = Image.Exif()
                exif.load(b"Exif\x00\x00" + f.read(length))
                return exif.get(_EXIF_ORIENTATION)
            if kind == b"IEND":
                break
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return None


def read_header(path: Path, value_kind: bool = False) -> tuple:
    """(channels, (H, W)) that decode_image(path, None) will return, from the file's header only
    (upright by its EXIF orientation, a PNG's eXIf chunk after its pixels included); a file that is
    not an image raises here, one whose pixel data is damaged only when decoded. DICOM: its header's
    Rows and Columns; a file con2 cannot decode (multi-frame, no decoder plugin, ...) raises here.
    With value_kind, a third item: how a 32-bit integer or float image's values are read, judged by
    their range ("8-bit values", "16-bit values", "fractions of 1"; its pixels are read for it), None
    for every other image, whose depth alone decides (the folder loader reads each folder one way)."""
    from PIL import Image

    if is_dicom(path):
        return (*dicom_header(path), None) if value_kind else dicom_header(path)
    with Image.open(path) as img:
        if value_kind:
            return (*_header(img, path), _value_kind(img, path))
        return _header(img, path)


def _value_kind(img, path: Path) -> str | None:
    if img.mode not in ("I", "F") or (img.mode == "I" and img.format in SIXTEEN_BIT_I_FORMATS):
        return None
    fmt = img.format
    img.load()  # its pixels (only of 32-bit images); after _header, which reads the header's orientation
    return _wide_scale(np.asarray(img, dtype=np.float64), img.mode, fmt, path)[1]


def _header(img, path: Path) -> tuple[int, tuple[int, int]]:
    w, h = img.size
    if img.format == "PNG" and "exif" not in img.info:
        orientation = _png_late_orientation(path)
    else:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    # transposed / rotated by 90 degrees; Pillow (11.1+) opens a TIFF with its upright size already
    if orientation in (5, 6, 7, 8) and not _tiff_sized_upright(img):
        h, w = w, h
    return (1 if img.mode in WIDE_GRAY_MODES + GRAY_MODES else 3), (h, w)


def _tiff_sized_upright(img) -> bool:
    """Whether Pillow reports this TIFF's size after its orientation (its stored width and height
    swapped), as newer versions do when they open it: swapping again would misname its size."""
    if img.format != "TIFF":
        return False
    stored = (img.tag_v2.get(256), img.tag_v2.get(257))  # ImageWidth, ImageLength
    return stored != img.size


def map_files(fn: Callable[[Path], object], files: list, skip_bad: bool, what: str = "decoding"
              ) -> tuple[list, list]:
    """[fn(file)] in file order on threads (None where a file fails), and the (file, why) pairs of
    those that failed. A failure raises a DataError naming the file unless skip_bad; for 1000 files
    or more progress is shown (con2.progress: a bar on a terminal, a line a minute into a log)."""
    from ..progress import progress as progress_bar

    def safe(p):
        try:
            return fn(p), None
        except (ImageChanged, MissingDependency):  # not damaged: skipping it would drop a good image
            raise
        except DataError as e:  # read, but refused (its message names the file)
            return None, str(e)
        except Exception as e:  # any decoder failure: truncated, not an image, unsupported
            return None, f"{p}: {type(e).__name__}: {e}"

    results = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            progress_bar(len(files), what, enabled=len(files) >= 1000, unit="images") as bar:
        for result in pool.map(safe, files):
            results.append(result)
            bar.update(1)
    bad = [(p, err) for p, (_, err) in zip(files, results) if err is not None]
    if bad and not skip_bad:
        raise DataError(f"cannot read image {bad[0][1]} (use --skip-bad-files to skip unreadable files)")
    return [r for r, _ in results], bad
