"""The in-memory merge engine: a recipe in, merged tensors written into a live model.

A candidate is merged tensor by tensor. The models' tensors come from a
``TensorCache`` in the tier the memory plan chose (``memory.py``, ``cache.py``), in the
checkpoints' own dtype; task vectors are formed in fp32 a chunk at a time
(``Merger.chunks``), merged, and written into the live parameter in its dtype, so no
fp32 copy of a model, nor of a whole tensor, is made (except by DELLA and the mergekit
fallback, per tensor). Per method, dispatched by name:

- a fast path where ``fastpaths.FAST_PATHS`` has one (one file per family: ``linear.py``
  for linear and slerp, ``gta.py`` for task arithmetic, TIES, DARE, breadcrumbs and DELLA,
  ``select.py`` for ``layer_select``), given a ``TensorJob`` and calling back the
  merger's parameters, chunks and tables (``tensorjob.MergeContext``);
- every other mergekit method goes through ``mergekit.merge_methods.api.merge_tensors``,
  and so do the other methods when the recipe asks to compute in bf16/fp16 (``dtype``),
  so the result is mergekit's, bit for bit. Task arithmetic, TIES, DARE and breadcrumbs
  keep their fast path in bf16/fp16: their masks are found as in fp32, and the
  arithmetic runs in that dtype, op for op as mergekit runs it (``gta.py``).

Parameter settings (scalars, gradients over layers, ``filter`` conditions) are resolved
per tensor by mergekit's own resolver, so they mean what they mean in mergekit.
Embedding and lm_head rows are aligned when vocabularies differ (``models/vocab.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import torch

from ..errors import CheckpointError, MemoryBudgetError, MergeConfigError
from ..models.groups import tensor_group
from ..models.pool import ModelPool
from . import masks
from .cache import TensorCache
from .fastpaths import FAST_PATHS, HALF_FAST_METHODS
from .memory import MemoryPlan, plan
from .methods import get_method
from .recipe import Recipe, thaw
from .tensorjob import Chunk, TensorJob

T = TypeVar("T")

log = logging.getLogger(__name__)

#: dtypes a recipe may compute in through the fast paths; others go through mergekit
_FP32 = (None, "float32", "fp32")


class Merger:
    """Merges recipes over one set of models into a live model, as often as asked.

    ``models[0]`` is the reference the task vectors are taken against: the recipes'
    base model where they have one. ``tier`` and ``memory_budget`` place the models'
    tensors (``memory.plan``); an impossible budget raises ``MemoryBudgetError`` here,
    before any tensor is read. ``live=False`` plans for a merge streamed to disk.
    """

    def __init__(
        self,
        pool: ModelPool,
        *,
        device: torch.device | str = "cpu",
        fused: bool | None = None,
        tier: str = "auto",
        memory_budget: int | str | None = None,
        live: bool = True,
        tokenizer_source: str | None = None,
        unsafe_truncate_embeddings: bool = False,
    ) -> None:
        if tokenizer_source == "union":
            raise MergeConfigError(
                "tokenizer_source: union builds a new vocabulary (mergekit's vocabulary surgery); "
                "use tokenizer_source: base or a model, or run the config with mergekit-yaml"
            )
        self.pool = pool
        self.tokenizer_source = tokenizer_source
        self.unsafe_truncate_embeddings = unsafe_truncate_embeddings
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MergeConfigError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use device='cpu'")
        self.fused = self.device.type == "cpu" if fused is None else fused
        if self.fused and self.device.type != "cpu":
            raise MergeConfigError("the fused kernels run on the CPU; use fused=None or False on other devices")
        self.plan: MemoryPlan = plan(pool, self.device, tier=tier, budget=memory_budget, live=live)
        log.info("%s", self.plan.describe())
        self.cache = TensorCache(
            pool,
            self.device,
            self.plan.tier,
            tokenizer_source=tokenizer_source,
            unsafe_truncate_embeddings=unsafe_truncate_embeddings,
            cached=self.plan.cached,
        )
        self.names = [m.name for m in pool.models]
        self._scratch: torch.Tensor | None = None
        self._skip = {n for n in pool.tensor_names if not pool.base.dtype(n).is_floating_point}
        self._warned: set[tuple[str, str]] = set()
        #: The last recipe whose parameters are the same for every tensor, and them.
        self._uniform: tuple[Recipe, tuple[dict[str, Any], dict[str, dict[str, Any]]]] | None = None

    @classmethod
    def for_recipe(cls, recipe: Recipe, *, allow_pickle: bool = False, **kwargs: Any) -> Merger:
        """Open the recipe's models (base first) and check they can be merged."""
        base = recipe.base_model or recipe.model_names[0]
        others = [m for m in recipe.model_names if m != base]
        align = recipe.tokenizer_source is not None or recipe.unsafe_truncate_embeddings
        pool = ModelPool.open(base, others, allow_pickle=allow_pickle, align_vocab=align)
        return cls(
            pool,
            tokenizer_source=recipe.tokenizer_source,
            unsafe_truncate_embeddings=recipe.unsafe_truncate_embeddings,
            **kwargs,
        )

    @property
    def tier(self) -> str:
        return self.plan.tier

    @property
    def num_layers(self) -> int:
        return self.pool.num_layers

    def row(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise MergeConfigError(f"model {name!r} is not in this merger's pool {self.names}") from None

    def output_shape(self, name: str) -> tuple[int, ...]:
        """A merged tensor's shape: the base's, unless vocabulary alignment changes its rows."""
        return self.cache.shape(name)

    def output_rows(self, name: str) -> int:
        return self.output_shape(name)[0]

    @property
    def merged_tensors(self) -> list[str]:
        """The tensors a merge writes: every floating-point tensor of the base."""
        return [n for n in self.pool.tensor_names if n not in self._skip]

    # -- merging -----------------------------------------------------------------------

    @torch.no_grad()
    def merge_into(
        self, model: torch.nn.Module, recipe: Recipe, *, tensors: Collection[str] | None = None
    ) -> torch.nn.Module:
        """Write the recipe's merge into ``model``'s parameters in place; allocate no second model.

        ``tensors`` limits the merge to those names (the others keep their values), e.g.
        when a new candidate differs from the last one in a few layers only.
        """
        targets = _targets(model)
        names = [n for n in (self.pool.tensor_names if tensors is None else tensors) if n not in self._skip]
        for name in names:
            if name not in targets:
                raise CheckpointError(
                    f"the live model has no parameter {name!r}; load it from the base checkpoint "
                    f"({self.names[0]}) so that it has the pool's architecture"
                )
            if tuple(targets[name].shape) != self.output_shape(name):
                raise CheckpointError(
                    f"the live model's {name} has shape {tuple(targets[name].shape)} but the merge gives "
                    f"{self.output_shape(name)}; load the live model with load_live_model(merger)"
                )
        for name, stack in self.cache.stream(names):
            self.merge_tensor(recipe, name, targets[name], stack)
            del stack  # before the next is read: one stack at a time
        return model

    @torch.no_grad()
    def merge_tensor(self, recipe: Recipe, name: str, target: torch.Tensor, stack: torch.Tensor | None = None) -> None:
        """Write one merged tensor into ``target`` (any float dtype, on the merge device)."""
        asked = (recipe.tokenizer_source, recipe.unsafe_truncate_embeddings)
        if asked != (None, False) and asked != (self.tokenizer_source, self.unsafe_truncate_embeddings):
            raise MergeConfigError(
                f"this Merger aligns vocabularies as tokenizer_source={self.tokenizer_source!r}, "
                f"unsafe_truncate_embeddings={self.unsafe_truncate_embeddings}, but the recipe asks for "
                f"{asked}; open a Merger for it (Merger.for_recipe)"
            )
        get_method(recipe.method)
        stack = self.cache.stack(name) if stack is None else stack
        dtype = torch.float32 if recipe.dtype in _FP32 else _dtype(recipe.dtype)
        fast = recipe.method in FAST_PATHS
        if fast and dtype != torch.float32 and recipe.method not in HALF_FAST_METHODS:
            if (recipe.dtype, recipe.method) not in self._warned:
                self._warned.add((str(recipe.dtype), recipe.method))
                log.info("dtype %s: merging %s with mergekit's own kernels in that dtype", recipe.dtype, recipe.method)
            fast = False
        try:
            if fast:
                FAST_PATHS[recipe.method](TensorJob(self, recipe, name, stack, target, dtype))
            else:
                self._mergekit(recipe, name, stack, target)
        except torch.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
            raise MemoryBudgetError(
                f"{self.device} ran out of memory merging {name} ({err}); set merge.tier: host or disk, "
                "or a smaller merge.memory_budget, then resume"
            ) from err

    def inputs(self, recipe: Recipe) -> list[str]:
        """The recipe's inputs in mergekit's order: its models, then the base if not among them."""
        names = list(recipe.model_names)
        if recipe.base_model is not None and recipe.base_model not in names:
            names.append(recipe.base_model)
        for n in names:
            self.row(n)
        return names

    def tensor_params(self, recipe: Recipe, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Shared and per-input parameter values for one tensor, resolved as mergekit does."""
        from mergekit import merge_methods as mk
        from mergekit.parameter_resolver import resolve_parameters

        if recipe.method == "layer_select":
            raise MergeConfigError("layer_select has no mergekit parameters")
        if self._uniform is not None and self._uniform[0] is recipe:
            return self._uniform[1]
        global_settings, per_model = _settings(recipe)

        def sources(model: str | None) -> list[dict[str, Any] | None]:
            return [per_model.get(model), global_settings] if model is not None else [global_settings]

        try:
            shared, per_input = resolve_parameters(
                mk.get(recipe.method).spec,
                tensor_name=name,
                inputs={n: name for n in self.inputs(recipe)},
                sources=sources,
                base_model=recipe.base_model,
                t=self._t(name),
            )
        except (RuntimeError, ValueError, TypeError) as err:
            raise MergeConfigError(f"{recipe.method}: {err}") from err
        settings = [*global_settings.values(), *(v for p in per_model.values() for v in p.values())]
        if not any(isinstance(v, list | tuple | dict) for v in settings):
            # plain values: no gradient along the layers, no per-tensor filter; resolved once
            # per candidate, not once per tensor (a quarter of a demo candidate's merge)
            self._uniform = (recipe, (shared, per_input))
        return shared, per_input

    def _t(self, name: str) -> float:
        """mergekit's position of a tensor along the layers: ``layer / (layers - 1)``; 0 outside them."""
        layer = tensor_group(name).layer
        layers = self.pool.num_layers
        if layer is None:
            return 0.0
        return layer / (layers - 1) if layers > 1 else 1.0

    # -- chunks: fp32 task vectors formed while a candidate is merged ---------------------

    def _chunk_buffer(self, rows: int) -> torch.Tensor:
        """fp32 scratch of ``rows`` chunks, kept for the run (the plan counts it)."""
        size = self.plan.footprint.chunk
        if self._scratch is None or self._scratch.shape[0] < rows:
            self._scratch = torch.empty((rows, size), dtype=torch.float32, device=self.device)
        return self._scratch

    def chunks(
        self,
        stack: torch.Tensor,
        rows: Sequence[int],
        target: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        raw: bool = False,
    ) -> Iterator[Chunk]:
        """``(offset, reference, task vectors of rows, out)`` per chunk, fp32; what the caller
        writes into ``out`` is copied into ``target`` (in its dtype) after each chunk. With a
        16-bit ``dtype`` the chunks hold what mergekit computes in it: the inputs rounded to
        ``dtype`` and their difference rounded again (every value exact in fp32).

        ``raw`` (for a fused kernel, which widens and subtracts as it reads): where the stack
        is bf16 on the CPU and ``dtype`` fp32, nothing is formed; ``reference`` is row 0's own
        bf16 entries and each "task vector" the row's (``fused.as_array``). Forming them costs
        more than a task-arithmetic merge's own pass."""
        raw = raw and stack.dtype == torch.bfloat16 and dtype == torch.float32 and stack.device.type == "cpu"
        scratch = self._chunk_buffer(len(rows) + 2)
        flat = None
        if target is not None:  # a non-contiguous parameter is assembled, then copied once
            flat = (
                target.view(-1)
                if target.is_contiguous()
                else torch.empty(target.numel(), dtype=target.dtype, device=target.device)
            )
        direct = flat is not None and flat.dtype == torch.float32 and flat.device == scratch.device
        half = dtype != torch.float32
        numel, size = stack.shape[1], scratch.shape[1]
        for start in range(0, numel, size):
            stop = min(numel, start + size)
            n = stop - start
            if raw:
                reference, deltas = stack[0, start:stop], [stack[r, start:stop] for r in rows]
            else:
                reference, deltas = self._formed(stack, rows, start, stop, dtype if half else None, scratch)
            out = flat[start:stop] if direct else scratch[len(rows) + 1, :n]  # type: ignore[index]
            yield start, reference, deltas, out
            if flat is not None and not direct:
                flat[start:stop].copy_(out)
        if target is not None and flat is not None and not target.is_contiguous():
            target.copy_(flat.view(target.shape))

    @staticmethod
    def _formed(
        stack: torch.Tensor, rows: Sequence[int], start: int, stop: int, half: torch.dtype | None, scratch: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One chunk's fp32 reference (scratch row 0) and task vectors (rows 1...), as ``chunks`` says."""
        n = stop - start
        reference = scratch[0, :n]
        reference16 = stack[0, start:stop].to(half) if half is not None else None
        reference.copy_(stack[0, start:stop] if reference16 is None else reference16)
        deltas = []
        for i, r in enumerate(rows, start=1):
            delta = scratch[i, :n]
            if reference16 is None and stack.dtype == torch.float32:
                torch.sub(stack[r, start:stop], reference, out=delta)
            elif reference16 is None:  # widened first: torch's mixed-dtype sub is 1.6x slower
                delta.copy_(stack[r, start:stop]).sub_(reference)
            else:
                delta.copy_(stack[r, start:stop].to(half) - reference16)
            deltas.append(delta)
        return reference, deltas

    def sweep(self, stack: torch.Tensor, rows: list[int], dtype: torch.dtype = torch.float32) -> masks.Sweep:
        """Chunks of the task vectors of ``rows``, for the mask scans and L1 norms."""

        def sweep() -> Iterator[tuple[int, list[torch.Tensor]]]:
            for start, _, deltas, _ in self.chunks(stack, rows, dtype=dtype):
                yield start, deltas

        return sweep

    # -- once-per-run tables -------------------------------------------------------------

    def once(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """A value computed once per run (the tensors do not change between candidates)."""
        if key not in self.cache.tables:
            self.cache.tables[key] = make()
        return self.cache.tables[key]  # type: ignore[return-value]

    def stats(
        self, name: str, stack: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[list[np.ndarray], list[float]]:
        """Each task vector's magnitude histogram and L1 norm (index ``r``; row 0 unused)."""
        key = ("stats", name, dtype)
        if key not in self.cache.tables:
            rows = list(range(1, stack.shape[0]))
            histograms = [np.zeros(masks.BUCKETS, np.int64) for _ in range(stack.shape[0])]
            l1 = [0.0] * stack.shape[0]
            for _, _, deltas, _ in self.chunks(stack, rows, dtype=dtype):
                for r, delta in zip(rows, deltas, strict=True):
                    masks.magnitude_histogram(delta, histograms[r])
                    l1[r] += float(delta.abs().sum(dtype=torch.float64))
            self.cache.tables[key] = (histograms, l1)
        return self.cache.tables[key]  # type: ignore[return-value]

    def level_table(
        self, name: str, stack: torch.Tensor, row: int, seed: int, dtype: torch.dtype = torch.float32
    ) -> np.ndarray:
        """Cumulative ``sum |delta|`` by random level: DARE's kept L1 norm for any density."""
        key = ("levels", name, row, seed, dtype)
        if key not in self.cache.tables:
            stale = [k for k in self.cache.tables if k[0] == "levels" and k[3] != seed]
            for k in stale:  # one seed's tables at a time
                del self.cache.tables[k]
            table = np.zeros(masks.LEVELS, np.float64)
            for start, (delta,) in self.sweep(stack, [row], dtype)():
                masks.level_l1(table, delta, seed, start)
            self.cache.tables[key] = np.cumsum(table)
        return self.cache.tables[key]  # type: ignore[return-value]

    def _mergekit(self, recipe: Recipe, name: str, stack: torch.Tensor, target: torch.Tensor) -> None:
        """mergekit's own implementation: methods without a fast path, and recipes that
        compute in bf16/fp16 (mergekit casts every input to ``dtype`` and merges in it)."""
        from mergekit.merge_methods.api import merge_tensors

        dtype = None if recipe.dtype in _FP32 else _dtype(recipe.dtype)
        tensors, kwargs = self.mergekit_arguments(recipe, name, stack=stack, dtype=dtype)
        try:
            merged = merge_tensors(tensors, recipe.method, dtype=dtype, **kwargs)
        except (RuntimeError, ValueError, TypeError) as err:
            raise MergeConfigError(f"{recipe.method} on {name}: {err}") from err
        target.copy_(merged.reshape(target.shape))

    def mergekit_arguments(
        self, recipe: Recipe, name: str, *, stack: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """What ``mergekit.merge_methods.api.merge_tensors`` takes to merge one tensor of a recipe
        (inputs in fp32, or in ``dtype``): the fallback's call, and the tests' and benchmark's reference."""
        inputs = self.inputs(recipe)
        shared, per_input = self.tensor_params(recipe, name)
        parameters: dict[str, Any] = dict(shared)
        for model, values in per_input.items():
            for key, value in values.items():
                parameters.setdefault(key, {})[model] = value
        stack = self.cache.stack(name) if stack is None else stack
        shape = self.output_shape(name)
        tensors = [stack[self.row(n)].view(shape).to(dtype or torch.float32, copy=True) for n in inputs]
        base_index = inputs.index(recipe.base_model) if recipe.base_model else None
        return tensors, {"parameters": parameters, "ids": inputs, "base_index": base_index}


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise MergeConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


@lru_cache(maxsize=8)
def _settings(recipe: Recipe) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A recipe's settings as mergekit's resolver reads them: once per recipe, not per tensor."""
    return thaw(recipe.parameters), {m.model: thaw(m.parameters) for m in recipe.models}


def _targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by checkpoint name (tied weights appear under every name)."""
    found: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    found.update(dict(model.named_buffers(remove_duplicate=False)))
    return found
