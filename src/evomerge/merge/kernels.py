"""Merge kernels: tensors in, tensor out.

Semantics follow mergekit 0.1.5 (``mergekit/merge_methods/generalized_task_arithmetic.py``
and ``linear.py``), and the tests compare against ``mergekit.merge_methods.api.merge_tensors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sparsify import MagnitudeRanks, rescale_l1


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
    with task arithmetic"). mergekit's default for task_arithmetic is ``normalize=False``.
    Computed in fp32 and cast back, so bf16 checkpoints lose no precision in the sum."""
    base32 = base.float()
    deltas = [t.float() - base32 for t in tensors]
    merged = generalized_task_arithmetic(base32, deltas, weights, consensus=False, normalize=normalize, lambda_=lambda_)
    return merged.to(base.dtype)


def generalized_task_arithmetic(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """Combine (already sparsified) task vectors as mergekit's GeneralizedTaskArithmeticMerge
    does: weight them, optionally keep only entries that agree with the weighted-sum sign
    (TIES, Yadav et al. 2023), normalise by the weights that took part, scale by lambda."""
    stacked = torch.stack(list(deltas))
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * base.dim())
    stacked.mul_(w)
    if consensus:
        majority = (stacked.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
        mask = stacked.sign().to(base.dtype) == majority
        mixed = (stacked * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


def ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    ranks: Sequence[MagnitudeRanks],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    normalize: bool = True,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) from task vectors ranked once per run: trim each to
    its top ``density`` by magnitude, elect signs, average the agreeing entries."""
    kept = []
    for delta, rank, density in zip(deltas, ranks, densities, strict=True):
        masked = delta * rank.top_mask(density)
        kept.append(rescale_l1(delta, masked, rank.l1) if rescale and density < 1 else masked)
    return generalized_task_arithmetic(base, kept, weights, consensus=True, normalize=normalize, lambda_=lambda_)
