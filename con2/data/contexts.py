"""Context augmentations t_C (METHOD section 2) on uint8 image batches.

All transforms take and return uint8 tensors [..., C, H, W] and are deterministic.
More than two contexts are the compositions of several base transforms: the names
"invert,flip" give the 4 contexts identity, invert, flip, flip(invert(x)).
"""
from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch
from torchvision.transforms.v2 import functional as TF

ContextFn = Callable[[torch.Tensor], torch.Tensor]


def invert(x: torch.Tensor) -> torch.Tensor:
    """x -> 1 - x on [0, 1] images, i.e. 255 - x on uint8."""
    return 255 - x


def vflip(x: torch.Tensor) -> torch.Tensor:
    """Vertical flip (top <-> bottom); the horizontal flip belongs to the random views."""
    return x.flip(-2)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with torchvision's semantics (batched)."""
    return TF.equalize(x)


BASE_CONTEXTS: dict[str, ContextFn] = {"invert": invert, "flip": vflip, "equalize": equalize}

# Context codes of the native view kernel (csrc/views_math.h ContextBit): the transforms it applies
# itself while it reads a source pixel, so their images are never made.
KERNEL_CONTEXT_BITS = {"invert": 1, "flip": 2}


class ContextSet:
    """The K contexts of one configuration; context 0 is always the identity."""

    def __init__(self, names: str | Sequence[str]):
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        names = list(names)
        if not names:
            raise ValueError("at least one context transform is needed")
        unknown = [n for n in names if n not in BASE_CONTEXTS]
        if unknown:
            raise ValueError(
                f"unknown context {unknown[0]!r}; choose from {', '.join(BASE_CONTEXTS)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"context names repeat: {names}")
        self.base = tuple(names)
        # every subset of the base transforms, applied in the given order
        self.compositions: list[tuple[str, ...]] = [()]
        for r in range(1, len(names) + 1):
            self.compositions.extend(combinations(names, r))
        self._kernel_plan = self._make_kernel_plan()

    def __len__(self) -> int:
        return len(self.compositions)

    @property
    def name(self) -> str:
        return ",".join(self.base)

    def labels(self) -> list[str]:
        return ["+".join(c) if c else "original" for c in self.compositions]

    def apply(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Context k of uint8 images x [..., C, H, W]."""
        if x.dtype != torch.uint8:
            raise TypeError(f"context transforms take uint8 images, got {x.dtype}")
        return self.apply_names(self.compositions[k], x)

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.apply(k, x) for k in range(len(self))]

    def kernel_plan(self) -> tuple[list[tuple[str, ...]], list[tuple[int, int]]]:
        """See _make_kernel_plan (made once per ContextSet)."""
        return self._kernel_plan

    def _make_kernel_plan(self) -> tuple[list[tuple[str, ...]], list[tuple[int, int]]]:
        """How the native view kernel makes the K contexts without a copy per context.

        Returns (blocks, per_context): the image blocks to materialise (compositions of base
        transforms; block 0 is always the originals, i.e. ()) and for each context k the pair
        (block index, kernel code) such that context k = the kernel's code applied to that block.
        Invert and flip map pixels one to one, so the kernel reads them from the originals. Equalize
        depends on the image's histogram and is materialised together with the inverts before it;
        a flip commutes with it (it permutes pixels: same histogram, same lookup table), so flips
        stay in the code.
        """
        blocks: list[tuple[str, ...]] = [()]
        per_context = []
        for comp in self.compositions:
            if "equalize" in comp:
                block = tuple(n for n in comp if n != "flip")
                code = KERNEL_CONTEXT_BITS["flip"] if "flip" in comp else 0
            else:
                block, code = (), sum(KERNEL_CONTEXT_BITS[n] for n in comp)
            if block not in blocks:
                blocks.append(block)
            per_context.append((blocks.index(block), code))
        return blocks, per_context

    @staticmethod
    def apply_names(names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
        """The composition `names` (base transforms in order) of uint8 images x."""
        for name in names:
            x = BASE_CONTEXTS[name](x)
        return x
