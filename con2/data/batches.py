"""Global-batch bookkeeping every batch source shares: the epoch's sample order, its global
batches, and each DDP rank's contiguous share of a batch (so world size never changes a step)."""
from __future__ import annotations

import torch


# torch's manual_seed takes a signed 64-bit value: the derived seeds are reduced into it, so any
# --seed >= 0 works (a large one overflowed; the values of seeds that fitted are unchanged)
SEED_MODULUS = 2**63


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) % SEED_MODULUS)
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
