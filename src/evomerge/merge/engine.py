"""The in-memory merge engine: a recipe in, merged tensors written into a live model.

Everything a recipe does not change is computed once per run and cached per tensor:
the task vectors, their L1 norms, the keys that turn any density into a mask
(``sparsify.py``) and SLERP's norms and angle. A candidate then costs one pass over
memory per tensor:

- linear, task_arithmetic, slerp (and ``density: 1`` variants) are one weighted sum of
  the stacked ``[reference; task vectors]``, written into the parameter;
- TIES, DARE and breadcrumbs (with or without sign consensus) are one fused pass on
  CPU (``fused.py``) and a few eager passes elsewhere;
- DELLA masks are built eagerly from cached ranks and keys;
- every other mergekit method goes through ``mergekit.merge_methods.api.merge_tensors``;
- ``layer_select`` copies each tensor from the model its layer is taken from.

Parameter settings (scalars, gradients over layers, ``filter`` conditions) are resolved
per tensor by mergekit's own resolver, so they mean what they mean in mergekit.

Memory: the cache holds, per merged tensor, the reference and every task vector in
fp32 (so ``(models) x (parameters) x 4`` bytes in all), plus, per parameter and
endpoint, 4 bytes of magnitude order (TIES, breadcrumbs; ranks on the eager path) and
2 bytes of random keys (DARE, DELLA) once a method needs them. Checkpoints themselves stay memory-mapped.
Embedding and lm_head rows are aligned here when vocabularies differ (``models/vocab.py``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, MergeConfigError
from ..models import vocab
from ..models.checkpoint import Checkpoint, resolve
from ..models.groups import tensor_group
from ..models.pool import ModelPool, is_vocab_tensor
from . import sparsify
from .kernels import generalized_task_arithmetic
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
FAST_METHODS = frozenset({*GTA_METHODS, "linear", "slerp", "layer_select"})


@dataclass
class _Masks:
    """Which entries of the recipe's task vectors a candidate keeps: ``lo[i] < key < hi[i]``,
    plus the entries ``extra[i]``.

    The key is ``|delta|`` when ``keys`` is None (a magnitude cut, with float32 bounds), else
    int rank or random-level keys (int32 bounds).
    """

    keys: list[torch.Tensor] | None  # one row per recipe task vector
    lo: np.ndarray
    hi: np.ndarray
    kept_l1: list[float | None]  # each mask's L1 norm where a table gives it without a pass
    extra: list[np.ndarray | None]  # entries kept beyond the bounds: ties at a magnitude cut

    @classmethod
    def keep_all(cls, n: int) -> _Masks:
        from .fused import keep_all

        return cls(None, *keep_all(n), [None] * n, [None] * n)

    def mask(self, i: int, delta: torch.Tensor) -> torch.Tensor:
        key = delta.abs() if self.keys is None else self.keys[i]
        kept = (key > self.lo[i].item()) & (key < self.hi[i].item())
        if self.extra[i] is not None and len(self.extra[i]):
            kept[torch.from_numpy(self.extra[i]).to(kept.device)] = True
        return kept


@dataclass(frozen=True)
class _Sparsity:
    """What a recipe asks of one tensor's task vectors: which pool rows, and each one's
    sparsification (``method``), density and breadcrumbs ``gamma``."""

    method: str
    rows: list[int]
    densities: list[float]
    gammas: list[float]

    def each(self) -> list[tuple[int, int, float, float]]:
        """``(i, row, density, gamma)`` per task vector, ``i`` its index in the mask."""
        return [(i, *v) for i, v in enumerate(zip(self.rows, self.densities, self.gammas, strict=True))]

    @property
    def dense(self) -> bool:
        return all(d >= 1 for d in self.densities)


@dataclass
class _TensorCache:
    """Once-per-run state of one tensor: ``stack[0]`` is the reference model's tensor,
    ``stack[r]`` the task vector of model ``r`` against it."""

    shape: torch.Size
    stack: torch.Tensor  # (models, numel) fp32
    keys: dict[Any, torch.Tensor] = field(default_factory=dict)
    l1: dict[int, float] = field(default_factory=dict)
    slerp: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.stack.shape[1]


class Merger:
    """Merges recipes over one set of models into a live model, as often as asked.

    ``models[0]`` is the reference the task vectors are taken against: the recipes'
    base model where they have one.
    """

    def __init__(
        self,
        pool: ModelPool,
        *,
        device: torch.device | str = "cpu",
        fused: bool | None = None,
        tokenizer_source: str | None = None,
        unsafe_truncate_embeddings: bool = False,
        exact: bool = True,
    ) -> None:
        if tokenizer_source == "union":
            raise MergeConfigError(
                "tokenizer_source: union builds a new vocabulary (mergekit's vocabulary surgery); "
                "use tokenizer_source: base or a model, or run the config with mergekit-yaml"
            )
        self.pool = pool
        self.exact = exact  # False: magnitude masks from thresholds (sparsify.py), kept fraction within 0.1%
        self.stats: Counter[str] = Counter()  # e.g. how often a threshold was used or fell back to ranks
        self.tokenizer_source = tokenizer_source
        self.unsafe_truncate_embeddings = unsafe_truncate_embeddings
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MergeConfigError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use device='cpu'")
        self.fused = self.device.type == "cpu" if fused is None else fused
        if self.fused and self.device.type != "cpu":
            raise MergeConfigError("the fused kernels run on the CPU; use fused=None or False on other devices")
        self.names = [m.name for m in pool.models]
        self._cache: dict[str, _TensorCache] = {}
        self._random_seed: int | None = None
        self._skip: set[str] | None = None

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

    # -- the per-run caches -----------------------------------------------------------

    def _model(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise MergeConfigError(f"model {name!r} is not in this merger's pool {self.names}") from None

    def _tensor(self, name: str) -> _TensorCache:
        cache = self._cache.get(name)
        if cache is None:
            tensors = [self._read(m, name) for m in self.pool.models]
            if self._aligned(name):
                tensors = self._align_vocab(tensors)
            ref = tensors[0].reshape(-1)
            stack = torch.empty((len(tensors), ref.numel()), dtype=torch.float32, device=self.device)
            stack[0] = ref
            for r, t in enumerate(tensors[1:], start=1):
                torch.sub(t.reshape(-1), ref, out=stack[r])
            cache = self._cache[name] = _TensorCache(tensors[0].shape, stack)
        return cache

    def _align_vocab(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.unsafe_truncate_embeddings and self.tokenizer_source is None:
            return vocab.common_prefix(tensors)
        source = self.tokenizer_source or "base"
        out_vocab = vocab.read_vocab(self.pool.base.path if source == "base" else resolve(source))
        vocabs = [vocab.read_vocab(m.path) for m in self.pool.models]
        if out_vocab is None or any(v is None for v in vocabs):
            raise CheckpointError("aligning vocabularies needs every model's tokenizer, and one is missing")
        return vocab.align_rows(tensors, vocab.row_maps(vocabs, out_vocab), base=0)

    def _aligned(self, name: str) -> bool:
        return self.pool.align_vocab and is_vocab_tensor(self.pool.base, name)

    def _shape(self, name: str) -> tuple[int, ...]:
        """A merged tensor's shape: the base's, unless vocabulary alignment changes its rows."""
        return tuple(self._tensor(name).shape) if self._aligned(name) else self.pool.base.shape(name)

    def output_rows(self, name: str) -> int:
        return self._shape(name)[0]

    def _input(self, row: int, name: str) -> torch.Tensor:
        """Model ``row``'s tensor as a merge sees it: read as is, or vocabulary-aligned."""
        if self._aligned(name):
            cache = self._tensor(name)
            return self._tensor_of(cache, row).view(cache.shape)
        return self._read(self.pool.models[row], name)

    def _read(self, model: Checkpoint, name: str) -> torch.Tensor:
        tensor = model.tensor(name).to(self.device, torch.float32)
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{model.name}: tensor {name!r} holds {bad} NaN/Inf value(s); the checkpoint is corrupt "
                "or was saved after a diverged training run. Merging it would poison every candidate."
            )
        return tensor

    def _keys(self, cache: _TensorCache, name: str, kind: str, seed: int) -> torch.Tensor:
        """Keys of every task vector of one tensor, ``(models - 1, numel)``: row ``r - 1`` is model ``r``'s."""
        seeded = kind in ("random", "random_l1")
        key = (kind, seed) if seeded else kind
        if key not in cache.keys:
            if seeded and self._random_seed not in (None, seed):
                for c in self._cache.values():  # one seed at a time: drop the old seed's keys
                    for k in [k for k in c.keys if isinstance(k, tuple)]:
                        del c.keys[k]
            if seeded:
                self._random_seed = seed
            rows = []
            for r, delta in enumerate(cache.stack[1:], start=1):
                if kind in sparsify.THRESHOLD_METHODS:  # rank keys (eager kernels)
                    rows.append(sparsify.ranks(sparsify.magnitude_order(delta, kind)))
                elif kind.startswith("order:"):  # magnitude cuts (the fused kernel)
                    rows.append(sparsify.magnitude_order(delta, kind.removeprefix("order:")))
                elif kind == "random":
                    rows.append(sparsify.random_keys(cache.numel, seed, name, r, self.device))
                elif kind == "magnitude_table":
                    rows.append(sparsify.magnitude_table(delta))
                elif kind == "random_l1":
                    rows.append(sparsify.level_l1(delta, self._keys(cache, name, "random", seed)[r - 1]))
                elif kind == "row_fraction":
                    rows.append(sparsify.row_rank_fraction(delta.view(cache.shape)))
                else:
                    raise AssertionError(kind)
            cache.keys[key] = torch.stack(rows)
        return cache.keys[key]

    def _l1(self, cache: _TensorCache, row: int) -> float:
        if row not in cache.l1:
            cache.l1[row] = float(cache.stack[row].abs().sum())
        return cache.l1[row]

    # -- merging -----------------------------------------------------------------------

    @torch.no_grad()
    def merge_into(
        self, model: torch.nn.Module, recipe: Recipe, *, tensors: Collection[str] | None = None
    ) -> torch.nn.Module:
        """Write the recipe's merge into ``model``'s parameters in place; allocate no second model.

        ``tensors`` limits the merge to those names (the others keep their values), e.g.
        when a new candidate differs from the last one in a few layers only.
        """
        spec = get_method(recipe.method)
        asked = (recipe.tokenizer_source, recipe.unsafe_truncate_embeddings)
        if asked != (self.tokenizer_source, self.unsafe_truncate_embeddings):
            raise MergeConfigError(
                f"this Merger aligns vocabularies as tokenizer_source={self.tokenizer_source!r}, "
                f"unsafe_truncate_embeddings={self.unsafe_truncate_embeddings}, but the recipe asks for "
                f"{asked}; open a Merger for it (Merger.for_recipe)"
            )
        inputs = self._inputs(recipe)
        targets = _targets(model)
        if self._skip is None:  # integer buffers are not merged: the live model keeps the base's
            self._skip = {n for n in self.pool.tensor_names if not self.pool.base.tensor(n).is_floating_point()}
        for name in self.pool.tensor_names if tensors is None else tensors:
            if name in self._skip:
                continue
            if name not in targets:
                raise CheckpointError(
                    f"the live model has no parameter {name!r}; load it from the base checkpoint "
                    f"({self.names[0]}) so that it has the pool's architecture"
                )
            target = targets[name]
            if tuple(target.shape) != self._shape(name):
                raise CheckpointError(
                    f"the live model's {name} has shape {tuple(target.shape)} but the merge gives "
                    f"{self._shape(name)}; load the live model with load_live_model(merger)"
                )
            if spec.name == "layer_select":
                target.copy_(self._select(recipe, name).view(target.shape))
            elif spec.name not in FAST_METHODS:
                self._fallback(recipe, name, target)
            else:
                shared, per_input = self.tensor_params(recipe, name)
                if spec.name in GTA_METHODS:
                    self._gta(recipe, name, inputs, shared, per_input, target)
                elif spec.name == "linear":
                    self._linear(name, inputs, shared, per_input, target)
                else:
                    self._slerp(recipe, name, inputs, shared, target)
        return model

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

    def _gta(self, recipe: Recipe, name: str, inputs: list[str], shared: dict, per_input: dict, target) -> None:
        consensus, method = GTA_METHODS[recipe.method]
        cache = self._tensor(name)
        base_row = self._model(recipe.base_model) if recipe.base_model else None
        if base_row != 0:
            raise MergeConfigError(f"{recipe.method} needs base_model (the pool's first model, {self.names[0]})")
        entries = [n for n in inputs if n != recipe.base_model]
        rows = [self._model(n) for n in entries]
        weights = [float(per_input[n]["weight"]) for n in entries]
        densities = [float(per_input[n].get("density", 1.0)) for n in entries]
        lam, normalize = float(shared["lambda"]), bool(shared["normalize"])
        if method is None or all(d >= 1 for d in densities):
            if consensus:  # a dense TIES still elects signs
                method = "magnitude"
            else:
                divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
                self._combine(
                    cache, target, {0: 1.0, **{r: lam * w / divisor for r, w in zip(rows, weights, strict=True)}}
                )
                return
        if method == "della_magprune":
            self._della(recipe, name, cache, rows, entries, per_input, shared, consensus, target)
            return
        sparsity = _Sparsity(method, rows, densities, [float(per_input[e].get("gamma", 0.0)) for e in entries])
        masks = None
        if not self.exact and method in sparsify.THRESHOLD_METHODS and not sparsity.dense:
            masks = self._threshold_masks(cache, name, sparsity)
        if masks is None and self.fused and method in sparsify.THRESHOLD_METHODS:
            masks = self._cut_masks(cache, name, sparsity)
        if masks is None:
            masks = self._key_masks(cache, name, sparsity, recipe.seed)
        rescale = [
            self._rescale(cache, masks, i, r) if shared["rescale"] and d < 1 else 1.0
            for i, (r, d) in enumerate(zip(rows, densities, strict=True))
        ]
        out = self._out(target)
        if self.fused:
            self._fused_gta(cache, rows, masks, rescale, weights, consensus, normalize, lam, out)
        else:
            masked = [cache.stack[r] * masks.mask(i, cache.stack[r]) * rescale[i] for i, r in enumerate(rows)]
            out.copy_(
                generalized_task_arithmetic(
                    cache.stack[0], masked, weights, consensus=consensus, normalize=normalize, lambda_=lam
                )
            )
        self._write(out, target)

    def _fused_gta(self, cache, rows, masks, rescale, weights, consensus, normalize, lam, out) -> None:
        """The fused CPU pass; then the entries kept beyond a magnitude cut's bounds (ties at
        the cut) are merged again, exactly, by the same kernel on just those entries."""
        from . import fused

        arrays = tuple(cache.stack[r].numpy() for r in rows)
        keys = None if masks.keys is None else tuple(k.numpy() for k in masks.keys)
        w = np.asarray(weights, np.float32)
        flags = (np.asarray(rescale, np.float32) * w, w, consensus, normalize, lam)
        fused.gta_merge(cache.stack[0].numpy(), arrays, keys, masks.lo, masks.hi, *flags, out.numpy())
        extra = [e for e in masks.extra if e is not None and len(e)]
        if not extra:
            return
        at = np.unique(np.concatenate(extra))
        kept_only = []
        for i, delta in enumerate(arrays):
            values = delta[at]
            magnitude = np.abs(values)
            kept = (magnitude > masks.lo[i]) & (magnitude < masks.hi[i])
            if masks.extra[i] is not None:
                kept |= np.isin(at, masks.extra[i])
            kept_only.append(np.where(kept, values, np.float32(0)))  # a dropped entry adds what a zero adds
        merged = np.empty(len(at), np.float32)
        fused.gta_merge(cache.stack[0].numpy()[at], tuple(kept_only), None, *fused.keep_all(len(rows)), *flags, merged)
        out.numpy()[at] = merged

    def _key_masks(self, cache: _TensorCache, name: str, sparsity: _Sparsity, seed: int) -> _Masks:
        """Exact masks from once-per-run keys: magnitude ranks, or random levels."""
        n = len(sparsity.rows)
        if sparsity.dense:  # a dense TIES still elects signs
            return _Masks.keep_all(n)
        keys = self._keys(cache, name, sparsity.method, seed)
        lo, hi = np.zeros(n, np.int32), np.zeros(n, np.int32)
        kept_l1: list[float | None] = [None] * n
        table = self._keys(cache, name, "random_l1", seed) if sparsity.method == "random" else None
        for i, r, d, gamma in sparsity.each():
            first, stop = sparsify.key_range(sparsity.method, d, cache.numel, gamma)
            lo[i], hi[i] = first - 1, stop
            if table is not None and d < 1:  # DARE: the kept L1 norm is a lookup
                kept_l1[i] = float(table[r - 1, stop - 1]) if stop > 0 else 0.0
        return _Masks([keys[r - 1] for r in sparsity.rows], lo, hi, kept_l1, [None] * n)

    def _cut_masks(self, cache: _TensorCache, name: str, sparsity: _Sparsity) -> _Masks:
        """Exact magnitude masks as bounds on ``|delta|`` (``sparsify.magnitude_cut``): the fused
        kernel then reads no keys, only the task vectors."""
        masks = _Masks.keep_all(len(sparsity.rows))
        if sparsity.dense:
            return masks
        orders = self._keys(cache, name, "order:" + sparsity.method, 0)
        for i, r, d, gamma in sparsity.each():
            if d < 1:
                first, stop = sparsify.key_range(sparsity.method, d, cache.numel, gamma)
                cut = sparsify.magnitude_cut(cache.stack[r].numpy(), orders[r - 1].numpy(), first, stop)
                masks.lo[i], masks.hi[i], masks.extra[i] = cut
        return masks

    def _threshold_masks(self, cache: _TensorCache, name: str, sparsity: _Sparsity) -> _Masks | None:
        """Approximate masks: magnitude thresholds from a once-per-run histogram, so a candidate
        needs no sort. None when a threshold would miss the density by more than 0.1%
        (heavy ties, tiny tensors): the caller then uses exact masks."""
        masks = _Masks.keep_all(len(sparsity.rows))
        tables = self._keys(cache, name, "magnitude_table", 0)
        for i, r, d, gamma in sparsity.each():
            found = sparsify.threshold_range(tables[r - 1], sparsity.method, d, cache.numel, gamma)
            if found is None:
                log.debug("%s: threshold for density %s misses by > 0.1%%; exact masks instead", name, d)
                self.stats["threshold_fallback"] += 1
                return None
            low, masks.hi[i], masks.kept_l1[i] = found
            masks.lo[i] = np.nextafter(np.float32(low), np.float32(-np.inf))  # kept from ``low`` on
        self.stats["threshold"] += 1
        return masks

    def _rescale(self, cache: _TensorCache, masks: _Masks, i: int, row: int) -> float:
        """mergekit's L1 rescale: a masked task vector keeps the L1 norm of the whole one."""
        after = masks.kept_l1[i]
        if after is None:
            delta = cache.stack[row]
            if self.fused and masks.keys is None:
                from . import fused

                after = fused.masked_l1(delta.numpy(), masks.lo[i], masks.hi[i])
                if masks.extra[i] is not None:
                    after += float(np.abs(delta.numpy()[masks.extra[i]]).astype(np.float64).sum())
            else:
                after = (delta * masks.mask(i, delta)).abs().sum()
        before, after = self._l1(cache, row), float(after)
        if before < 1e-7 or after < 1e-7:
            return 1.0
        return float(np.float32(before) / np.float32(after))  # fp32, as mergekit divides

    def _della(self, recipe, name, cache, rows, entries, per_input, shared, consensus, target) -> None:
        masked = []
        for r, n in zip(rows, entries, strict=True):
            density, epsilon = float(per_input[n]["density"]), float(per_input[n]["epsilon"])
            delta = cache.stack[r]
            if density >= 1:
                masked.append(delta)
                continue
            if density + epsilon >= 1 or density - epsilon <= 0:
                raise MergeConfigError(
                    f"{recipe.method}: density ± epsilon must stay in (0, 1); got density {density}, "
                    f"epsilon {epsilon} for {n}"
                )
            fraction = self._keys(cache, name, "row_fraction", recipe.seed)[r - 1]
            keys = self._keys(cache, name, "random", recipe.seed)[r - 1]
            m = delta * sparsify.della_mask(fraction, keys, density, epsilon)
            if shared["rescale"]:
                after, before = float(m.abs().sum()), self._l1(cache, r)
                if before >= 1e-7 and after >= 1e-7:
                    m = m * (before / after)
            masked.append(m)
        weights = [float(per_input[n]["weight"]) for n in entries]
        merged = generalized_task_arithmetic(
            cache.stack[0],
            masked,
            weights,
            consensus=consensus,
            normalize=bool(shared["normalize"]),
            lambda_=float(shared["lambda"]),
        )
        self._write(merged, target)

    def _linear(self, name: str, inputs: list[str], shared: dict, per_input: dict, target) -> None:
        weights = {n: float(per_input[n]["weight"]) for n in inputs}
        total = sum(weights.values()) if shared["normalize"] else 1.0
        coefficients: dict[int, float] = {0: 0.0}
        for n, w in weights.items():  # input r = reference + task vector r
            coefficients[0] += w / total
            r = self._model(n)
            if r:
                coefficients[r] = coefficients.get(r, 0.0) + w / total
        self._combine(self._tensor(name), target, coefficients)

    def _slerp(self, recipe: Recipe, name: str, inputs: list[str], shared: dict, target) -> None:
        if recipe.base_model is None:
            raise MergeConfigError("slerp needs base_model: it interpolates from the base to the other model")
        cache = self._tensor(name)
        a, b = self._model(recipe.base_model), self._model(next(n for n in inputs if n != recipe.base_model))
        dot = self._slerp_cosine(cache, a, b)
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
        self._combine(cache, target, coefficients)

    def _slerp_cosine(self, cache: _TensorCache, a: int, b: int) -> float:
        """The cosine of two whole tensors, as mergekit's slerp computes it (once per run)."""
        if (a, b) not in cache.slerp:
            x, y = (self._tensor_of(cache, r).double() for r in (a, b))
            norm_a, norm_b = (n if n > 1e-8 else 1.0 for n in (float(x.norm()), float(y.norm())))
            cache.slerp[(a, b)] = max(-1.0, min(1.0, float((x / norm_a) @ (y / norm_b))))
        return cache.slerp[(a, b)]

    @staticmethod
    def _tensor_of(cache: _TensorCache, row: int) -> torch.Tensor:
        return cache.stack[0] if row == 0 else cache.stack[0] + cache.stack[row]

    def _combine(self, cache: _TensorCache, target: torch.Tensor, coefficients: dict[int, float]) -> None:
        """``target = sum_r c_r * stack[r]``: one fused pass on CPU, a matrix-vector product elsewhere."""
        rows = sorted(coefficients)
        out = self._out(target)
        if self.fused and rows[0] == 0 and len(rows) > 1:
            from . import fused

            fused.combine(tuple(cache.stack[r].numpy() for r in rows), [coefficients[r] for r in rows], out.numpy())
        else:
            c = torch.tensor([coefficients[r] for r in rows], dtype=torch.float32, device=self.device)
            stack = cache.stack if rows == list(range(cache.stack.shape[0])) else cache.stack[rows]
            torch.mv(stack.t(), c, out=out)
        self._write(out, target)

    def _select(self, recipe: Recipe, name: str) -> torch.Tensor:
        source = layer_source(recipe, name, self.pool.num_layers)
        models = [recipe.base_model, *recipe.model_names] if recipe.base_model else recipe.model_names
        if not 0 <= source < len(models):
            raise MergeConfigError(f"layer_select.source {source} for {name}: pick 0..{len(models) - 1} ({models})")
        return self._input(self._model(models[source]), name)

    def _fallback(self, recipe: Recipe, name: str, target: torch.Tensor) -> None:
        """mergekit's own implementation, for the methods without a fast path."""
        from mergekit.merge_methods.api import merge_tensors

        tensors, kwargs = self.mergekit_arguments(recipe, name)
        try:
            merged = merge_tensors(tensors, recipe.method, **kwargs)
        except (RuntimeError, ValueError, TypeError) as err:
            raise MergeConfigError(f"{recipe.method} on {name}: {err}") from err
        self._write(merged.reshape(-1).float(), target)

    def mergekit_arguments(self, recipe: Recipe, name: str) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """What ``mergekit.merge_methods.api.merge_tensors`` takes to merge one tensor of a recipe:
        the fallback's call, and the tests' and benchmark's reference."""
        inputs = self._inputs(recipe)
        shared, per_input = self.tensor_params(recipe, name)
        parameters: dict[str, Any] = dict(shared)
        for model, values in per_input.items():
            for key, value in values.items():
                parameters.setdefault(key, {})[model] = value
        tensors = [self._input(self._model(n), name) for n in inputs]
        base_index = inputs.index(recipe.base_model) if recipe.base_model else None
        return tensors, {"parameters": parameters, "ids": inputs, "base_index": base_index}

    @staticmethod
    def _out(target: torch.Tensor) -> torch.Tensor:
        """Where to compute: the parameter itself when it is fp32 and contiguous, else scratch."""
        if target.dtype == torch.float32 and target.is_contiguous():
            return target.view(-1)
        return torch.empty(target.numel(), dtype=torch.float32, device=target.device)

    @staticmethod
    def _write(out: torch.Tensor, target: torch.Tensor) -> None:
        flat = target.view(-1) if target.is_contiguous() else None
        if flat is None or flat.data_ptr() != out.data_ptr():
            target.copy_(out.view(target.shape))


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
    return int(setting[layer])


@lru_cache(maxsize=8)
def _settings(recipe: Recipe) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A recipe's settings as mergekit's resolver reads them: once per recipe, not per tensor."""
    return thaw(recipe.parameters), {m.model: thaw(m.parameters) for m in recipe.models}


def _targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by checkpoint name (tied weights appear under every name)."""
    found = dict(model.named_parameters(remove_duplicate=False))
    found.update(dict(model.named_buffers(remove_duplicate=False)))
    return found
