"""How a model's input images are made from image files or arrays of other sizes: the run's
pre-processing, in one record that `con2 predict` follows and an exported detector bundle keeps,
so that a new image gets the score its pixels would get inside `con2 evaluate`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputFormat:
    """size: (H, W) images are resized to, before the centre crop; channels: 1 or 3;
    center_crop: the side of the centred square then kept (None: none); keep_aspect: --resize
    shorter-side (the shorter side to the size, then the centred square); folder_decoding: files
    are decoded at `size` with Pillow's bicubic filter as the folder loader decodes them (else
    resized with the array loaders' antialiased bilinear resize); source_size: (H, W) of the data
    set's images before its loader resized them, files far from it are warned of (None: unknown, a
    folder of files resized to the run's size, so none are)."""

    size: tuple[int, int]
    channels: int
    center_crop: int | None = None
    keep_aspect: bool = False
    folder_decoding: bool = False
    source_size: tuple[int, int] | None = None

    @classmethod
    def of_run(cls, cfg, split) -> "InputFormat":
        """The pre-processing of a run's data set (its config and its loaded split)."""
        size, crop = split.file_decoding
        # a folder's files have shapes of their own: known only when the run did not resize them
        source = split.meta.get("source_size") if cfg.dataset != "folder" else None if cfg.image_size else size
        return cls(size=size, channels=split.channels, center_crop=None if crop is None else int(crop),
                   keep_aspect=cfg.resize == "shorter-side", folder_decoding=cfg.dataset == "folder",
                   source_size=tuple(int(v) for v in source) if source else None)

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of the model's input images."""
        return (self.center_crop, self.center_crop) if self.center_crop else self.size

    def in_channels(self, image: np.ndarray) -> np.ndarray:
        """One uint8 [H, W, C] image in this format's channel count, as con2 predict converts files:
        grey to RGB by repetition (as the loaders do), colour to grey by Pillow's luma."""
        if image.shape[-1] == self.channels:
            return image
        if self.channels == 3:
            return np.repeat(image, 3, axis=-1)
        from PIL import Image

        return np.asarray(Image.fromarray(image).convert("L"), dtype=np.uint8)[..., None]

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw uint8 [N, H, W, C] images of any size as the model's input: resized as the run's
        images were (a folder's with Pillow's bicubic filter, as its files are decoded; an array
        data set's with the antialiased bilinear resize), then centre-cropped, in this format's
        channel count (in_channels). Every image is: one that happens to have the crop's size is
        still resized first, as con2 predict would."""
        from .images import center_crop_array
        from .datasets import resize_images

        if images.shape[-1] != self.channels:
            images = np.stack([self.in_channels(im) for im in images])

        if self.folder_decoding and len(images):
            from PIL import Image

            from .decode import resize_decoded

            resized = np.stack([np.asarray(resize_decoded(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im),
                                                          self.size, self.keep_aspect), dtype=np.uint8)
                                for im in images]).reshape(len(images), *self.size, self.channels)
        else:
            resized = resize_images(images, self.size, self.keep_aspect)
        return center_crop_array(resized, self.center_crop)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "InputFormat":
        """The inverse of to_json; a bad record is a ValueError naming it."""
        try:
            fmt = cls(size=(int(d["size"][0]), int(d["size"][1])), channels=int(d["channels"]),
                      center_crop=None if d["center_crop"] is None else int(d["center_crop"]),
                      keep_aspect=bool(d["keep_aspect"]), folder_decoding=bool(d["folder_decoding"]),
                      source_size=None if d["source_size"] is None else (int(d["source_size"][0]),
                                                                         int(d["source_size"][1])))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"the input format {d!r} is not valid ({type(exc).__name__}: {exc})") from None
        if fmt.channels not in (1, 3) or min(fmt.size) < 1 or (fmt.center_crop is not None and not
                                                               0 < fmt.center_crop <= min(fmt.size)):
            raise ValueError(f"the input format {d!r} is not valid (channels 1 or 3, a positive size, "
                             "a crop no larger than it)")
        return fmt
