"""The merge-method registry: each method declared by name and parameters.

Derived from mergekit 0.1.5's own ``MergeMethodSpec`` for every method it registers,
so names, defaults and which parameters are per model are mergekit's by
construction, not copied by hand. ``layer_select`` (each layer group taken whole
from one model: the crossover of a layer-wise GA) is ours. Config validation and
the search space read these declarations, so adding a method touches one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Literal

from mergekit import merge_methods as mk
from mergekit.merge_methods.base import ParameterScope

from ..errors import MergeConfigError

BasePolicy = Literal["required", "optional", "ignored"]
#: Parameters that are fractions of a task vector to keep: (0, 1].
_FRACTIONS = frozenset({"density", "select_topk"})


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: type
    per_model: bool  # one value per endpoint (or per input, for methods without a base)
    required: bool
    default: Any = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[ParamSpec, ...]
    base: BasePolicy
    min_models: int  # inputs, base included
    max_models: int | None

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise MergeConfigError(_unknown(f"parameter {name!r} of method {self.name!r}", name, self.param_names))

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]


def _from_mergekit(method: Any) -> MethodSpec:
    spec = method.spec
    params = []
    for p in spec.parameters:
        required = p.default.__class__ is object  # mergekit's sentinel for "no default"
        value_type = p.value_type if isinstance(p.value_type, type) else object
        params.append(
            ParamSpec(p.name, value_type, p.scope != ParameterScope.SHARED, required, None if required else p.default)
        )
    contract = spec.contract
    return MethodSpec(spec.name, tuple(params), contract.base.value, contract.min_inputs, contract.max_inputs)


LAYER_SELECT = MethodSpec(
    "layer_select",
    (ParamSpec("source", int, per_model=False, required=True),),
    base="optional",
    min_models=1,
    max_models=None,
)


@cache
def methods() -> Mapping[str, MethodSpec]:
    """Every method by name: mergekit's, then ours. Read-only: it is cached and shared."""
    found = {spec.name: spec for spec in map(_from_mergekit, mk.registered_methods())}
    found[LAYER_SELECT.name] = LAYER_SELECT
    return MappingProxyType(dict(sorted(found.items())))


def get_method(name: str) -> MethodSpec:
    try:
        return methods()[name]
    except KeyError:
        raise MergeConfigError(_unknown(f"merge method {name!r}", name, list(methods()))) from None


def resolve_params(method: MethodSpec, params: Mapping[str, Any], n_endpoints: int) -> dict[str, Any]:
    """Check ``params`` against the declaration and fill in defaults.

    Per-model values are a scalar (the same for every endpoint) or one per endpoint.
    """
    for name in params:
        method.param(name)  # raises on an unknown name, with the valid ones listed
    resolved: dict[str, Any] = {}
    for p in method.params:
        if p.name not in params:
            if p.required:
                raise MergeConfigError(f"method {method.name!r} needs parameter {p.name!r}")
            resolved[p.name] = p.default
            continue
        value = params[p.name]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if p.per_model and len(values) not in (1, n_endpoints):
            raise MergeConfigError(
                f"{method.name}.{p.name}: give one value or one per endpoint ({n_endpoints}), not {len(values)}"
            )
        if len(values) > 1 and not p.per_model:
            raise MergeConfigError(f"{method.name}.{p.name} is shared by all models: give a single value")
        for v in values:
            check_value(method, p, v)
        resolved[p.name] = value
    return resolved


def check_value(method: MethodSpec, p: ParamSpec, value: Any) -> None:
    """Numbers for float/int parameters (bool is no number here), bools for flags, and
    fractions of a task vector in (0, 1]."""
    if p.type is bool:
        ok = isinstance(value, bool)
    elif p.type in (float, int):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        return
    if not ok:
        raise MergeConfigError(f"{method.name}.{p.name} takes a {p.type.__name__}, got {value!r}")
    if p.name in _FRACTIONS and not 0 < value <= 1:
        raise MergeConfigError(f"{method.name}.{p.name} must be in (0, 1], got {value!r}")


#: Default ranges of the parameters a search varies (and random merges draw from).
SEARCH_RANGES: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.1, 1.0),
    "t": (0.0, 1.0),
    "select_topk": (0.1, 1.0),
}
#: Declared but without effect: mergekit declares ``density`` on every generalized task
#: arithmetic method, but plain task_arithmetic sparsifies nothing, so a gene for it
#: would be searched in vain.
_NO_EFFECT = {"task_arithmetic": frozenset({"density"})}


def searched_params(method: MethodSpec) -> list[str]:
    """The method's parameters that a search varies by default."""
    return [p.name for p in method.params if p.name in SEARCH_RANGES and p.name not in _NO_EFFECT.get(method.name, ())]


def search_range(method: MethodSpec, name: str) -> tuple[float, float] | None:
    """The default range of ``name`` for ``method``; None where there is none.

    DELLA needs density ± epsilon strictly inside (0, 1), so its density range is
    narrowed by the default epsilon (0.15 gives 0.2..0.8).
    """
    if name not in SEARCH_RANGES:
        return None
    low, high = SEARCH_RANGES[name]
    if name == "density" and "epsilon" in method.param_names:
        eps = float(method.param("epsilon").default)
        low, high = max(low, eps + 0.05), min(high, 1 - eps - 0.05)
    return low, high


def _unknown(what: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what}.{hint} Valid: {', '.join(valid)}."
