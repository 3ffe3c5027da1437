"""Per-sample torchvision view pipeline in DataLoader worker processes (--pipeline workers).

The classic SimCLR input pipeline: each worker takes one sample, applies every context, then two
independent torchvision views per context (PIL: RandomResizedCrop(size, scale=(0.08, 1)) with
antialiasing, RandomHorizontalFlip, RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
RandomGrayscale(0.2), normalise 0.5/0.5). The collate puts the 2K views of the batch in the con2
layout (block 2k+v = context k, view v; see con2.losses.view_labels).

It is the reference the tensor pipeline is benchmarked against, and the fallback for image
folders too large to hold in memory when DALI is missing.

Determinism: every sample reseeds torch's RNG from (seed, epoch, position in the epoch) before its
transforms, so views do not depend on the number of workers, on which worker ran the sample, on the
DDP world size, or on where a resumed epoch starts.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .batches import GlobalBatches, epoch_permutation
from .contexts import ContextSet
from .split import OneClassSplit
from .views import ViewConfig


def view_transform(cfg: ViewConfig, channels: int) -> v2.Compose:
    """torchvision's SimCLR view T on a PIL image -> float tensor [C, size, size]."""
    return v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip_p),
        v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.gray_p),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([cfg.mean] * channels, [cfg.std] * channels),
    ])


# How sample_seed mixes its parts; checkpoints record it, so a resume across a change is told
# (1: a stride of 100,003 positions, so epoch e's position p + 100,003 drew epoch e + 1's position p views)
VIEW_SEEDS = 2


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one sample's views: distinct for every (epoch, position) of a run while positions
    stay below 2**32 and epochs below 2**31 (modulo 2**63: a per-run base plus epoch * 2**32 + position)."""
    return (((seed * 1_000_003 + epoch) << 32) + position) % (2**63)


class _ViewDataset(Dataset):
    """Item (epoch, position, sample index) -> the sample's 2K views [2K, C, S, S]."""

    def __init__(self, images, channels, contexts, cfg, seed):
        self.images, self.channels = images, channels  # a uint8 [N, H, W, C] array or FolderImages
        self.contexts, self.cfg, self.seed = contexts, cfg, seed
        self.transform = view_transform(cfg, channels)

    def __len__(self):
        return len(self.images)

    def _sample(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)

    def __getitem__(self, item):
        epoch, position, i = item
        x = self._sample(i)
        ctx = [x] if self.contexts is None else self.contexts.apply_all(x)
        torch.manual_seed(sample_seed(self.seed, epoch, position))
        views = []
        for c in ctx:
            pil = Image.fromarray(c[0].numpy() if self.channels == 1 else c.permute(1, 2, 0).numpy())
            views += [self.transform(pil), self.transform(pil)]
        return torch.stack(views)


def _collate(items: list[torch.Tensor]) -> torch.Tensor:
    # [N, 2K, C, S, S] -> [2K * N, C, S, S]: block 2k+v holds view v of context k of every sample
    x = torch.stack(items)
    return x.transpose(0, 1).reshape(-1, *x.shape[2:])


class WorkerBatchSource(GlobalBatches):
    """DataLoader (num_workers processes) over split.train: an array in memory, or the files of an
    image folder decoded by the workers (FolderImages) when it is larger than memory."""

    def __init__(self, split: OneClassSplit, contexts: ContextSet | None, view_cfg: ViewConfig, batch_size: int,
                 seed: int, device: torch.device, dtype=torch.float32, channels_last=False, rank=0, world=1,
                 num_workers: int = 2):
        self.dataset = _ViewDataset(split.train, split.channels, contexts, view_cfg, seed)
        self.n = len(split.train)
        self.init_batches(self.n, batch_size, rank, world)
        self.seed, self.device, self.dtype = seed, torch.device(device), dtype
        self.channels_last = channels_last
        self.num_workers = num_workers

    def _batch_items(self, epoch: int, start_step: int) -> list[list[tuple[int, int, int]]]:
        perm = epoch_permutation(self.n, self.seed, epoch).tolist()
        out = []
        for step in range(start_step, self.steps_per_epoch):
            sl = self.local_slice(*self.batches[step])
            out.append([(epoch, pos, perm[pos]) for pos in range(sl.start, sl.stop)])
        return out

    def batches_from(self, epoch: int, start_step: int = 0):
        """Yield (step, views) for steps start_step.. of this epoch."""
        loader = DataLoader(self.dataset, batch_sampler=self._batch_items(epoch, start_step), collate_fn=_collate,
                             num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                             persistent_workers=False, prefetch_factor=2 if self.num_workers else None)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for step, views in enumerate(loader, start=start_step):
            yield step, views.to(self.device, non_blocking=True).to(dtype=self.dtype, memory_format=fmt)
