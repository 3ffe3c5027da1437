"""Image collections, walked chunk by chunk.

`FolderImages` is what an image folder too large to hold in memory becomes (con2.data.datasets
decides): a uint8 [N, H, W, C] array-like over the files that decodes on access, exactly as the
loader would have decoded them. Indexing by an int decodes one image; slices, index arrays and
masks give another FolderImages (as numpy gives another array); `np.asarray` decodes them all.

`ImageSet` is the one way the scorers and the data fingerprint read any collection (a uint8
[N, C, H, W] tensor, a uint8 [N, H, W, C] array or a FolderImages): checked once, then read in
[n, C, H, W] chunks, so no consumer needs the whole collection decoded or copied at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .decode import DataError, ImageChanged, crop_corner, decode_image, map_files, with_channels
from .split import to_nchw

DAMAGED = (" (its header was read when the folder was loaded: its pixel data is damaged or it changed since; "
           "--skip-bad-files cannot drop it from a folder decoded on access: remove or replace it)")
# A chunk of uint8 pixels read at once by ImageSet.chunks (one decode / one host-to-device copy).
CHUNK_BYTES = 256 * 2**20


def center_crop_array(images, size: int | None):
    """The centred size x size square of uint8 [N, H, W, C] images (a FolderImages stays one)."""
    if size is None:
        return images
    if isinstance(images, FolderImages):
        return images.center_cropped(size)
    top, left = crop_corner(*images.shape[1:3], size)
    return np.ascontiguousarray(images[:, top:top + size, left:left + size])


class FolderImages:
    """uint8 [N, H, W, C] images decoded from `files` on access: each resized to `hw` (H, W) as the
    folder loader resizes (keep_aspect: --resize shorter-side) (resize=False: each must already be H x W, as the loader requires without
    --image-size), then its centred `crop` square (None: no crop), in `channels` channels."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files, hw: tuple[int, int], channels: int, crop: int | None = None, resize: bool = True,
                 keep_aspect: bool = False):
        self.files = [str(f) for f in files]
        self.hw = (int(hw[0]), int(hw[1]))
        self.channels = int(channels)
        self.crop = None if crop is None else int(crop)
        self.resize = bool(resize)
        self.keep_aspect = bool(keep_aspect)  # --resize shorter-side (decode_image)

    def _like(self, files, crop) -> "FolderImages":
        return FolderImages(files, self.hw, self.channels, crop, self.resize, self.keep_aspect)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h, w = (self.crop, self.crop) if self.crop else self.hw
        return (len(self.files), h, w, self.channels)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"FolderImages({len(self)} files, shape={self.shape})"

    def center_cropped(self, size: int | None) -> "FolderImages":
        if size is None:
            return self
        crop_corner(*self.hw, size)  # refuses a crop larger than the images, now rather than at first access
        return self._like(self.files, size)

    def _decode(self, path: str, hint: str = DAMAGED) -> np.ndarray:
        """One image as the loader decodes it; a failure is a DataError naming the file, with `hint`
        (after loading: the file is damaged; while loading, "": the loader's own message follows)."""
        try:
            image = with_channels(decode_image(Path(path), self.hw if self.resize else None, self.keep_aspect),
                                  self.channels)
        except DataError:
            raise
        except Exception as e:  # damaged past its header (the loader read the header only)
            lead = "cannot read image " if hint else ""  # while loading, map_files' message leads
            raise DataError(f"{lead}{path}: {type(e).__name__}: {e}{hint}") from e
        if image.shape != (*self.hw, self.channels):
            h, w, c = image.shape
            raise ImageChanged(f"{path} decodes to {w}x{h} px with {c} channel(s), but the folder's images are "
                               f"{self.hw[1]}x{self.hw[0]} with {self.channels}"
                               f"{hint or ' (as their headers say); --image-size S makes every image S x S'}")
        return center_crop_array(image[None], self.crop)[0]

    def load(self, skip_bad: bool = False) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """(every image in one uint8 array, the (file, why) pairs left out), as the folder loader holds a part in
        memory: decoded straight into the array, so the images are never held twice. A file that
        cannot be decoded raises a DataError naming it, or with skip_bad is left out (the rows after
        it move up in place)."""
        out, failed = self._decode_rows("", skip_bad)
        if not failed:
            return out, []
        gone = {i for (i, _), _ in failed}
        kept = [i for i in range(len(self.files)) if i not in gone]
        for j, i in enumerate(kept):  # i >= j: each row moves up into a row already read
            if i != j:
                out[j] = out[i]
        return out[:len(kept)], [(path, why) for (_, path), why in failed]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._decode(self.files[key])
        picked = np.arange(len(self.files))[key]  # slices, index arrays and masks, as numpy reads them
        return self._like([self.files[i] for i in np.atleast_1d(picked)], self.crop)

    def _decode_rows(self, hint: str, skip_bad: bool) -> tuple[np.ndarray, list]:
        """Every image decoded straight into one uint8 array (never a second copy of the images), and
        ((row, file), why) of those that failed (map_files: raised unless skip_bad)."""
        out = np.empty(self.shape, np.uint8)

        def put(item):
            out[item[0]] = self._decode(item[1], hint)

        _, failed = map_files(put, list(enumerate(self.files)), skip_bad)
        return out, failed

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out, failed = self._decode_rows(DAMAGED, skip_bad=True)
        for (i, path), _ in failed:  # decoded again here: one still unreadable raises the DataError naming it
            out[i] = self._decode(path)
        return out if dtype is None else out.astype(dtype)


