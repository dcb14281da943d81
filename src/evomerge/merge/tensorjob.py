"""What a merge fast path is given: one tensor of one candidate (``TensorJob``), and the
merger's services it may call (``MergeContext``): the tensor's parameters as mergekit
resolves them, fp32 chunks of task vectors, and the once-per-run tables.

A protocol rather than the ``Merger`` itself, so the fast paths (one file per method
family) import nothing above them and the engine imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from .masks import Sweep
from .recipe import Recipe

T = TypeVar("T")

#: ``(offset, reference, task vectors of the rows, out)`` per fp32 chunk (``MergeContext.chunks``).
Chunk = tuple[int, torch.Tensor, list[torch.Tensor], torch.Tensor]


class MergeContext(Protocol):
    """The merger as a fast path sees it."""

    names: list[str]  # the pool's models, the reference first
    device: torch.device
    fused: bool  # the CPU's fused one-pass kernels (``fused.py``) rather than eager torch

    @property
    def num_layers(self) -> int: ...

    def row(self, model: str) -> int:
        """The model's row in every stack (0: the reference the task vectors are taken against)."""
        ...

    def inputs(self, recipe: Recipe) -> list[str]:
        """The recipe's inputs in mergekit's order: its models, then the base if not among them."""
        ...

    def tensor_params(self, recipe: Recipe, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Shared and per-input parameter values for one tensor, resolved as mergekit does."""
        ...

    def output_shape(self, name: str) -> tuple[int, ...]: ...

    def chunks(
        self,
        stack: torch.Tensor,
        rows: Sequence[int],
        target: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        raw: bool = False,
    ) -> Iterator[Chunk]:
        """fp32 chunks of the reference and the rows' task vectors; ``out`` lands in ``target``.
        With a 16-bit ``dtype``, the values are those mergekit computes in it: the inputs
        rounded to ``dtype``, their difference rounded again (exact in fp32). ``raw``: from a
        bf16 stack in fp32 on the CPU, the rows' own bf16 entries, for a fused kernel."""
        ...

    def sweep(self, stack: torch.Tensor, rows: list[int], dtype: torch.dtype = torch.float32) -> Sweep:
        """Chunks of the task vectors of ``rows``, for the mask scans and L1 norms."""
        ...

    def stats(
        self, name: str, stack: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each task vector's magnitude histogram and L1 norm (index ``r``; row 0 unused)."""
        ...

    def level_table(
        self, name: str, stack: torch.Tensor, row: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> np.ndarray:
        """Cumulative ``sum |delta|`` by random level: DARE's kept L1 norm for any density."""
        ...

    def once(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """A value computed once per run (the tensors do not change between candidates)."""
        ...


@dataclass(frozen=True)
class TensorJob:
    """One tensor of one candidate: ``stack`` holds the models' tensors (row 0 the reference),
    flattened, in their checkpoints' dtype; the merge is written into ``target`` in place.
    ``dtype`` is what mergekit would compute in: fp32, or the recipe's bf16/fp16."""

    merger: MergeContext
    recipe: Recipe
    name: str
    stack: torch.Tensor
    target: torch.Tensor
    dtype: torch.dtype = torch.float32


FastPath = Callable[[TensorJob], None]
