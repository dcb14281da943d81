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
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from ..errors import CandidateError, EvomergeError
from ..registry import Registry
from .anchors import Anchors
from .fits import IRTFits
from .irt import IRTModel


class EstimatorError(EvomergeError):
    """Scores that do not fit the estimator's anchors."""


class NonFiniteScoreError(EstimatorError, CandidateError):
    """A candidate scored NaN or infinity on an item (a merge that broke the model, say)."""


#: The estimators a config can name (``fitness.estimator``), by ``name``.
ESTIMATORS: Registry[type[Estimator]] = Registry("estimator", EstimatorError)


@dataclass(frozen=True, eq=False)
class Estimator:
    """Base: the anchors, and the check every ``estimate`` starts with.

    A subclass sets ``name`` and registers itself in ``ESTIMATORS``; ``uses_irt`` says
    that ``build`` needs the IRT fits (respondents' scores), ``default_selection`` names
    the anchor selection it takes when the config gives none (``all``: every item)."""

    name: ClassVar[str] = ""
    uses_irt: ClassVar[bool] = False
    default_selection: ClassVar[str] = "random"
    #: The anchor selections ``evomerge calibrate`` pairs it with by default.
    calibrate_with: ClassVar[tuple[str, ...]] = ()
    anchors: Anchors

    @classmethod
    def build(cls, anchors: Anchors, fits: IRTFits | None, lam: float | None) -> Estimator:
        """The estimator on ``anchors``; ``fits`` is given when ``uses_irt``, ``lam`` when the
        config sets ``lambda``."""
        return cls(anchors)

    def estimate(self, scores: Sequence[float]) -> float:
        raise NotImplementedError

    def _scores(self, scores: Sequence[float]) -> np.ndarray:
        y = np.asarray(scores, dtype=float)
        if y.shape != (len(self.anchors),):
            raise EstimatorError(
                f"{self.name}: {len(y)} scores for {len(self.anchors)} anchors; score exactly the anchors, in order"
            )
        if not np.isfinite(y).all():
            raise NonFiniteScoreError(f"{self.name}: a score is NaN or infinite")
        return y


@ESTIMATORS.register("full")
@dataclass(frozen=True, eq=False)
class Full(Estimator):
    """Every search item is scored: the mean, no estimate."""

    name: ClassVar[str] = "full"
    default_selection: ClassVar[str] = "all"

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self._scores(scores).mean())


@ESTIMATORS.register("mean")
@dataclass(frozen=True, eq=False)
class Mean(Estimator):
    """The anchors' mean score (a random subsample, usually)."""

    name: ClassVar[str] = "mean"
    calibrate_with: ClassVar[tuple[str, ...]] = ("random", "stratified")

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self._scores(scores).mean())


@ESTIMATORS.register("weighted")
@dataclass(frozen=True, eq=False)
class Weighted(Estimator):
    """The anchors' scores weighted by the share of items each stands for (tinyBenchmarks' anchor points)."""

    name: ClassVar[str] = "weighted"
    default_selection: ClassVar[str] = "kmeans_irt"
    calibrate_with: ClassVar[tuple[str, ...]] = ("kmeans_irt", "kmeans_correct")

    def estimate(self, scores: Sequence[float]) -> float:
        return float(self.anchors.weights @ self._scores(scores))


def irt_extrapolation(irt: IRTModel, anchors: Anchors, y: np.ndarray, theta: np.ndarray) -> float:
    """p-IRT's blend: the anchors' observed mean, and the model's prediction on the rest,
    each in proportion to the items it covers."""
    unseen = anchors.unseen
    share = len(anchors) / anchors.n_items
    predicted = float(irt.probabilities(theta)[unseen].mean()) if len(unseen) else 0.0
    return share * float(y.mean()) + (1 - share) * predicted


