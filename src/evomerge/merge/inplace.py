"""Writing a merge into a live model, with no second model allocated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .kernels import task_arithmetic

StateDict = Mapping[str, torch.Tensor]


@torch.no_grad()
def task_arithmetic_into(
    model: torch.nn.Module, base: StateDict, endpoints: Sequence[StateDict], weights: Sequence[float]
) -> torch.nn.Module:
    """Overwrite ``model``'s parameters with the task-arithmetic merge, tensor by tensor."""
    for name, param in model.named_parameters():
        param.copy_(task_arithmetic(base[name], [e[name] for e in endpoints], weights))
    return model
