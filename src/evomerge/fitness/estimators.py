"""Fitness estimators: a candidate's score on the whole search split, from its anchors.

Each is a small class with ``anchors`` (what to evaluate) and ``estimate(scores)``
(the scores on those anchors, in anchor order, to one number). With ``y`` the anchor
scores, ``w`` their weights, ``N`` the search items and ``U`` the non-anchors:

- ``full``: every item is an anchor; the mean.
- ``mean``: the mean of ``y`` (a random subsample, usually).
- ``weighted``: ``sum(w * y)`` (clustered anchors, tinyBenchmarks' "IRT" anchor points).
- ``pirt``: tinyBenchmarks' p-IRT. Fit the candidate's ability ``theta`` on the anchors,
  then ``l * mean(y) + (1 - l) * mean_{i in U} P_i(theta)`` with ``l = len(y) / N``.
- ``gpirt``: ``lam * weighted + (1 - lam) * pirt``, ``lam`` chosen on validation respondents.
- ``mpirt``: MERGE3's mp-IRT: as ``pirt``, with ``theta`` the combination of the endpoints'
  abilities fitted on the anchors.
- ``gmpirt``: ``lam * weighted + (1 - lam) * mpirt``.

Papers: Polo et al., "tinyBenchmarks: evaluating LLMs with fewer examples", ICML 2024
(arXiv 2402.14992); Mencattini et al., "MERGE^3: Efficient Evolutionary Merging on
Consumer-grade GPUs", ICML 2025 (arXiv 2502.10436).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import EvomergeError
from .anchors import Anchors
from .irt import IRTModel


class EstimatorError(EvomergeError):
    """Scores that do not fit the estimator's anchors."""


@dataclass(frozen=True, eq=False)
class Estimator:
    """Base: the anchors, and the check every ``estimate`` starts with."""

    name: ClassVar[str] = ""
    uses_irt: ClassVar[bool] = False
    anchors: Anchors

    def estimate(self, scores: Sequence[float]) -> float:
        raise NotImplementedError

    def _scores(self, scores: Sequence[float]) -> np.ndarray:
        y = np.asarray(scores, dtype=float)
        if y.shape != (len(self.anchors),):
            raise EstimatorError(
                f"{self.name}: {len(y)} scores for {len(self.anchors)} anchors; score exactly the anchors, in order"
            )
        if not np.isfinite(y).all():
            raise EstimatorError(f"{self.name}: a score is NaN or infinite")
        return y


@dataclass(frozen=True, eq=False)
class Full(Estimator):
    name: ClassVar[str] = "full"

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self._scores(scores).mean())


@dataclass(frozen=True, eq=False)
class Mean(Estimator):
    name: ClassVar[str] = "mean"

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self._scores(scores).mean())


@dataclass(frozen=True, eq=False)
class Weighted(Estimator):
    name: ClassVar[str] = "weighted"

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self.anchors.weights @ self._scores(scores))


def irt_extrapolation(irt: IRTModel, anchors: Anchors, y: np.ndarray, theta: np.ndarray) -> float:
    """p-IRT's blend: the anchors' observed mean, and the model's prediction on the rest,
    each in proportion to the items it covers."""
    unseen = anchors.unseen
    share = len(anchors) / anchors.n_items
    predicted = float(irt.probabilities(theta)[unseen].mean()) if len(unseen) else 0.0
    return share * float(y.mean()) + (1 - share) * predicted


@dataclass(frozen=True, eq=False)
class PIRT(Estimator):
    name: ClassVar[str] = "pirt"
    uses_irt: ClassVar[bool] = True
    irt: IRTModel

    def ability(self, y: np.ndarray) -> np.ndarray:
        return self.irt.ability(y, self.anchors.index)

    def estimate(self, scores: Sequence[float]) -> float:
        y = self._scores(scores)
        return irt_extrapolation(self.irt, self.anchors, y, self.ability(y))


@dataclass(frozen=True, eq=False)
class MPIRT(PIRT):
    """``basis``: the endpoints' abilities, one row each, from the IRT fit."""

    name: ClassVar[str] = "mpirt"
    basis: np.ndarray

    def ability(self, y: np.ndarray) -> np.ndarray:
        return self.irt.combination(y, self.anchors.index, self.basis)


class _Generalized:
    """The "g" of gp-IRT and gmp-IRT: ``lam * weighted + (1 - lam) * `` the IRT estimate of
    the class this is mixed into (``lam`` is a field of that dataclass)."""

    lam: float

    def estimate(self, scores: Sequence[float]) -> float:
        y = self._scores(scores)  # type: ignore[attr-defined]
        irt = super().estimate(y)  # type: ignore[misc]
        return blend(self.lam, float(self.anchors.weights @ y), irt)  # type: ignore[attr-defined]


@dataclass(frozen=True, eq=False)
class GPIRT(_Generalized, PIRT):
    """``lam``: the weight of the weighted anchor estimate against p-IRT."""

    name: ClassVar[str] = "gpirt"
    lam: float


@dataclass(frozen=True, eq=False)
class GMPIRT(_Generalized, MPIRT):
    name: ClassVar[str] = "gmpirt"
    lam: float


def blend(lam: float, weighted: float, irt: float) -> float:
    if not 0 <= lam <= 1:
        raise EstimatorError(f"lambda must be in [0, 1], got {lam}")
    return lam * weighted + (1 - lam) * irt


ESTIMATORS: dict[str, type[Estimator]] = {c.name: c for c in (Full, Mean, Weighted, PIRT, GPIRT, MPIRT, GMPIRT)}