@ESTIMATORS.register("pirt")
@dataclass(frozen=True, eq=False)
class PIRT(Estimator):
    """tinyBenchmarks' p-IRT: the anchors' mean, plus the IRT prediction on the other items."""

    name: ClassVar[str] = "pirt"
    uses_irt: ClassVar[bool] = True
    calibrate_with: ClassVar[tuple[str, ...]] = ("random", "kmeans_irt")
    irt: IRTModel

    @classmethod
    def build(cls, anchors: Anchors, fits: IRTFits | None, lam: float | None) -> Estimator:
        assert fits is not None
        return cls.fitted(anchors, fits, fits.full, None)

    @classmethod
    def fitted(cls, anchors: Anchors, fits: IRTFits, irt: IRTModel, rows: np.ndarray | None) -> PIRT:
        """This estimator on ``irt``, one of ``fits``' models (fitted on ``rows``, default all)."""
        return cls(anchors, irt)

    def ability(self, y: np.ndarray) -> np.ndarray:
        return self.irt.ability(y, self.anchors.index)

    def estimate(self, scores: Sequence[float]) -> float:
        y = self._scores(scores)
        return irt_extrapolation(self.irt, self.anchors, y, self.ability(y))


@ESTIMATORS.register("mpirt")
@dataclass(frozen=True, eq=False)
class MPIRT(PIRT):
    """MERGE3's mp-IRT: p-IRT with the ability a combination of the endpoints' abilities.

    ``basis``: the endpoints' abilities, one row each, from the IRT fit."""

    name: ClassVar[str] = "mpirt"
    basis: np.ndarray

    @classmethod
    def fitted(cls, anchors: Anchors, fits: IRTFits, irt: IRTModel, rows: np.ndarray | None) -> PIRT:
        return cls(anchors, irt, fits.basis(irt, rows))

    def ability(self, y: np.ndarray) -> np.ndarray:
        return self.irt.combination(y, self.anchors.index, self.basis)


class _Generalized:
    """The "g" of gp-IRT and gmp-IRT: ``lam * weighted + (1 - lam) * `` the IRT estimate of
    the class this is mixed into (``lam`` is a field of that dataclass). Without a
    configured ``lambda``, it is the value that predicts the validation respondents best."""

    lam: float
    default_selection: ClassVar[str] = "kmeans_irt"
    calibrate_with: ClassVar[tuple[str, ...]] = ("kmeans_irt",)

    @classmethod
    def build(cls, anchors: Anchors, fits: IRTFits | None, lam: float | None) -> Estimator:
        assert fits is not None
        inner: type[PIRT] = next(c for c in cls.__mro__ if c.__name__ in ("PIRT", "MPIRT"))
        if lam is None:
            held_out = inner.fitted(anchors, fits, fits.train, fits.train_rows)
            lam = fits.choose_lambda(cls.name, anchors, held_out.estimate)  # type: ignore[attr-defined]
        part = inner.fitted(anchors, fits, fits.full, None)
        return cls(**{f.name: getattr(part, f.name) for f in fields(part)}, lam=lam)  # type: ignore[call-arg, return-value]

    def estimate(self, scores: Sequence[float]) -> float:
        y = self._scores(scores)  # type: ignore[attr-defined]
        irt = super().estimate(y)  # type: ignore[misc]
        return blend(self.lam, float(self.anchors.weights @ y), irt)  # type: ignore[attr-defined]


@ESTIMATORS.register("gpirt")
@dataclass(frozen=True, eq=False)
class GPIRT(_Generalized, PIRT):
    """tinyBenchmarks' gp-IRT: a blend of the weighted anchors and p-IRT.

    ``lam``: the weight of the weighted anchor estimate against p-IRT."""

    name: ClassVar[str] = "gpirt"
    lam: float


@ESTIMATORS.register("gmpirt")
@dataclass(frozen=True, eq=False)
class GMPIRT(_Generalized, MPIRT):
    """MERGE3's gmp-IRT: a blend of the weighted anchors and mp-IRT."""

    name: ClassVar[str] = "gmpirt"
    lam: float


def blend(lam: float, weighted: float, irt: float) -> float:
    if not 0 <= lam <= 1:
        raise EstimatorError(f"lambda must be in [0, 1], got {lam}")
    return lam * weighted + (1 - lam) * irt
