"""The in-memory merge engine: a recipe in, merged tensors written into a live model.

A candidate is merged tensor by tensor. The models' tensors come from a
``TensorCache`` in the tier the memory plan chose (``memory.py``, ``cache.py``), in the
checkpoints' own dtype; task vectors are formed in fp32 a chunk at a time
(``Merger._chunks``), merged, and written into the live parameter in its dtype, so no
fp32 copy of a model, nor of a whole tensor, is made (except by DELLA and the mergekit
fallback, per tensor). Per method (``KERNELS``, dispatched by name):

- linear, task_arithmetic, slerp (and ``density: 1`` variants) are one weighted sum of
  ``[reference; task vectors]``;
- TIES, DARE and breadcrumbs (with or without sign consensus) are one fused pass on
  CPU (``fused.py``) and a few eager passes elsewhere, their masks found per candidate
  (``masks.py``) from small once-per-run tables;
- DELLA masks are built eagerly per tensor;
- every other mergekit method goes through ``mergekit.merge_methods.api.merge_tensors``,
  and so does every method when the recipe asks to compute in bf16/fp16 (``dtype``), so
  the result is mergekit's, bit for bit;
- ``layer_select`` copies each tensor from the model its layer is taken from.

Parameter settings (scalars, gradients over layers, ``filter`` conditions) are resolved
per tensor by mergekit's own resolver, so they mean what they mean in mergekit.
Embedding and lm_head rows are aligned when vocabularies differ (``models/vocab.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, MemoryBudgetError, MergeConfigError
from ..models.groups import tensor_group
from ..models.pool import ModelPool
from . import masks
from .cache import TensorCache
from .kernels import generalized_task_arithmetic
from .masks import Cuts
from .memory import MemoryPlan, plan
from .methods import get_method
from .recipe import Recipe, thaw

log = logging.getLogger(__name__)

#: mergekit's task-arithmetic family: method -> (sign consensus, sparsification)
GTA_METHODS: dict[str, tuple[bool, str | None]] = {
    "task_arithmetic": (False, None),
    "ties": (True, "magnitude"),
    "dare_ties": (True, "random"),
    "dare_linear": (False, "random"),
    "breadcrumbs": (False, "magnitude_outliers"),
    "breadcrumbs_ties": (True, "magnitude_outliers"),
    "della": (True, "della_magprune"),
    "della_linear": (False, "della_magprune"),
}
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
        )
        self.names = [m.name for m in pool.models]
        self._scratch: torch.Tensor | None = None
        self._skip = {n for n in pool.tensor_names if not pool.base.dtype(n).is_floating_point}
        self._warned: set[str] = set()

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

    def _model(self, name: str) -> int:
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
        if asked != (self.tokenizer_source, self.unsafe_truncate_embeddings):
            raise MergeConfigError(
                f"this Merger aligns vocabularies as tokenizer_source={self.tokenizer_source!r}, "
                f"unsafe_truncate_embeddings={self.unsafe_truncate_embeddings}, but the recipe asks for "
                f"{asked}; open a Merger for it (Merger.for_recipe)"
            )
        get_method(recipe.method)
        stack = self.cache.stack(name) if stack is None else stack
        kernel = KERNELS.get(recipe.method, Merger._mergekit)
        if recipe.dtype not in _FP32 and recipe.method != "layer_select":
            if recipe.dtype not in self._warned:
                self._warned.add(recipe.dtype)
                log.info("dtype %s: merging with mergekit's own kernels in that dtype", recipe.dtype)
            kernel = Merger._mergekit
        try:
            kernel(self, recipe, name, stack, target)
        except torch.OutOfMemoryError as err:  # pragma: no cover - needs a GPU
            raise MemoryBudgetError(
                f"{self.device} ran out of memory merging {name} ({err}); set merge.tier: host or disk, "
                "or a smaller merge.memory_budget, then resume"
            ) from err

    def _inputs(self, recipe: Recipe) -> list[str]:
        """The recipe's inputs in mergekit's order: its models, then the base if not among them."""
        names = list(recipe.model_names)
        if recipe.base_model is not None and recipe.base_model not in names:
            names.append(recipe.base_model)
        for n in names:
            self._model(n)
        return names

    def tensor_params(self, recipe: Recipe, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Shared and per-input parameter values for one tensor, resolved as mergekit does."""
        from mergekit import merge_methods as mk
        from mergekit.parameter_resolver import resolve_parameters

        if recipe.method == "layer_select":
            raise MergeConfigError("layer_select has no mergekit parameters")
        global_settings, per_model = _settings(recipe)

        def sources(model: str | None) -> list[dict[str, Any] | None]:
            return [per_model.get(model), global_settings] if model is not None else [global_settings]

        try:
            shared, per_input = resolve_parameters(
                mk.get(recipe.method).spec,
                tensor_name=name,
                inputs={n: name for n in self._inputs(recipe)},
                sources=sources,
                base_model=recipe.base_model,
                t=self._t(name),
            )
        except (RuntimeError, ValueError, TypeError) as err:
            raise MergeConfigError(f"{recipe.method}: {err}") from err
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

    def _chunks(
        self, stack: torch.Tensor, rows: Sequence[int], target: torch.Tensor | None = None
    ) -> Iterator[tuple[int, torch.Tensor, list[torch.Tensor], torch.Tensor]]:
        """``(offset, reference, task vectors of rows, out)`` per chunk, fp32; what the caller
        writes into ``out`` is copied into ``target`` (in its dtype) after each chunk."""
        scratch = self._chunk_buffer(len(rows) + 2)
        flat = None
        if target is not None:  # a non-contiguous parameter is assembled, then copied once
            flat = (
                target.view(-1)
                if target.is_contiguous()
                else torch.empty(target.numel(), dtype=target.dtype, device=target.device)
            )
        direct = flat is not None and flat.dtype == torch.float32 and flat.device == scratch.device
        numel, size = stack.shape[1], scratch.shape[1]
        for start in range(0, numel, size):
            stop = min(numel, start + size)
            n = stop - start
            reference = scratch[0, :n]
            reference.copy_(stack[0, start:stop])
            deltas = []
            for i, r in enumerate(rows, start=1):
                delta = scratch[i, :n]
                torch.sub(stack[r, start:stop], reference, out=delta)
                deltas.append(delta)
            out = flat[start:stop] if direct else scratch[len(rows) + 1, :n]  # type: ignore[index]
            yield start, reference, deltas, out
            if flat is not None and not direct:
                flat[start:stop].copy_(out)
        if target is not None and flat is not None and not target.is_contiguous():
            target.copy_(flat.view(target.shape))

    def _sweep(self, stack: torch.Tensor, rows: list[int]) -> masks.Sweep:
        """Chunks of the task vectors of ``rows``, for the mask scans and L1 norms."""

        def sweep() -> Iterator[tuple[int, list[torch.Tensor]]]:
            for start, _, deltas, _ in self._chunks(stack, rows):
                yield start, deltas

        return sweep

    # -- once-per-run tables -------------------------------------------------------------

    def _stats(self, name: str, stack: torch.Tensor) -> tuple[list[np.ndarray], list[float]]:
        """Each task vector's magnitude histogram and L1 norm (index ``r``; row 0 unused)."""
        key = ("stats", name)
        if key not in self.cache.tables:
            rows = list(range(1, stack.shape[0]))
            histograms = [np.zeros(masks.BUCKETS, np.int64) for _ in range(stack.shape[0])]
            l1 = [0.0] * stack.shape[0]
            for _, _, deltas, _ in self._chunks(stack, rows):
                for r, delta in zip(rows, deltas, strict=True):
                    masks.magnitude_histogram(delta, histograms[r])
                    l1[r] += float(delta.abs().sum(dtype=torch.float64))
            self.cache.tables[key] = (histograms, l1)
        return self.cache.tables[key]  # type: ignore[return-value]

    def _level_table(self, name: str, stack: torch.Tensor, row: int, seed: int) -> np.ndarray:
        """Cumulative ``sum |delta|`` by random level: DARE's kept L1 norm for any density."""
        key = ("levels", name, row, seed)
        if key not in self.cache.tables:
            stale = [k for k in self.cache.tables if k[0] == "levels" and k[3] != seed]
            for k in stale:  # one seed's tables at a time
                del self.cache.tables[k]
            table = np.zeros(masks.LEVELS, np.float64)
            for start, (delta,) in self._sweep(stack, [row])():
                masks.level_l1(table, delta, seed, start)
            self.cache.tables[key] = np.cumsum(table)
        return self.cache.tables[key]  # type: ignore[return-value]

    # -- kernels -------------------------------------------------------------------------

    def _gta(self, recipe: Recipe, name: str, stack: torch.Tensor, target: torch.Tensor) -> None:
        consensus, method = GTA_METHODS[recipe.method]
        if recipe.base_model is None or self._model(recipe.base_model) != 0:
            raise MergeConfigError(f"{recipe.method} needs base_model (the pool's first model, {self.names[0]})")
        shared, per_input = self.tensor_params(recipe, name)
        entries = [n for n in self._inputs(recipe) if n != recipe.base_model]
        rows = [self._model(n) for n in entries]
        weights = [float(per_input[n]["weight"]) for n in entries]
        densities = [float(per_input[n].get("density", 1.0)) for n in entries]
        lam, normalize = float(shared["lambda"]), bool(shared["normalize"])
        if method is None or all(d >= 1 for d in densities):
            if consensus:  # a dense TIES still elects signs
                method = "magnitude"
            else:
                divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
                coefficients = {0: 1.0, **{r: lam * w / divisor for r, w in zip(rows, weights, strict=True)}}
                self._combine(stack, target, coefficients)
                return
        if method == "della_magprune":
            self._della(recipe, name, stack, rows, entries, per_input, shared, consensus, target)
            return
        if method == "random":
            seeds = [masks.seed_of(recipe.seed, name, r) for r in rows]
            cuts = Cuts.random(seeds, densities)
        else:
            cuts = self._magnitude_cuts(name, stack, method, rows, densities, entries, per_input)
        rescale = [1.0] * len(rows)
        if shared["rescale"]:
            rescale = self._rescale(name, stack, cuts, rows, densities)
        w = np.asarray(weights, np.float32)
        scale = np.asarray(rescale, np.float32) * w
        for start, reference, deltas, out in self._chunks(stack, rows, target):
            if self.fused:
                from . import fused

                arrays = tuple(d.numpy() for d in deltas)
                fused.gta_merge(
                    reference.numpy(), arrays, cuts.arrays(), start, scale, w, consensus, normalize, lam, out.numpy()
                )
            else:
                masked = [d * cuts.mask(i, d, start) * rescale[i] for i, d in enumerate(deltas)]
                out.copy_(
                    generalized_task_arithmetic(
                        reference, masked, weights, consensus=consensus, normalize=normalize, lambda_=lam
                    )
                )

    def _magnitude_cuts(self, name, stack, method, rows, densities, entries, per_input) -> Cuts:
        histograms, _ = self._stats(name, stack)
        gammas = [float(per_input[n].get("gamma", 0.0)) for n in entries]
        mine = [histograms[r] for r in rows]
        return masks.magnitude_cuts(method, densities, gammas, stack.shape[1], mine, self._sweep(stack, rows))

    def _rescale(self, name: str, stack: torch.Tensor, cuts: Cuts, rows: list[int], densities: list[float]) -> list:
        """mergekit's L1 rescale: a masked task vector keeps the L1 norm of the whole one."""
        _, l1 = self._stats(name, stack)
        factors = []
        for i, (r, d) in enumerate(zip(rows, densities, strict=True)):
            if d >= 1:
                factors.append(1.0)
                continue
            if cuts.seeds is not None:
                stop = int(cuts.hi[i])
                after = float(self._level_table(name, stack, r, int(cuts.seeds[i]))[stop - 1]) if stop > 0 else 0.0
            else:
                after = sum(masks.cut_l1(cuts, i, delta, start) for start, (delta,) in self._sweep(stack, [r])())
            before = l1[r]
            factors.append(1.0 if before < 1e-7 or after < 1e-7 else float(np.float32(before) / np.float32(after)))
        return factors

    def _della(self, recipe, name, stack, rows, entries, per_input, shared, consensus, target) -> None:
        """DELLA (per tensor, eagerly: its per-row ranks need whole rows)."""
        shape = self.output_shape(name)
        reference = stack[0].float()
        masked = []
        for r, n in zip(rows, entries, strict=True):
            density, epsilon = float(per_input[n]["density"]), float(per_input[n]["epsilon"])
            delta = stack[r].float() - reference
            if density >= 1:
                masked.append(delta)
                continue
            if density + epsilon >= 1 or density - epsilon <= 0:
                raise MergeConfigError(
                    f"{recipe.method}: density ± epsilon must stay in (0, 1); got density {density}, "
                    f"epsilon {epsilon} for {n}"
                )
            fraction = masks.row_rank_fraction(delta.view(shape))
            j = torch.arange(delta.numel(), device=delta.device)
            levels = masks.random_levels(j, masks.seed_of(recipe.seed, name, r))
            m = delta * masks.della_mask(fraction, levels, density, epsilon)
            if shared["rescale"]:
                after, before = float(m.abs().sum()), float(delta.abs().sum())
                if before >= 1e-7 and after >= 1e-7:
                    m = m * (before / after)
            masked.append(m)
        weights = [float(per_input[n]["weight"]) for n in entries]
        merged = generalized_task_arithmetic(
            reference,
            masked,
            weights,
            consensus=consensus,
            normalize=bool(shared["normalize"]),
            lambda_=float(shared["lambda"]),
        )
        target.copy_(merged.view(target.shape))

    def _linear(self, recipe: Recipe, name: str, stack: torch.Tensor, target: torch.Tensor) -> None:
        shared, per_input = self.tensor_params(recipe, name)
        weights = {n: float(per_input[n]["weight"]) for n in self._inputs(recipe)}
        total = sum(weights.values()) if shared["normalize"] else 1.0
        coefficients: dict[int, float] = {0: 0.0}
        for n, w in weights.items():  # input r = reference + task vector r
            coefficients[0] += w / total
            r = self._model(n)
            if r:
                coefficients[r] = coefficients.get(r, 0.0) + w / total
        self._combine(stack, target, coefficients)

    def _slerp(self, recipe: Recipe, name: str, stack: torch.Tensor, target: torch.Tensor) -> None:
        if recipe.base_model is None:
            raise MergeConfigError("slerp needs base_model: it interpolates from the base to the other model")
        shared, _ = self.tensor_params(recipe, name)
        inputs = self._inputs(recipe)
        a, b = self._model(recipe.base_model), self._model(next(n for n in inputs if n != recipe.base_model))
        dot = self._slerp_cosine(name, stack, a, b)
        t = float(shared["t"])
        if abs(dot) > 0.9995:
            coef_a, coef_b = 1 - t, t
        else:
            theta = math.acos(dot)
            coef_a = math.sin((1 - t) * theta) / math.sin(theta)
            coef_b = math.sin(t * theta) / math.sin(theta)
        # tensor x = reference (row 0) + task vector x (zero for the reference itself)
        coefficients = {0: coef_a + coef_b}
        for r, c in ((a, coef_a), (b, coef_b)):
            if r:
                coefficients[r] = coefficients.get(r, 0.0) + c
        self._combine(stack, target, coefficients)

    def _slerp_cosine(self, name: str, stack: torch.Tensor, a: int, b: int) -> float:
        """The cosine of two whole tensors, as mergekit's slerp computes it (once per run)."""
        key = ("slerp", name, a, b)
        if key not in self.cache.tables:
            x, y = (stack[r].double() for r in (a, b))
            norm_a, norm_b = (n if n > 1e-8 else 1.0 for n in (float(x.norm()), float(y.norm())))
            self.cache.tables[key] = max(-1.0, min(1.0, float((x / norm_a) @ (y / norm_b))))
        return self.cache.tables[key]  # type: ignore[return-value]

    def _combine(self, stack: torch.Tensor, target: torch.Tensor, coefficients: dict[int, float]) -> None:
        """``target = sum_r c_r * input_r``, with ``input_0`` the reference and ``input_r`` task
        vector ``r``: one fused pass on CPU, a matrix-vector product elsewhere."""
        rows = sorted(r for r in coefficients if r and coefficients[r] != 0)
        c = [coefficients.get(0, 0.0)] + [coefficients[r] for r in rows]
        if c[0] == 1 and (not rows or (len(rows) == 1 and c[1] == 1)):  # one model, whole: its own bytes
            target.copy_(stack[rows[0] if rows else 0].view(target.shape))
            return
        vector = torch.tensor(c, dtype=torch.float32, device=self.device)
        for _, reference, deltas, out in self._chunks(stack, rows, target):
            if self.fused and rows:
                from . import fused

                fused.combine((reference.numpy(), *(d.numpy() for d in deltas)), c, out.numpy())
            else:
                torch.mv(torch.stack([reference, *deltas]).t(), vector, out=out)

    def _select(self, recipe: Recipe, name: str, stack: torch.Tensor, target: torch.Tensor) -> None:
        source = layer_source(recipe, name, self.pool.num_layers)
        models = [recipe.base_model, *recipe.model_names] if recipe.base_model else recipe.model_names
        if not 0 <= source < len(models):
            raise MergeConfigError(f"layer_select.source {source} for {name}: pick 0..{len(models) - 1} ({models})")
        target.copy_(stack[self._model(models[source])].view(target.shape))

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
        inputs = self._inputs(recipe)
        shared, per_input = self.tensor_params(recipe, name)
        parameters: dict[str, Any] = dict(shared)
        for model, values in per_input.items():
            for key, value in values.items():
                parameters.setdefault(key, {})[model] = value
        stack = self.cache.stack(name) if stack is None else stack
        shape = self.output_shape(name)
        tensors = [stack[self._model(n)].view(shape).to(dtype or torch.float32, copy=True) for n in inputs]
        base_index = inputs.index(recipe.base_model) if recipe.base_model else None
        return tensors, {"parameters": parameters, "ids": inputs, "base_index": base_index}


