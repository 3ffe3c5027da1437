"""NVIDIA DALI view pipeline for image folders (--pipeline dali; optional extra `con2[dali]`).

Files are read by `fn.readers.file` in this epoch's order, decoded by `fn.decoders.image`
("mixed", i.e. nvJPEG, on a GPU; "cpu" without one), resized to the split's image size, put into
every context (invert = 255 - x, flip = `fn.flip(vertical=1)`, equalize = `fn.equalize`) and given
two independent SimCLR views per context (`fn.random_resized_crop`, `fn.brightness_contrast`,
`fn.saturation`, `fn.hue`, grey via `fn.saturation(0)`, mirror + normalise in
`fn.crop_mirror_normalize`). Output: the con2 layout, block 2k+v = context k, view v.

Where DALI differs from torchvision (the tensor and worker pipelines), see docs/PERFORMANCE.md:
* equalize: `fn.equalize` is OpenCV's equalizeHist per channel (lut = round((cdf - cdf_min) * 255 /
  (N - cdf_min))); torchvision follows PIL (step = (N - count of the last used level) // 255,
  lut = (cdf_before + step // 2) // step). Levels differ by a few grey values; both are monotone
  and spread the histogram, so the context is the same in kind, not bit-identical.
* colour jitter runs in a fixed order (brightness+contrast, saturation, hue) instead of a random
  order per view; contrast blends towards the mid-grey 128 (DALI's contrast_center), not the
  image's mean grey; saturation and hue are linear maps in YIQ space (hue rotates the IQ plane by
  the angle, in degrees: factor * 360) rather than torchvision's HSV hue shift; each op rounds to
  uint8 as torchvision does on PIL images.
* random grey is `fn.saturation(0)` (DALI's luma weights), applied after the jitter as torchvision.
* the crop box sampler is DALI's own (same area/aspect ranges, 10 attempts, centre fallback) and the
  resize is DALI's antialiased linear filter.
* randomness comes from DALI's per-pipeline seed, derived from (seed, epoch, rank, start step): runs
  are deterministic for a given (seed, epoch, world size), but a resumed epoch or a different world
  size draws different (equally distributed) views, unlike the tensor and worker sources.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .contexts import ContextSet
from .dicom import is_dicom
from .errors import DataError
from .batches import GlobalBatches, epoch_permutation
from .split import OneClassSplit
from .views import ViewConfig

# con2 reads these (Pillow; DICOM with pydicom), DALI's image decoder does not (it takes JPEG, JPEG 2000,
# PNG, TIFF, BMP, PNM, WebP): --pipeline auto picks workers for them, --pipeline dali refuses them.
DALI_CANNOT_DECODE = {".gif", ".dcm", ".dicom"}


def cannot_decode(path) -> bool:
    """A file DALI's decoder cannot read: a GIF or a DICOM file (by suffix, or one named IM0001)."""
    return Path(path).suffix.lower() in DALI_CANNOT_DECODE or is_dicom(path)


def _name_unreadable(files: list[str], exc: Exception) -> str:
    """The message for a DALI decoding failure: the first of `files` that con2's own decoder cannot
    read either, named (DALI's message names none for some files), else DALI's message with the step's files."""
    from .decode import decode_image

    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for f in files:
        try:
            decode_image(Path(f), None)
        except Exception as e:  # noqa: BLE001 - any decoder failure names the file
            return f"cannot read image {f}: {type(e).__name__}: {e} (the DALI pipeline: {said})"
    return f"the DALI pipeline failed on one of {len(files)} training files from {files[0]} on: {said}"


def cannot_read_values(split: OneClassSplit) -> str | None:
    """Why DALI would decode a folder's 32-bit images other than con2 does (it reads float pixels as
    fractions of 1 and fails on 32-bit integers; con2 reads both by their range), or None."""
    kind = split.meta.get("wide_values")
    if kind in (None, "fractions of 1"):
        return None
    return f"its 32-bit integer or float images are read as {kind}, which DALI's decoder does not do"


def _import():
    import nvidia.dali as dali  # noqa: F401

    return dali


def available() -> bool:
    try:
        _import()
        return True
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False


