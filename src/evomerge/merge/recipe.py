"""A merge recipe: the method and every parameter setting, explicit and hashable.

A recipe is what a search candidate decodes to, what the run store records, and what
``evomerge merge`` reads. It mirrors a mergekit YAML with a ``models:`` list: global
``parameters``, per-model ``parameters``, and each setting a scalar, a gradient list
(interpolated across layers) or a list of ``filter`` conditions. Parsing and
validation reuse mergekit's own ``MergeConfiguration``, so a recipe means what
mergekit would make of the same YAML, and it exports back to that YAML.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import MergeConfigError
from ..yamltext import load_yaml
from .methods import MethodSpec, check_value, get_method, resolve_params

Scalar = bool | int | float | str
#: A frozen mergekit ``ParameterSetting``: a scalar, a gradient (tuple of scalars), or
#: filter conditions (tuple of ``(filter, value)``; ``None`` matches every tensor).
Setting = Scalar | tuple[Scalar, ...] | tuple[tuple[str | None, "Scalar | tuple[Scalar, ...]"], ...]
Settings = tuple[tuple[str, Setting], ...]
#: Top-level key for what mergekit has no field for; mergekit ignores unknown keys.
EXTRA_KEY = "evomerge"


@dataclass(frozen=True)
class ModelEntry:
    model: str
    parameters: Settings = ()


@dataclass(frozen=True)
class Recipe:
    """One merge. ``models`` are the inputs besides the base, in order."""

    method: str
    models: tuple[ModelEntry, ...]
    base_model: str | None = None
    parameters: Settings = ()
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    seed: int = 0  # for random sparsification (DARE, DELLA); mergekit has no equivalent
    #: keep the common prefix of token ids when vocabularies differ (mergekit's
    #: --unsafe-truncate-embeddings, a command-line option there)
    unsafe_truncate_embeddings: bool = False

    def __post_init__(self) -> None:
        spec = get_method(self.method)  # an unknown method fails here, with a suggestion
        for settings in (self.parameters, *(m.parameters for m in self.models)):
            for name, setting in settings:
                check_setting(spec, name, setting)
        if not self.models:
            raise MergeConfigError("a recipe needs at least one model besides the base")
        names = [m.model for m in self.models]
        if len(set(names)) != len(names):
            raise MergeConfigError(f"a model is listed twice in the recipe: {names}")

    @property
    def model_names(self) -> list[str]:
        return [m.model for m in self.models]

    @classmethod
    def from_params(
        cls,
        method: str,
        models: Sequence[str],
        params: Mapping[str, Any],
        *,
        base_model: str | None = None,
        seed: int = 0,
    ) -> Recipe:
        """A recipe from flat parameters, as a search decodes them: a per-model parameter is
        one value for all models or one per model (in ``models`` order); a shared one is a
        single value. Checked against the method's declaration (``resolve_params``)."""
        spec = get_method(method)
        resolve_params(spec, params, n_endpoints=len(models))
        shared: list[Any] = []
        per_model: list[list[Any]] = [[] for _ in models]
        for name, value in params.items():
            if not spec.param(name).per_model:
                shared.append((name, value))
                continue
            values = list(value) if isinstance(value, list | tuple) else [value] * len(models)
            for entry, v in zip(per_model, values, strict=True):
                entry.append((name, v))
        entries = tuple(ModelEntry(str(m), tuple(sorted(p))) for m, p in zip(models, per_model, strict=True))
        return cls(method, entries, base_model=base_model, parameters=tuple(sorted(shared)), seed=seed)

    # -- mergekit YAML ------------------------------------------------------------------

    @classmethod
    def from_mergekit(cls, config: Mapping[str, Any]) -> Recipe:
        """From a parsed mergekit config with a ``models:`` list."""
        config = dict(config)
        extra = config.pop(EXTRA_KEY, None) or {}
        if config.get("slices") or config.get("modules"):
            raise MergeConfigError(
                "this config uses 'slices' or 'modules' (layer surgery); a recipe needs a 'models' list. "
                "`evomerge merge` runs such configs through mergekit itself."
            )
        _check_mergekit_schema(config)
        base = config.get("base_model")
        models = []
        for entry in config.get("models") or []:
            name = str(entry["model"])
            if name == base and not entry.get("parameters"):
                continue  # mergekit lists the base as an input too; it is ours already
            models.append(ModelEntry(name, _freeze_settings(entry.get("parameters"))))
        unknown = sorted(set(extra) - {"seed", "unsafe_truncate_embeddings"})
        if unknown:
            raise MergeConfigError(
                f"unknown key(s) under {EXTRA_KEY}: {unknown}; valid: seed, unsafe_truncate_embeddings"
            )
        seed = extra.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise MergeConfigError(f"{EXTRA_KEY}.seed must be an integer, got {seed!r}")
        truncate = extra.get("unsafe_truncate_embeddings", False)
        if not isinstance(truncate, bool):
            raise MergeConfigError(f"{EXTRA_KEY}.unsafe_truncate_embeddings must be true or false, got {truncate!r}")
        return cls(
            method=str(config["merge_method"]),
            models=tuple(models),
            base_model=None if base is None else str(base),
            parameters=_freeze_settings(config.get("parameters")),
            dtype=config.get("dtype"),
            out_dtype=config.get("out_dtype"),
            tokenizer_source=None if config.get("tokenizer_source") is None else str(config["tokenizer_source"]),
            seed=seed,
            unsafe_truncate_embeddings=truncate,
        )

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Recipe:
        text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
        return cls.from_mergekit(parse_yaml(text))

    def to_mergekit(self) -> dict[str, Any]:
        config: dict[str, Any] = {"merge_method": self.method}
        if self.base_model is not None:
            config["base_model"] = self.base_model
        config["models"] = [
            {"model": m.model, **({"parameters": _thaw_settings(m.parameters)} if m.parameters else {})}
            for m in self.models
        ]
        if self.parameters:
            config["parameters"] = _thaw_settings(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        extra = {"seed": self.seed} if self.seed else {}
        if self.unsafe_truncate_embeddings:
            extra["unsafe_truncate_embeddings"] = True
        if extra:
            config[EXTRA_KEY] = extra
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mergekit(), sort_keys=False)

    @property
    def digest(self) -> str:
        """A hash that is stable across processes (``hash()`` of a str is not): the key
        under which stores and caches record a recipe."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


def per_layer(values: Sequence[float], num_layers: int, group_size: int = 1) -> tuple[float, ...]:
    """A setting with one value per group of ``group_size`` consecutive layers, as a
    mergekit gradient list with one point per layer.

    mergekit evaluates a gradient at ``t = layer / (layers - 1)``, so a list with one
    point per layer gives each layer its own value (tensors outside the layers get the
    first). ``values`` has one entry per group: ``ceil(num_layers / group_size)``.
    """
    groups = -(-num_layers // group_size)
    if len(values) != groups:
        raise MergeConfigError(
            f"{num_layers} layers in groups of {group_size} make {groups} groups; got {len(values)} values"
        )
    return tuple(float(values[layer // group_size]) for layer in range(num_layers))


def parse_yaml(text: str) -> dict[str, Any]:
    try:
        config = load_yaml(text)
    except yaml.YAMLError as err:
        raise MergeConfigError(f"not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise MergeConfigError("a merge config is a YAML mapping with merge_method, models, ...")
    return config


def _check_mergekit_schema(config: Mapping[str, Any]) -> None:
    """Validate with mergekit's own schema, so what we accept mergekit accepts too."""
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    known = set(MergeConfiguration.model_fields)
    unknown = sorted(set(config) - known)
    if unknown:
        raise MergeConfigError(f"unknown key(s) in merge config: {unknown}. Valid: {sorted(known)}")
    try:
        MergeConfiguration.model_validate(dict(config))
    except (ValidationError, RuntimeError) as err:
        raise MergeConfigError(f"invalid merge config: {err}") from err


