"""Merge kernels: tensors in, tensor out.

Semantics follow mergekit 0.1.5 (``mergekit/merge_methods/generalized_task_arithmetic.py``
and ``linear.py``), and the tests compare against ``mergekit.merge_methods.api.merge_tensors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average (Wortsman et al. 2022, "model soups")."""
    w = torch.tensor(weights, dtype=torch.float32, device=tensors[0].device)
    stacked = torch.stack([t.float() for t in tensors])
    out = (stacked * w.view(-1, *[1] * tensors[0].dim())).sum(0)
    if normalize:
        out = out / w.sum()
    return out.to(tensors[0].dtype)


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool = False,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """``base + lambda * sum_i w_i (theta_i - base)`` (Ilharco et al. 2023, "Editing models
    with task arithmetic"). mergekit's default for task_arithmetic is ``normalize=False``."""
    delta = torch.zeros_like(base, dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        delta += w * (t.float() - base.float())
    if normalize:
        delta /= sum(weights)
    return (base.float() + lambda_ * delta).to(base.dtype)
