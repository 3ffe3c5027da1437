"""Batch sources: where each training step's 2KN views come from.

A source yields, for a given epoch, view tensors in the con2 layout (see
con2.losses.view_labels) for this process's share of each global batch. Sources are
deterministic given (seed, epoch), so training resumes mid-epoch exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from .contexts import ContextSet
from .split import OneClassSplit
from .views import TensorViewPipeline, ViewConfig


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each global batch; the last short batch is dropped unless it is the only one."""
    steps = max(1, n // batch_size)
    return [(i * batch_size, min(n, (i + 1) * batch_size)) for i in range(steps)]


class GlobalBatches:
    """Bookkeeping every source shares: the global batches of an epoch and each rank's share."""

    def init_batches(self, n: int, batch_size: int, rank: int, world: int) -> None:
        self.batch_size = min(batch_size, n)
        self.batches = global_batches(n, self.batch_size)
        self.rank, self.world = rank, world

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def local_slice(self, start: int, stop: int) -> slice:
        """This rank's contiguous share of the global batch [start, stop)."""
        per = -(-(stop - start) // self.world)
        lo = start + self.rank * per
        return slice(lo, min(stop, lo + per))


class TensorBatchSource(GlobalBatches):
    """In-memory data held once on the training device as uint8; views made there."""

    kind = "tensor"

    def __init__(self, images: np.ndarray, contexts: ContextSet | None, view_cfg: ViewConfig, batch_size: int,
                 seed: int, device: torch.device, dtype=torch.float32, channels_last=False, rank=0, world=1):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.pipeline = TensorViewPipeline(contexts, view_cfg, dtype=dtype, channels_last=channels_last)
        self.seed, self.device = seed, device
        self.init_batches(len(images), batch_size, rank, world)

    def step_generator(self, epoch: int, step: int) -> torch.Generator:
        # rank-independent: every rank draws the same views as one process would
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + step)
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


def make_batch_source(kind: str, split: OneClassSplit, contexts, view_cfg, batch_size, seed, device,
                      dtype=torch.float32, channels_last=False, rank=0, world=1):
    """Resolve --pipeline (auto|tensor|dali|workers) to a batch source."""
    if kind == "auto":
        kind = "tensor"
        if split.train_files is not None and split.meta.get("in_memory") is False:
            from . import dali

            kind = "dali" if dali.available() else "workers"
    if kind == "tensor":
        return TensorBatchSource(split.train, contexts, view_cfg, batch_size, seed, device, dtype,
                                 channels_last, rank, world)
    if kind == "workers":
        from .workers import WorkerBatchSource

        return WorkerBatchSource(split, contexts, view_cfg, batch_size, seed, device, dtype, channels_last, rank, world)
    if kind == "dali":
        from .dali import DaliBatchSource

        return DaliBatchSource(split, contexts, view_cfg, batch_size, seed, device, dtype, channels_last, rank, world)
    raise ValueError(f"unknown pipeline {kind!r}; choose auto, tensor, dali or workers")
