"""The search space: what pymoo's ``x in [0, 1]^d`` means as a merge recipe.

Genes come from the merge method's declared parameters and their default ranges
(``merge.methods.searched_params``, ``search_range``), so a new method needs no code
here. Each searched parameter gets one gene per endpoint (for per-model parameters)
and per group of the chosen granularity:

- ``global``: one value for every tensor;
- ``module``: one for attention, one for the MLP, one for everything else, as
  mergekit ``filter`` conditions (substring matches on tensor names);
- ``layer``: one per group of ``group_size`` consecutive layers, as a mergekit gradient
  with one point per layer (tensors outside the layers take the first group's value).

``layer_select`` has one categorical gene per layer group: the model the group is
taken from (0 is the base where there is one). A gene can be frozen to a value, which
removes it from ``x``. Decoding is a pure function of ``x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import EvomergeError
from ..merge.methods import get_method, search_range, searched_params
from ..merge.recipe import Recipe, per_layer

Granularity = Literal["global", "module", "layer"]
#: Module groups as mergekit filters (any substring matches); the rest is the default.
MODULE_FILTERS: dict[str, tuple[str, ...]] = {"attention": ("attn", "attention"), "mlp": ("mlp", "feed_forward", "ffn")}


class SearchSpaceError(EvomergeError):
    """A search space that cannot be built as asked."""


@dataclass(frozen=True)
class Gene:
    param: str
    model: str | None  # the endpoint, for per-model parameters
    group: str  # "all", a module group, or "layers a-b"
    low: float = 0.0
    high: float = 1.0
    choices: tuple[int, ...] | None = None  # a categorical gene (layer_select)
    label: str | None = None  # the model's short name in gene names (its directory name, when unique)

    @property
    def name(self) -> str:
        who = f"[{self.label or self.model}]" if self.model is not None else ""
        return f"{self.param}{who}@{self.group}"

    def value(self, x: float) -> float | int:
        if self.choices is not None:
            return self.choices[min(int(x * len(self.choices)), len(self.choices) - 1)]
        return float(self.low + x * (self.high - self.low))


def gene_values(
    x: Sequence[float] | np.ndarray, genes: Sequence[Gene], all_genes: Sequence[Gene], frozen: Mapping[str, float]
) -> dict[str, float | int]:
    """What ``x`` (one number in [0, 1] per free gene) means, by gene name, frozen genes included."""
    arr = np.asarray(x, dtype=float)
    if arr.shape != (len(genes),) or not np.isfinite(arr).all():
        raise SearchSpaceError(f"x must be {len(genes)} finite numbers in [0, 1], got shape {arr.shape}")
    values: dict[str, float | int] = dict(frozen)
    values.update((g.name, g.value(float(v))) for g, v in zip(genes, np.clip(arr, 0.0, 1.0), strict=True))
    return {g.name: values[g.name] for g in all_genes}


class SearchSpace:
    def __init__(
        self,
        method: str,
        endpoints: Sequence[str],
        base: str | None,
        *,
        num_layers: int,
        granularity: Granularity = "global",
        group_size: int = 1,
        params: Sequence[str] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        allow_negative_weights: bool = False,
        frozen: Mapping[str, float] | None = None,
        fixed: Mapping[str, Any] | None = None,
        seed: int = 0,
        tokenizer_source: str | None = None,
    ) -> None:
        self.spec = get_method(method)
        self.tokenizer_source = tokenizer_source
        self.endpoints, self.base = list(endpoints), base
        self.num_layers, self.granularity, self.group_size = num_layers, granularity, group_size
        self.fixed, self.seed = dict(fixed or {}), seed
        if granularity not in ("global", "module", "layer"):
            raise SearchSpaceError(f"granularity {granularity!r}: choose global, module or layer")
        if group_size < 1 or group_size > num_layers:
            raise SearchSpaceError(f"group_size {group_size}: choose 1..{num_layers} (the model's layers)")
        short = [Path(e).name for e in self.endpoints]
        self.labels = dict(zip(self.endpoints, short if len(set(short)) == len(short) else self.endpoints, strict=True))
        names = params if params is not None else searched_params(self.spec)
        ranges = {n: r for n in names if (r := search_range(self.spec, n)) is not None}
        ranges.update({"weight": (-1.0, 1.0)} if allow_negative_weights else {})
        ranges.update(bounds or {})
        genes = []
        for name in names:
            p = self.spec.param(name)  # an unknown parameter fails here, with the method's list
            if name in self.fixed:
                raise SearchSpaceError(f"{name} is both searched and fixed; drop it from one")
            if name not in ranges:
                raise SearchSpaceError(f"{name} has no search range; give one under bounds")
            low, high = ranges[name]
            for model in self.endpoints if p.per_model else [None]:
                genes += [
                    Gene(name, model, g, low, high, label=self.labels.get(model) if model else None)
                    for g in self.groups
                ]
        if self.spec.name == "layer_select":
            n_sources = len(self.endpoints) + (1 if base else 0)
            genes += [Gene("source", None, g, choices=tuple(range(n_sources))) for g in self.groups]
        frozen = dict(frozen or {})
        unknown = sorted(set(frozen) - {g.name for g in genes})
        if unknown:
            raise SearchSpaceError(f"cannot freeze {unknown}: no such gene. Genes: {', '.join(g.name for g in genes)}")
        self.all_genes = genes
        self.frozen = frozen
        self.genes = [g for g in genes if g.name not in frozen]
        if not self.genes:
            raise SearchSpaceError("every gene is frozen or fixed; there is nothing to search")

    @property
    def groups(self) -> list[str]:
        if self.granularity == "global":
            return ["all"]
        if self.granularity == "module":
            return [*MODULE_FILTERS, "rest"]
        k = self.group_size
        return [f"layers {i}-{min(i + k, self.num_layers) - 1}" for i in range(0, self.num_layers, k)]

    @property
    def n_var(self) -> int:
        return len(self.genes)

    def values(self, x: Sequence[float] | np.ndarray) -> dict[str, float | int]:
        """Gene name -> value, frozen genes included."""
        return gene_values(x, self.genes, self.all_genes, self.frozen)

    def decode(self, x: Sequence[float]) -> Recipe:
        """The recipe ``x`` stands for, built as a mergekit config (gradients and filters
        included) and validated as one."""
        values = self.values(x)
        shared: dict[str, Any] = {k: v for k, v in self.fixed.items() if not self.spec.param(k).per_model}
        per_model: dict[str, dict[str, Any]] = {
            e: {k: v for k, v in self.fixed.items() if self.spec.param(k).per_model} for e in self.endpoints
        }
        for name in dict.fromkeys(g.param for g in self.all_genes):
            genes = [g for g in self.all_genes if g.param == name]
            if genes[0].model is None:
                shared[name] = self._setting([values[g.name] for g in genes])
            for e in self.endpoints if genes[0].model is not None else []:
                per_model[e][name] = self._setting([values[g.name] for g in genes if g.model == e])
        config: dict[str, Any] = {"merge_method": self.spec.name}
        if self.base is not None and self.spec.base != "ignored":
            config["base_model"] = self.base
        config["models"] = [
            {"model": e, **({"parameters": per_model[e]} if per_model[e] else {})} for e in self.endpoints
        ]
        if shared:
            config["parameters"] = shared
        if self.tokenizer_source is not None:
            config["tokenizer_source"] = self.tokenizer_source
        if self.seed:
            config["evomerge"] = {"seed": self.seed}
        return Recipe.from_mergekit(config)

    def _setting(self, group_values: list[float | int]) -> Any:
        if self.granularity == "global":
            return group_values[0]
        if self.granularity == "layer":
            return list(per_layer(group_values, self.num_layers, self.group_size))
        conditions = [
            {"filter": f, "value": v}
            for (_, filters), v in zip(MODULE_FILTERS.items(), group_values, strict=False)
            for f in filters
        ]
        return [*conditions, {"value": group_values[-1]}]