#: The fast path of each method, by name; methods not here run through mergekit.
KERNELS: dict[str, Callable[[Merger, Recipe, str, torch.Tensor, torch.Tensor], None]] = {
    **dict.fromkeys(GTA_METHODS, Merger._gta),
    "linear": Merger._linear,
    "slerp": Merger._slerp,
    "layer_select": Merger._select,
}
FAST_METHODS = frozenset(KERNELS)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise MergeConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def layer_source(recipe: Recipe, name: str, num_layers: int) -> int:
    """Which model (0 = base, then the recipe's models) ``layer_select`` takes a tensor from.

    ``source`` is one index for every layer, a list with one index per layer, or filter
    conditions over those. Tensors outside the layers come from the base unless a filter
    names them.
    """
    settings = dict(recipe.parameters)
    if "source" not in settings:
        raise MergeConfigError("layer_select needs parameter 'source': a model index per layer")
    setting = settings["source"]
    if isinstance(setting, tuple) and setting and isinstance(setting[0], tuple):
        for filt, value in setting:
            if filt in (None, "*") or filt in name:
                setting = value
                break
        else:
            return 0
    layer = tensor_group(name).layer
    if not isinstance(setting, tuple):
        return int(setting)
    if layer is None:
        return 0
    if len(setting) != num_layers:
        raise MergeConfigError(f"layer_select.source has {len(setting)} entries; give one per layer ({num_layers})")
    return int(setting[layer])  # type: ignore[arg-type]  # a tuple of per-layer ints here


@lru_cache(maxsize=8)
def _settings(recipe: Recipe) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A recipe's settings as mergekit's resolver reads them: once per recipe, not per tensor."""
    return thaw(recipe.parameters), {m.model: thaw(m.parameters) for m in recipe.models}


def _targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by checkpoint name (tied weights appear under every name)."""
    found: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    found.update(dict(model.named_buffers(remove_duplicate=False)))
    return found
