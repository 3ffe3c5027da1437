"""Batch sources: where each training step's 2KN views come from.

A source yields, for a given epoch, view tensors in the con2 layout (see
con2.losses.view_labels) for this process's share of each global batch. The tensor and worker
sources are deterministic given (seed, epoch), so training resumes mid-epoch exactly; DALI's
draws other (equally distributed) views after a resume (con2.data.dali).
"""
from __future__ import annotations

import numpy as np
import torch

from . import dali
from .batches import SEED_MODULUS, GlobalBatches, epoch_permutation
from .contexts import ContextSet
from .split import OneClassSplit, to_nchw
from .views import TensorViewPipeline, ViewConfig
from .workers import WorkerBatchSource


class TensorBatchSource(GlobalBatches):
    """In-memory data held once on the training device as uint8; views made there."""

    def __init__(self, images: np.ndarray, contexts: ContextSet | None, view_cfg: ViewConfig, batch_size: int,
                 seed: int, device: torch.device, dtype=torch.float32, channels_last=False, rank=0, world=1):
        self.images = to_nchw(images).to(device)
        self.pipeline = TensorViewPipeline(contexts, view_cfg, dtype=dtype, channels_last=channels_last)
        self.seed, self.device = seed, device
        self.init_batches(len(images), batch_size, rank, world)

    def step_generator(self, epoch: int, step: int) -> torch.Generator:
        # rank-independent: every rank draws the same views as one process would; distinct per step
        # while an epoch has fewer than 100,003 steps (6.4M images at batch 64: the tensor pipeline holds
        # its images in memory, far fewer)
        g = torch.Generator(device=self.device)
        g.manual_seed(((self.seed * 1_000_003 + epoch) * 100_003 + step) % SEED_MODULUS)
        return g

    def batches_from(self, epoch: int, start_step: int = 0):
        """Yield (step, views) for steps start_step.. of this epoch.

        Under DDP each rank makes the views of the whole global batch (cheap next to the
        network) and keeps its samples' rows, so world size never changes the augmentations.
        """
        perm = epoch_permutation(len(self.images), self.seed, epoch)
        for step in range(start_step, self.steps_per_epoch):
            start, stop = self.batches[step]
            idx = perm[start:stop].to(self.device)
            views = self.pipeline(self.images[idx], self.step_generator(epoch, step))
            if self.world > 1:
                local = self.local_slice(start, stop)
                blocks = views.view(-1, stop - start, *views.shape[1:])
                views = blocks[:, local.start - start : local.stop - start].reshape(-1, *views.shape[1:])
            yield step, views


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether the tensor pipeline may hold nbytes of training images on `device`: at most half of
    its free memory on a GPU (the model, its activations and the views need the rest)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def resolve_pipeline(kind: str, split: OneClassSplit, device) -> str:
    """--pipeline auto -> tensor when the training images are held in memory and fit the device; else DALI
    for an image folder DALI decodes as con2 does, when it is installed; else workers. Other kinds as given."""
    if kind != "auto":
        return kind
    if isinstance(split.train, np.ndarray) and fits_on_device(split.train.nbytes, torch.device(device)):
        return "tensor"
    files = split.train_files or []
    if (files and dali.available() and not dali.cannot_read_values(split)
            and not any(dali.cannot_decode(f) for f in files)):
        return "dali"
    return "workers"


def make_batch_source(kind: str, split: OneClassSplit, contexts, view_cfg, batch_size, seed, device,
                      dtype=torch.float32, channels_last=False, rank=0, world=1, workers=2):
    """The batch source of --pipeline tensor|dali|workers, or auto (resolve_pipeline); `workers`:
    the DataLoader processes of the workers pipeline."""
    kind = resolve_pipeline(kind, split, device)
    if kind == "tensor":
        return TensorBatchSource(split.train, contexts, view_cfg, batch_size, seed, device, dtype,
                                 channels_last, rank, world)
    if kind == "workers":
        return WorkerBatchSource(split, contexts, view_cfg, batch_size, seed, device, dtype, channels_last, rank, world,
                                 num_workers=workers)
    if kind == "dali":
        return dali.DaliBatchSource(split, contexts, view_cfg, batch_size, seed, device, dtype, channels_last, rank, world)
    raise ValueError(f"unknown pipeline {kind!r}; choose auto, tensor, dali or workers")
