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
        for name in self.compositions[k]:
            x = BASE_CONTEXTS[name](x)
        return x

    def apply_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.apply(k, x) for k in range(len(self))]