def _freeze_value(value: Any) -> Scalar | tuple[Scalar, ...]:
    if isinstance(value, list | tuple):
        if not all(isinstance(v, bool | int | float | str) for v in value):
            raise MergeConfigError(f"a gradient is a list of numbers, got {value!r}")
        return tuple(value)
    if not isinstance(value, bool | int | float | str):
        raise MergeConfigError(f"a parameter value is a number, a list of numbers or filters, got {value!r}")
    return value


def _freeze_setting(value: Any) -> Setting:
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        conditions = []
        for cond in value:
            if set(cond) - {"filter", "value"} or "value" not in cond:
                raise MergeConfigError(f"a filter condition has 'filter' and 'value', got {cond!r}")
            conditions.append((cond.get("filter"), _freeze_value(cond["value"])))
        return tuple(conditions)
    return _freeze_value(value)


def _freeze_settings(settings: Mapping[str, Any] | None) -> Settings:
    if not settings:
        return ()
    return tuple(sorted((str(k), _freeze_setting(v)) for k, v in settings.items()))


def _thaw_setting(value: Setting) -> Any:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        out = []
        for filt, v in value:
            cond = {"value": list(v) if isinstance(v, tuple) else v}
            if filt is not None:
                cond = {"filter": filt, **cond}
            out.append(cond)
        return out
    return list(value) if isinstance(value, tuple) else value


def _thaw_settings(settings: Settings) -> dict[str, Any]:
    return {k: _thaw_setting(v) for k, v in settings}


def thaw(settings: Settings) -> dict[str, Any]:
    """Settings as the plain values mergekit's resolver reads."""
    from mergekit.config import ConditionalParameter

    out: dict[str, Any] = {}
    for key, value in _thaw_settings(settings).items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = [ConditionalParameter(**c) for c in value]
        out[key] = value
    return out


def check_setting(spec: MethodSpec, name: str, setting: Setting) -> None:
    """Every value a setting can take (gradient points, filter values) must suit the parameter.

    mergekit silently ignores a parameter its method does not have; a typo such as
    ``densty`` would then merge with the default. We refuse it.
    """
    param = spec.param(name)
    for value in _values(setting):
        check_value(spec, param, value)


def _values(setting: Setting) -> list[Any]:
    if isinstance(setting, tuple) and setting and isinstance(setting[0], tuple):  # filter conditions
        return [v for _, value in setting for v in _values(value)]
    return list(setting) if isinstance(setting, tuple) else [setting]
