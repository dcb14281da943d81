"""Anchor items: the few search items a candidate is actually evaluated on.

Ways to pick ``k`` of them (the ``SELECTIONS`` registry), each returning positions into
the search split and a weight per anchor (the share of the split it stands for; the
weights sum to 1):

- ``all``: every item (the ``full`` estimator's);
- ``random``: a uniform sample, equal weights;
- ``stratified``: a proportional sample from each stratum (an item field such as a
  subject or language, or else difficulty bands measured on the respondents), each
  anchor weighted by its stratum's share;
- ``kmeans_irt``: tinyBenchmarks' anchor points (Polo et al., 2024): k-means on the
  fitted IRT item embeddings ``[a_i, b_i]``; the item nearest each centroid is the
  anchor, weighted by its cluster's mass;
- ``kmeans_correct``: the same on each item's vector of correctness over the
  respondents (tinyBenchmarks' "correctness" anchors).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from ..errors import EvomergeError
from ..registry import Registry
from .irt import IRTModel


class AnchorError(EvomergeError):
    """Anchors that cannot be drawn as asked."""


@dataclass(frozen=True)
class Anchors:
    """Positions of the anchors in the search split, and what share of it each stands for."""

    index: np.ndarray
    weights: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        if len(self.index) != len(self.weights) or len(self.index) == 0:
            raise AnchorError("anchors need one weight each, and at least one anchor")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def unseen(self) -> np.ndarray:
        """The search items that are not anchors."""
        return np.setdiff1d(np.arange(self.n_items), self.index)


@dataclass(frozen=True)
class Pool:
    """What a selection may draw on: the items, and what the respondents told of them."""

    n_items: int
    seed: int = 0
    irt: IRTModel | Callable[[], IRTModel] | None = None  # a callable: fitted only when a selection asks
    responses: np.ndarray | None = None
    strata: Sequence[str] | None = None


@dataclass(frozen=True)
class Selection:
    """A registered way to pick anchors. ``pick(k, pool)``; ``needs_respondents(has_strata)``:
    whether it needs the respondents' scores (an IRT fit or their per-item scores)."""

    pick: Callable[[int, Pool], Anchors]
    needs_respondents: Callable[[bool], bool]
    doc: str = ""


#: The anchor selections a config can name (``fitness.selection``).
SELECTIONS: Registry[Selection] = Registry("anchor selection", AnchorError)


def select_anchors(
    selection: str,
    k: int | None,
    n_items: int,
    *,
    seed: int = 0,
    irt: IRTModel | Callable[[], IRTModel] | None = None,
    responses: np.ndarray | None = None,
    strata: Sequence[str] | None = None,
) -> Anchors:
    """``k`` anchors out of ``n_items``, reproducibly from ``seed`` (``k=None``: every item
    for ``all``)."""
    chosen = SELECTIONS.get(selection)
    k = n_items if k is None else k
    if not 0 < k <= n_items:
        raise AnchorError(f"cannot pick {k} anchors from {n_items} search items; choose 1..{n_items}")
    return chosen.pick(k, Pool(n_items, seed, irt, responses, strata))


def _all(k: int, pool: Pool) -> Anchors:
    n = pool.n_items
    return Anchors(np.arange(n), np.full(n, 1.0 / n), n)


def _random(k: int, pool: Pool) -> Anchors:
    rng = np.random.default_rng(pool.seed)
    index = np.sort(rng.choice(pool.n_items, size=k, replace=False))
    return Anchors(index, np.full(k, 1.0 / k), pool.n_items)


def _by_strata(k: int, pool: Pool) -> Anchors:
    labels = list(pool.strata) if pool.strata is not None else _difficulty_bands(pool.responses, k)
    if len(labels) != pool.n_items:
        raise AnchorError(f"{len(labels)} strata labels for {pool.n_items} items")
    return _stratified(labels, k, np.random.default_rng(pool.seed))


def _kmeans_irt(k: int, pool: Pool) -> Anchors:
    irt = pool.irt() if callable(pool.irt) else pool.irt
    if irt is None:
        raise AnchorError("kmeans_irt anchors need a fitted IRT model")
    return _kmeans(np.column_stack([irt.a, irt.b]), k, pool.seed)


def _kmeans_correct(k: int, pool: Pool) -> Anchors:
    if pool.responses is None:
        raise AnchorError("kmeans_correct anchors need the respondents' per-item scores")
    return _kmeans(np.asarray(pool.responses, dtype=float).T, k, pool.seed)


SELECTIONS.register("all", Selection(_all, lambda has_strata: False, "Every search item, equal weights"))
SELECTIONS.register("random", Selection(_random, lambda has_strata: False, "A uniform sample, equal weights"))
SELECTIONS.register(
    "stratified",
    Selection(
        _by_strata,
        lambda has_strata: not has_strata,
        "A proportional sample per stratum (fitness.strata, else difficulty bands from the respondents)",
    ),
)
SELECTIONS.register(
    "kmeans_irt",
    Selection(_kmeans_irt, lambda has_strata: True, "The items nearest k-means centroids of the IRT item embeddings"),
)
SELECTIONS.register(
    "kmeans_correct",
    Selection(
        _kmeans_correct, lambda has_strata: True, "The items nearest k-means centroids of the respondents' scores"
    ),
)


def _difficulty_bands(responses: np.ndarray | None, k: int) -> list[str]:
    """Without item strata, stratify by difficulty: quantile bands of the respondents' mean score."""
    if responses is None:
        raise AnchorError("stratified anchors need item strata (a field of the items) or respondents' scores")
    rate = np.asarray(responses, dtype=float).mean(axis=0)
    bands = min(5, k)
    edges = np.quantile(rate, np.linspace(0, 1, bands + 1)[1:-1])
    return [f"band{int(i)}" for i in np.searchsorted(edges, rate, side="right")]


def _stratified(labels: list[str], k: int, rng: np.random.Generator) -> Anchors:
    members: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    names = sorted(members)
    n = len(labels)
    quota = np.array([k * len(members[s]) / n for s in names])
    take = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - take), kind="stable")[: k - take.sum()]:  # largest remainders
        take[j] += 1
    index, weights = [], []
    for name, t in zip(names, take, strict=True):
        if t == 0:
            continue
        chosen = rng.choice(members[name], size=t, replace=False)
        index.extend(chosen.tolist())
        weights.extend([len(members[name]) / n / t] * t)
    order = np.argsort(index)
    return Anchors(np.asarray(index)[order], np.asarray(weights)[order], n)


def _kmeans(embeddings: np.ndarray, k: int, seed: int) -> Anchors:
    """The item nearest each k-means centroid, weighted by its cluster's share of items.

    Items with identical embeddings (every respondent right on both, say) can leave
    fewer distinct clusters than ``k``; then there are fewer anchors, never duplicates.
    """
    n = len(embeddings)
    distinct = len(np.unique(embeddings, axis=0))
    km = KMeans(n_clusters=min(k, distinct), n_init=10, random_state=seed).fit(embeddings)
    index, weights = [], []
    for c in range(km.n_clusters):
        members = np.flatnonzero(km.labels_ == c)
        if len(members) == 0:
            continue
        d = np.linalg.norm(embeddings[members] - km.cluster_centers_[c], axis=1)
        index.append(int(members[np.argmin(d)]))
        weights.append(len(members) / n)
    order = np.argsort(index)
    return Anchors(np.asarray(index)[order], np.asarray(weights)[order], n)
