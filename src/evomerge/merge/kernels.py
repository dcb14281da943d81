"""The eager (any-device) combination step of mergekit's task-arithmetic family.

Semantics and order of operations follow mergekit 0.1.5
(``mergekit/merge_methods/generalized_task_arithmetic.py``); the CPU path fuses the
same arithmetic (``fused.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
