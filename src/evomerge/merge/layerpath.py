"""A layer path: which decoder layers, of which models, in which order, the hidden state
flows through (the data-flow space of Sakana's evolutionary model merge).

A path is the data-flow twin of a ``Recipe``: what a path search decodes to, what the
run store records, and what exports to a mergekit config. Its YAML *is* a mergekit
``passthrough`` config with ``slices`` (one one-layer slice per hop), so
``mergekit-yaml`` rebuilds the exported checkpoint from it, and the exact path rides
along under the ``evomerge:`` key (which mergekit ignores).

Each hop multiplies the hidden state entering it by ``scale``. In a pre-norm block the
norm ignores its input's scale, so a stream scaled by ``s_t`` at hop ``t`` equals an
unscaled stream through a copy of hop ``t`` whose residual outputs (``o_proj`` and
``down_proj``, GPT-2's ``c_proj``) are divided by ``C_t = s_1 * ... * s_t`` (up to the
norm's eps): that is how an ordinary checkpoint holds a scaled path (``folded_scales``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import MergeConfigError
from .recipe import EXTRA_KEY, parse_yaml

#: Tensor-name filters of the projections that write into the residual stream.
RESIDUAL_OUTPUTS: tuple[str, ...] = ("o_proj", "down_proj", "c_proj")


@dataclass(frozen=True)
class Hop:
    """One step of a path: layer ``layer`` of ``model``; the stream entering it is multiplied by ``scale``."""

    model: str
    layer: int
    scale: float = 1.0


@dataclass(frozen=True)
class LayerPath:
    """``hops`` in order; embeddings, final norm and LM head come from ``head`` (model A)."""

    head: str
    hops: tuple[Hop, ...]
    dtype: str | None = None

    def __post_init__(self) -> None:
        # no hops is a path too (embeddings straight to the head): a genome with every slot
        # off decodes to it, and it scores as badly as it should rather than stop the run
        for hop in self.hops:
            if hop.layer < 0 or not math.isfinite(hop.scale) or hop.scale <= 0:
                raise MergeConfigError(f"a hop needs a layer >= 0 and a finite scale > 0, got {hop}")

    @classmethod
    def identity(cls, model: str, num_layers: int) -> LayerPath:
        """``model`` itself: its own layers in order, every scale 1."""
        return cls(model, tuple(Hop(model, i) for i in range(num_layers)))

    @property
    def models(self) -> list[str]:
        """Every model the path reads, the head first."""
        return list(dict.fromkeys([self.head, *(h.model for h in self.hops)]))

    def folded_scales(self) -> list[float]:
        """``1 / C_t`` per hop: the factor on hop ``t``'s residual outputs in an unscaled copy."""
        out, product = [], 1.0
        for hop in self.hops:
            product *= hop.scale
            out.append(1.0 / product)
        return out

    # -- YAML: a mergekit passthrough config, the path under ``evomerge:`` ----------------

    def to_mergekit(self) -> dict[str, Any]:
        slices = []
        for hop, factor in zip(self.hops, self.folded_scales(), strict=True):
            source: dict[str, Any] = {"model": hop.model, "layer_range": [hop.layer, hop.layer + 1]}
            if factor != 1.0:
                source["parameters"] = {
                    "scale": [*({"filter": f, "value": factor} for f in RESIDUAL_OUTPUTS), {"value": 1.0}]
                }
            slices.append({"sources": [source]})
        # mergekit takes the embeddings from the first slice's model and the final norm and
        # head from the last one's: an empty slice of the head opens or closes the config
        # where the path starts or ends in another model, so the YAML means this path
        bookend = {"sources": [{"model": self.head, "layer_range": [0, 0]}]}
        if not self.hops or self.hops[0].model != self.head:
            slices.insert(0, bookend)
        if self.hops and self.hops[-1].model != self.head:
            slices.append(bookend)
        config: dict[str, Any] = {"merge_method": "passthrough", "base_model": self.head, "slices": slices}
        if self.dtype is not None:
            config["dtype"] = self.dtype
        config[EXTRA_KEY] = {"path": {"head": self.head, "hops": [[h.model, h.layer, h.scale] for h in self.hops]}}
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mergekit(), sort_keys=False)

    @classmethod
    def from_mergekit(cls, config: Mapping[str, Any]) -> LayerPath:
        path = (config.get(EXTRA_KEY) or {}).get("path")
        if not isinstance(path, dict) or "head" not in path or not isinstance(path.get("hops"), list):
            raise MergeConfigError(f"a layer path's YAML holds {EXTRA_KEY}.path with head and hops")
        hops = []
        for hop in path["hops"]:
            if not (isinstance(hop, list | tuple) and len(hop) == 3):
                raise MergeConfigError(f"a hop is [model, layer, scale], got {hop!r}")
            try:
                hops.append(Hop(str(hop[0]), int(hop[1]), float(hop[2])))
            except (TypeError, ValueError) as err:
                raise MergeConfigError(f"a hop is [model, layer, scale], got {hop!r}: {err}") from None
        return cls(str(path["head"]), tuple(hops), dtype=config.get("dtype"))

    @classmethod
    def from_yaml(cls, text: str) -> LayerPath:
        return cls.from_mergekit(parse_yaml(text))

    @property
    def digest(self) -> str:
        """Stable across processes: the key the run store records a path under."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]

    def describe(self, labels: Mapping[str, str] | None = None) -> str:
        """One line: ``head A; A:0 A:1 B:3x0.80 ...`` (model label, layer, scale where not 1)."""
        labels = labels or {}
        parts = [
            f"{labels.get(h.model, h.model)}:{h.layer}" + (f"x{h.scale:.2f}" if h.scale != 1.0 else "")
            for h in self.hops
        ]
        return f"head {labels.get(self.head, self.head)}; " + " ".join(parts)


def is_path_yaml(text: str) -> bool:
    """Whether a stored candidate's YAML is a layer path (else it is a recipe)."""
    config = parse_yaml(text)
    return isinstance(config.get(EXTRA_KEY), dict) and "path" in config[EXTRA_KEY]


def check_hops(path: LayerPath, layers: Mapping[str, int], names: Sequence[str] = ()) -> None:
    """Every hop names a known model and one of its layers."""
    for hop in path.hops:
        if hop.model not in layers:
            raise MergeConfigError(f"the path reads {hop.model!r}, which is not a source: {list(names or layers)}")
        if hop.layer >= layers[hop.model]:
            raise MergeConfigError(f"{hop.model} has {layers[hop.model]} layers; the path asks for layer {hop.layer}")
    if path.head not in layers:
        raise MergeConfigError(f"the path's head {path.head!r} is not a source: {list(names or layers)}")