def status() -> str:
    """One line for `con2 info`: the version, or why DALI cannot be used."""
    try:
        dali = _import()
    except Exception as e:  # noqa: BLE001
        return f"not available ({type(e).__name__}: {e}; pip install 'con2[dali]')"
    where = "GPU decode + augmentation" if torch.cuda.is_available() else "CPU pipelines only (no CUDA device)"
    return f"nvidia-dali {dali.__version__}: {where}"


def _build(files, batch_size, contexts, cfg, channels, hw, crop, seed, device_id, num_threads, keep_aspect=False):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        encoded, _ = fn.readers.file(files=files, random_shuffle=False, name="reader")
        img = fn.decoders.image(encoded, device="mixed" if gpu else "cpu",
                                output_type=types.GRAY if channels == 1 else types.RGB)
        if keep_aspect:  # --resize shorter-side: the shorter side to S, then the centred S x S
            img = _centre_square(_shorter_side_to(img, hw[0], fn, types), hw[0], fn, types)
        else:
            img = fn.resize(img, resize_x=hw[1], resize_y=hw[0], interp_type=types.INTERP_CUBIC, antialias=True)
        if crop:  # the split's centred crop (paper: resize 256, crop 224)
            img = _centre_square(img, crop, fn, types)
        outs = []
        compositions = [()] if contexts is None else contexts.compositions
        for comp in compositions:
            c = img
            for name in comp:
                if name == "invert":
                    c = fn.cast(255 - c, dtype=types.UINT8)
                elif name == "flip":
                    c = fn.flip(c, horizontal=0, vertical=1)
                elif name == "equalize":
                    c = fn.equalize(c)
            for _ in range(2):
                outs.append(_view(c, cfg, channels, fn, types))
        return tuple(outs)

    return pipe()