class ImageSet:
    """A uint8 image collection checked once and read in [n, C, H, W] tensor chunks.

    images: a uint8 [N, C, H, W] tensor, or a uint8 [N, H, W, C] / [N, H, W] array or FolderImages,
    or an ImageSet (its images under its own name, given where it was made). shape: (N, C, H, W).
    expect() checks it against what a consumer needs.
    """

    def __init__(self, images, name: str = "images"):
        if isinstance(images, ImageSet):
            images, name = images.images, images.name
        if isinstance(images, torch.Tensor):
            dtype_ok = images.dtype == torch.uint8
            shape = tuple(images.shape) if images.dim() == 4 else None
        elif isinstance(images, (np.ndarray, FolderImages)):
            dtype_ok, s = images.dtype == np.uint8, tuple(images.shape)
            shape = (s[0], s[3], s[1], s[2]) if len(s) == 4 else (s[0], 1, s[1], s[2]) if len(s) == 3 else None
        else:
            raise TypeError(f"{name} must be a uint8 tensor [N, C, H, W] or array [N, H, W, C], "
                            f"got {type(images).__name__}")
        if not dtype_ok:
            raise TypeError(f"{name} must be uint8 in 0..255, got {images.dtype}")
        if shape is None:
            layout = "[N, C, H, W]" if isinstance(images, torch.Tensor) else "[N, H, W, C]"
            raise ValueError(f"{name} must be {layout}, got shape {tuple(images.shape)}")
        if shape[0] == 0:
            raise ValueError(f"{name} is empty")
        self.images, self.shape, self.name = images, shape, name

    def expect(self, channels: int | None = None, size: tuple[int, int] | None = None) -> "ImageSet":
        """self, if the images have `channels` channels and spatial `size` (H, W) (None: any); else a
        clear error naming the images."""
        if channels is not None and self.shape[1] != channels:
            raise ValueError(f"{self.name} have {self.shape[1]} channel(s), the model expects {channels}")
        if size is not None and tuple(self.shape[2:]) != tuple(size):
            raise ValueError(f"{self.name} are {self.shape[3]}x{self.shape[2]} px, "
                             f"the model was trained on {size[1]}x{size[0]} px")
        return self

    def __len__(self) -> int:
        return self.shape[0]

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """Images start..stop as a uint8 [n, C, H, W] tensor (on the collection's device)."""
        return to_nchw(self.images[start:stop])  # a tensor as it is; an array or FolderImages decoded, NHWC -> NCHW

    def chunk_rows(self, multiple: int = 1, chunk_bytes: int = CHUNK_BYTES) -> int:
        """Images per chunk: about chunk_bytes of pixels, a multiple of `multiple` (a batch size)."""
        per_image = max(1, int(np.prod(self.shape[1:])))
        return max(multiple, chunk_bytes // per_image // multiple * multiple)

    def chunks(self, rows: int):
        """Yield (start, uint8 [n, C, H, W] chunk) over the whole collection."""
        for start in range(0, len(self), rows):
            yield start, self.chunk(start, min(len(self), start + rows))
