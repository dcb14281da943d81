"""CMA-ES with margin (``CMAwM``) as a pymoo algorithm: binary genes stay binary.

Plain CMA-ES searches a layer path's inclusion genes as reals thresholded at 0.5, so a
gene can drift far from the threshold and its slot freezes, or sit on it and flip at
random. CMA-ES with margin (Hamano et al., GECCO 2022; the ``cmaes`` package's
``CMAwM``) treats the genes listed in ``discrete`` as integers on a step of 1 in [0, 1]
and keeps a margin of probability on each value, while the other genes stay
continuous: the structured search the layer-path literature recommends for inclusion
(binary) plus scales (continuous). pymoo has no such algorithm; this adapter gives the
``cmaes`` implementation pymoo's ask/tell interface, so the loop, the store and replay
resume treat it like any other algorithm. A path run fills ``discrete`` and ``x0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population


class CMAwM(Algorithm):
    """``pop_size`` candidates per generation (default: CMA-ES's 4 + 3 ln n), started at
    ``x0`` (default: the centre) with step ``sigma``; genes ``discrete`` (indices) take 0 or 1."""

    def __init__(
        self,
        pop_size: int | None = None,
        sigma: float = 0.1,
        x0: Sequence[float] | None = None,
        discrete: Sequence[int] = (),
        margin: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pop_size, self.sigma, self.x0, self.discrete, self.margin = pop_size, sigma, x0, list(discrete), margin
        self._told: list[np.ndarray] = []

    def _setup(self, problem: Any, **kwargs: Any) -> None:
        from cmaes import CMAwM as Strategy

        n = problem.n_var
        steps = np.zeros(n)
        steps[self.discrete] = 1.0
        mean = np.full(n, 0.5) if self.x0 is None else np.clip(np.asarray(self.x0, dtype=float), 0.0, 1.0)
        self.strategy = Strategy(
            mean=mean,
            sigma=self.sigma,
            bounds=np.tile([0.0, 1.0], (n, 1)),
            steps=steps,
            seed=int(self.seed or 0) % (2**31 - 1) + 1,  # as for CMAES: a seed of 0 means "from the clock" there
            population_size=self.pop_size,
            margin=self.margin,
        )

    def _initialize_infill(self) -> Population:
        return self._infill()

    def _infill(self) -> Population:
        pairs = [self.strategy.ask() for _ in range(self.strategy.population_size)]
        self._told = [told for _, told in pairs]
        return Population.new(X=np.array([x for x, _ in pairs]))

    def _initialize_advance(self, infills: Population | None = None, **kwargs: Any) -> None:
        self._advance(infills, **kwargs)

    def _advance(self, infills: Population | None = None, **kwargs: Any) -> None:
        assert infills is not None
        values = np.asarray(infills.get("F"), dtype=float)[:, 0]
        self.strategy.tell(list(zip(self._told, values, strict=True)))
        self.pop = infills