def _shorter_side_to(img, size: int, fn, types):
    """Each [H, W, C] image resized so its shorter side is `size`, the longer one int(size * long /
    short) as torchvision (con2.data.decode.shorter_side_size): resize_shorter rounds it instead."""
    shape = img.shape(dtype=types.INT32)
    h, w = shape[0], shape[1]
    tall = fn.cast(h > w, dtype=types.INT32)
    new_h = size + tall * ((size * h) // w - size)
    new_w = size + (1 - tall) * ((size * w) // h - size)
    return fn.resize(img, size=fn.cast(fn.stack(new_h, new_w), dtype=types.FLOAT), interp_type=types.INTERP_CUBIC,
                     antialias=True)


def _centre_square(img, size: int, fn, types):
    """The centred size x size square of each [H, W, C] image at the loader's anchors, Python's
    round((side - size) / 2) (torchvision's CenterCrop, con2.data.decode.crop_corner): fn.crop
    rounds halves up, a pixel off the images the run is scored on whenever side - size is odd."""
    shape = img.shape(dtype=types.INT32)

    def anchor(excess):  # round(excess / 2), halves to even, in DALI's integer arithmetic
        return excess // 2 + ((excess & 3) == 3)

    corner = fn.stack(anchor(shape[0] - size), anchor(shape[1] - size))
    return fn.slice(img, corner, np.array([size, size], np.int32), axes=[0, 1], normalized_anchor=False,
                    normalized_shape=False)


def _view(c, cfg: ViewConfig, channels, fn, types):
    x = fn.random_resized_crop(c, size=[cfg.size, cfg.size], random_area=list(cfg.scale),
                               random_aspect_ratio=list(cfg.ratio), num_attempts=10, antialias=True)
    b, con, s, h = cfg.jitter
    # ops whose probability or strength is 0 are left out of the graph (exact identity, less work)
    # (each on its own: saturation and hue jitter without brightness / contrast jitter is a valid view)
    colour = channels == 3 and (s > 0 or h > 0)
    if cfg.jitter_p > 0 and (b > 0 or con > 0 or colour):
        on = fn.random.coin_flip(probability=cfg.jitter_p)
        if b > 0 or con > 0:
            bf = fn.random.uniform(range=[max(0.0, 1 - b), 1 + b])
            cf = fn.random.uniform(range=[max(0.0, 1 - con), 1 + con])
            x = fn.brightness_contrast(x, brightness=on * bf + (1 - on), contrast=on * cf + (1 - on))
        if channels == 3 and s > 0:
            sf = fn.random.uniform(range=[max(0.0, 1 - s), 1 + s])
            x = fn.saturation(x, saturation=on * sf + (1 - on))
        if channels == 3 and h > 0:
            hf = fn.random.uniform(range=[-h, h])
            x = fn.hue(x, hue=on * hf * 360.0)
    if channels == 3 and cfg.gray_p > 0:
        g = fn.random.coin_flip(probability=cfg.gray_p)
        x = fn.saturation(x, saturation=fn.cast(1 - g, dtype=types.FLOAT))
    mirror = fn.random.coin_flip(probability=cfg.hflip_p) if cfg.hflip_p > 0 else 0
    return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                    mean=[255.0 * cfg.mean] * channels, std=[255.0 * cfg.std] * channels)


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    t = tl.as_tensor()
    if device.type == "cuda" and hasattr(t, "__dlpack__"):
        return torch.from_dlpack(t).clone()
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(t.shape(), dtype=torch.float32, device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(t))


class DaliBatchSource(GlobalBatches):
    """Views of split.train_files made by DALI; same interface as TensorBatchSource."""

    def __init__(self, split: OneClassSplit, contexts: ContextSet | None, view_cfg: ViewConfig, batch_size: int,
                 seed: int, device: torch.device, dtype=torch.float32, channels_last=False, rank=0, world=1,
                 num_threads: int = 2):
        if not available():
            raise RuntimeError(f"--pipeline dali: {status()}")
        if not split.train_files:
            raise ValueError(f"--pipeline dali needs an image-folder data set ({split.name} has no train files)")
        self.files = [str(f) for f in split.train_files]
        odd = [f for f in self.files if cannot_decode(f)]
        if odd:
            kind = "GIF" if Path(odd[0]).suffix.lower() == ".gif" else "DICOM"
            raise ValueError(f"--pipeline dali: DALI cannot decode {kind} files such as {odd[0]} "
                             f"({len(odd)} in the train split); use --pipeline tensor or workers")
        why = cannot_read_values(split)
        if why:
            raise ValueError(f"--pipeline dali: {why}; use --pipeline workers (or tensor, when the images fit)")
        self.channels = split.channels
        self.hw, self.crop = split.file_decoding
        self.keep_aspect = split.meta.get("resize") == "shorter-side"
        self.contexts, self.cfg = contexts, view_cfg
        self.init_batches(len(self.files), batch_size, rank, world)
        self.seed, self.device, self.dtype = seed, torch.device(device), dtype
        self.channels_last = channels_last
        self.num_threads = num_threads

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return epoch_permutation(len(self.files), self.seed, epoch)

    def batches_from(self, epoch: int, start_step: int = 0):
        """Yield (step, views) for steps start_step.. of this epoch (one DALI pipeline per call)."""
        steps = list(range(start_step, self.steps_per_epoch))
        if not steps:
            return
        perm = self.epoch_order(epoch).tolist()
        slices = [self.local_slice(*self.batches[s]) for s in steps]
        n_local = slices[0].stop - slices[0].start
        files = [self.files[perm[p]] for sl in slices for p in range(sl.start, sl.stop)]
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None  # None: CPU-only pipeline
        pipe_seed = ((self.seed * 1_000_003 + epoch) * 1009 + self.rank * 101 + start_step) % (2**31 - 1)
        pipe = _build(files, n_local, self.contexts, self.cfg, self.channels, self.hw, self.crop, pipe_seed, device_id,
                      self.num_threads, self.keep_aspect)
        pipe.build()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        try:
            for i, step in enumerate(steps):
                try:
                    outs = pipe.run()
                except Exception as exc:  # noqa: BLE001 - DALI names no file for some (a damaged PNG)
                    # the pipeline reads ahead: the failing file is in this step or the next few
                    raise DataError(_name_unreadable(files[i * n_local:(i + 4) * n_local], exc)) from exc
                views = torch.cat([_to_torch(o, self.device) for o in outs])
                yield step, views.to(self.device).to(dtype=self.dtype, memory_format=fmt)
        finally:
            del pipe
