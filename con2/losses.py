"""Training objectives (METHOD section 5). Thin wrappers over `con2.ops`.

View layout used everywhere in con2: for K contexts and 2 augmentations a batch of N
samples gives M = 2KN views ordered as blocks [(context k, view v)] of N rows,
block index 2k + v. `view_labels(N, K)` returns the matching label vectors.
"""
from __future__ import annotations

import torch

from . import ops

def view_labels(n: int, n_contexts: int = 2, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context_labels, sample_ids), each [2 * n_contexts * n], for the con2 view layout."""
    blocks = torch.arange(2 * n_contexts, device=device)
    context_labels = (blocks // 2).repeat_interleave(n)
    sample_ids = torch.arange(n, device=device).repeat(2 * n_contexts)
    return context_labels, sample_ids


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon L_out over L2-normalised rows z [M, D]; rows without a positive contribute 0. The inputs
    are checked by con2.ops (the native kernels' rules, con2.ops.reference.check_loss_inputs)."""
    return ops.supcon_loss(z, labels, temperature)


def con2_loss(
    z_context: torch.Tensor,
    z_content: torch.Tensor,
    context_labels: torch.Tensor,
    sample_ids: torch.Tensor,
    alpha: float,
    temperature: float = 0.07,
) -> torch.Tensor:
    """L_Context (labels = context) + alpha * L_Content (labels = sample)."""
    if z_context.shape != z_content.shape:
        raise ValueError(
            f"z_context {tuple(z_context.shape)} and z_content {tuple(z_content.shape)} differ in shape"
        )
    return ops.con2_loss(z_context, z_content, context_labels, sample_ids, alpha, temperature)


def context_only_loss(z_context: torch.Tensor, context_labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Ablation: L_Context alone (the content head is unused)."""
    return supcon_loss(z_context, context_labels, temperature)


def content_only_loss(z_content: torch.Tensor, sample_ids: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Ablation: L_Content alone, not annealed (the context head is unused)."""
    return supcon_loss(z_content, sample_ids, temperature)


def simclr_loss(z: torch.Tensor, sample_ids: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """NT-Xent: SupCon where each view's only positive is the other view of its sample (tau 0.07
    by default as every loss here, METHOD section 5; SimCLR's own papers use 0.5)."""
    return supcon_loss(z, sample_ids, temperature)
