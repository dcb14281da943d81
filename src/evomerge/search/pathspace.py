"""The layer-path search space: what pymoo's ``x in [0, 1]^d`` means as a ``LayerPath``.

As in the paper (Akiba et al., 2024, section 3.2): the layer bank is the sources' decoder
layers in order (model A's first, then the others', M in all), and the slot sequence
repeats the bank ``repeats`` times (T = M x repeats slots). The genome is

- one inclusion gene per slot (``on@t:model.layer``; on when its value is 1): the path
  is the included slots in slot order, cut at ``max_length``;
- the stream scales: ``matrix`` has one gene per ordered pair of bank layers
  (``scale@a>b``: the hidden state passing from layer a to layer b is multiplied by
  it; the first hop's stream is not scaled), ``slot`` one gene per slot (the stream
  entering that slot), ``none`` keeps every scale at 1.

``keep_first`` and ``keep_last`` of model A's layers are fixed at the path's start and
end, outside the searched slots (their incoming scales are still searched). Where the
paper differs: it searches I and W as one real vector with CMA-ES; here the inclusion
genes are categorical, so any pymoo algorithm can search them, and ``initial_x`` is
model A's own path (scales 1), which CMA-ES starts from (its ``x0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..merge.layerpath import Hop, LayerPath
from .space import Gene, SearchSpaceError, gene_values

ScaleMode = Literal["matrix", "slot", "none"]
#: Where an inclusion gene sits at the start: on (1) or off (0) by a margin of 0.15 from
#: the 0.5 threshold, 1.5 of CMA-ES's default sigma (0.1): about 7% of slots flip per candidate.
INITIAL_ON, INITIAL_OFF = 0.65, 0.35


class PathSpace:
    """``sources`` in bank order (the first is model A, the head); ``num_layers`` per source."""

    def __init__(
        self,
        sources: Sequence[str],
        num_layers: Mapping[str, int],
        *,
        repeats: int = 2,
        scales: ScaleMode = "matrix",
        scale_range: tuple[float, float] = (0.5, 1.5),
        max_length: int | None = None,
        keep_first: int = 0,
        keep_last: int = 0,
        frozen: Mapping[str, float] | None = None,
    ) -> None:
        if not sources:
            raise SearchSpaceError("a path space needs at least one source model")
        self.sources, self.head = list(sources), sources[0]
        self.num_layers = dict(num_layers)
        self.repeats, self.scale_mode, self.max_length = repeats, scales, max_length
        low, high = scale_range
        if not 0 < low <= 1 <= high:
            raise SearchSpaceError(f"scale_range {scale_range}: choose 0 < low <= 1 <= high (1 keeps the stream)")
        self.scale_range = (float(low), float(high))
        head_layers = self.num_layers[self.head]
        if repeats < 1:
            raise SearchSpaceError(f"repeats {repeats}: choose 1 or more")
        if keep_first < 0 or keep_last < 0 or keep_first + keep_last > head_layers:
            raise SearchSpaceError(f"keep_first + keep_last must be within model A's {head_layers} layers")
        if max_length is not None and max_length < keep_first + keep_last:
            raise SearchSpaceError(f"max_length {max_length} is shorter than keep_first + keep_last")
        self.keep_first, self.keep_last = keep_first, keep_last
        short = [Path(s).name for s in self.sources]
        self.labels = dict(zip(self.sources, short if len(set(short)) == len(short) else self.sources, strict=True))
        self.bank = [(s, i) for s in self.sources for i in range(self.num_layers[s])]
        self.slots = self.bank * repeats
        genes = [Gene("on", None, f"{t}:{self._name(s, i)}", choices=(0, 1)) for t, (s, i) in enumerate(self.slots)]
        low, high = self.scale_range
        if scales == "matrix":
            genes += [
                Gene("scale", None, f"{self._name(*a)}>{self._name(*b)}", low, high)
                for a in self.bank
                for b in self.bank
            ]
        elif scales == "slot":
            genes += [Gene("scale", None, f"{t}:{self._name(s, i)}", low, high) for t, (s, i) in enumerate(self.slots)]
        elif scales != "none":
            raise SearchSpaceError(f"scales {scales!r}: choose matrix, slot or none")
        frozen = dict(frozen or {})
        unknown = sorted(set(frozen) - {g.name for g in genes})
        if unknown:
            raise SearchSpaceError(f"cannot freeze {unknown[:5]}: no such gene (genes look like {genes[0].name})")
        self.all_genes, self.frozen = genes, frozen
        self.genes = [g for g in genes if g.name not in frozen]
        self._index = {(s, i): k for k, (s, i) in enumerate(self.bank)}
        self._scale_base = len(self.slots)

    def _name(self, source: str, layer: int) -> str:
        return f"{self.labels[source]}.{layer}"

    @property
    def n_var(self) -> int:
        return len(self.genes)

    def values(self, x: Sequence[float] | np.ndarray) -> dict[str, float | int]:
        """Gene name -> value, frozen genes included."""
        return gene_values(x, self.genes, self.all_genes, self.frozen)

    def decode(self, x: Sequence[float] | np.ndarray) -> LayerPath:
        values = [v for v in self.values(x).values()]
        on = values[: len(self.slots)]
        head_layers = self.num_layers[self.head]
        chosen = [t for t, v in enumerate(on) if v]
        if self.max_length is not None:
            chosen = chosen[: max(0, self.max_length - self.keep_first - self.keep_last)]
        steps: list[tuple[tuple[str, int], int | None]] = [((self.head, i), None) for i in range(self.keep_first)]
        steps += [(self.slots[t], t) for t in chosen]
        steps += [((self.head, i), None) for i in range(head_layers - self.keep_last, head_layers)]
        hops = []
        for k, (layer, slot) in enumerate(steps):
            scale = 1.0
            if k > 0 and self.scale_mode == "matrix":
                prev = self._index[steps[k - 1][0]]
                scale = float(values[self._scale_base + prev * len(self.bank) + self._index[layer]])
            elif k > 0 and self.scale_mode == "slot" and slot is not None:
                scale = float(values[self._scale_base + slot])
            hops.append(Hop(layer[0], layer[1], round(scale, 6)))
        return LayerPath(self.head, tuple(hops))

    def inclusion_genes(self) -> list[int]:
        """Where in ``x`` the inclusion genes are (binary: CMAwM's ``discrete``)."""
        return [k for k, g in enumerate(self.genes) if g.choices is not None]

    def initial_x(self) -> np.ndarray:
        """Model A's own path, every scale 1: where the search starts."""
        own = {(self.head, i) for i in range(self.keep_first, self.num_layers[self.head] - self.keep_last)}
        start: dict[str, float] = {}
        low, high = self.scale_range
        one = (1.0 - low) / (high - low) if high > low else 0.5
        for t, slot in enumerate(self.slots):
            start[self.all_genes[t].name] = INITIAL_ON if (t < len(self.bank) and slot in own) else INITIAL_OFF
        for gene in self.all_genes[len(self.slots) :]:
            start[gene.name] = one
        return np.array([start[g.name] for g in self.genes])
