"""Anchor selection and each estimator against its formula, on hand-computed cases."""

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit

from evomerge.fitness import (
    GMPIRT,
    GPIRT,
    MPIRT,
    PIRT,
    AnchorError,
    Anchors,
    EstimatorError,
    Full,
    IRTModel,
    Mean,
    Weighted,
    select_anchors,
)

# -- anchors --------------------------------------------------------------------------


def test_random_anchors_are_reproducible_and_equally_weighted():
    a = select_anchors("random", 10, 100, seed=1)
    assert len(set(a.index)) == 10 and list(a.index) == sorted(a.index)
    assert np.allclose(a.weights, 0.1)
    assert np.array_equal(a.index, select_anchors("random", 10, 100, seed=1).index)
    assert not np.array_equal(a.index, select_anchors("random", 10, 100, seed=2).index)


def test_stratified_anchors_are_proportional_and_weighted_by_stratum_mass():
    strata = ["x"] * 60 + ["y"] * 30 + ["z"] * 10
    a = select_anchors("stratified", 10, 100, seed=0, strata=strata)
    picked = [strata[i] for i in a.index]
    assert (picked.count("x"), picked.count("y"), picked.count("z")) == (6, 3, 1)
    assert np.allclose(a.weights, 0.1)  # 0.6/6, 0.3/3, 0.1/1
    b = select_anchors("stratified", 4, 100, seed=0, strata=strata)  # 2.4, 1.2, 0.4 -> 2, 1, 1
    weights = {strata[i]: w for i, w in zip(b.index, b.weights, strict=True)}
    assert weights == pytest.approx({"x": 0.3, "y": 0.3, "z": 0.1})
    assert b.weights.sum() == pytest.approx(1.0)


def test_stratified_without_strata_uses_difficulty_bands():
    rng = np.random.default_rng(0)
    responses = (rng.random((20, 50)) < np.linspace(0.05, 0.95, 50)).astype(float)
    a = select_anchors("stratified", 5, 50, responses=responses)
    assert len(a) == 5 and a.weights.sum() == pytest.approx(1.0)
    with pytest.raises(AnchorError, match="strata"):
        select_anchors("stratified", 5, 50)


def test_kmeans_irt_takes_one_anchor_per_cluster_weighted_by_its_mass():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, -3.0], [2.0, 0.0], [0.5, 3.0]])
    sizes = [50, 30, 20]
    emb = np.concatenate([c + rng.normal(0, 0.05, (n, 2)) for c, n in zip(centres, sizes, strict=True)])
    irt = IRTModel(emb[:, :1], emb[:, 1], np.zeros((1, 1)))
    a = select_anchors("kmeans_irt", 3, 100, irt=irt, seed=0)
    assert sorted(a.weights) == pytest.approx([0.2, 0.3, 0.5])
    cluster_of = np.repeat([0, 1, 2], sizes)
    assert sorted(cluster_of[a.index]) == [0, 1, 2]


def test_kmeans_on_correctness_never_duplicates_anchors():
    responses = np.array([[1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 1, 0]], dtype=float)  # 4 distinct columns
    a = select_anchors("kmeans_correct", 5, 6, responses=responses)
    assert len(a) == 4 and len(set(a.index)) == 4
    assert a.weights.sum() == pytest.approx(1.0)


def test_anchor_errors():
    with pytest.raises(AnchorError, match=r"1\.\.10"):
        select_anchors("random", 11, 10)
    with pytest.raises(AnchorError, match="IRT model"):
        select_anchors("kmeans_irt", 3, 10)
    with pytest.raises(AnchorError, match="unknown anchor selection 'best'"):
        select_anchors("best", 3, 10)  # type: ignore[arg-type]


# -- estimators -----------------------------------------------------------------------

# Four items, one dimension, a = 1, b = (0, 0, 1, -1); anchors are items 0 and 1.
IRT = IRTModel(np.ones((4, 1)), np.array([0.0, 0.0, 1.0, -1.0]), np.zeros((1, 1)))
ANCHORS = Anchors(np.array([0, 1]), np.array([0.75, 0.25]), 4)


def map_theta_both_right() -> float:
    """MAP ability with both anchors right under a N(0, 1) prior: 2 (1 - s(t)) = t."""
    return brentq(lambda t: 2 * (1 - expit(t)) - t, 0, 5)


def test_full_mean_and_weighted():
    assert Full(Anchors(np.arange(4), np.full(4, 0.25), 4)).estimate([1, 0, 1, 1]) == 0.75
    assert Mean(ANCHORS).estimate([1, 0]) == 0.5
    assert Weighted(ANCHORS).estimate([1, 0]) == 0.75  # 0.75 * 1 + 0.25 * 0


def test_pirt_is_the_tinybenchmarks_blend():
    t = map_theta_both_right()
    unseen = (expit(t - 1) + expit(t + 1)) / 2
    expected = 0.5 * 1.0 + 0.5 * unseen  # lambda = 2 anchors / 4 items
    assert PIRT(ANCHORS, IRT).estimate([1, 1]) == pytest.approx(expected, abs=1e-6)
    # One right, one wrong: theta = 0 by symmetry.
    assert PIRT(ANCHORS, IRT).estimate([1, 0]) == pytest.approx(0.25 + 0.5 * (expit(-1) + expit(1)) / 2, abs=1e-6)


def test_gpirt_blends_weighted_and_pirt():
    pirt = PIRT(ANCHORS, IRT).estimate([1, 1])
    assert GPIRT(ANCHORS, IRT, 0.3).estimate([1, 1]) == pytest.approx(0.3 * 1.0 + 0.7 * pirt)
    assert GPIRT(ANCHORS, IRT, 0.0).estimate([1, 1]) == pytest.approx(pirt)


def test_mpirt_uses_the_best_combination_of_endpoint_abilities():
    """Endpoints at theta = 2 and -2; the weights w (prior N(1/2, 1) each) give
    theta = 2 w1 - 2 w2. Both anchors right: maximise over (w1, w2) directly."""
    basis = np.array([[2.0], [-2.0]])

    def neg_posterior(w1_minus_w2: float) -> float:
        # With d = w - 1/2, the prior 0.5 |d|^2 is smallest, for a given w1 - w2, at
        # d1 = -d2 = (w1 - w2) / 2.
        t = 2 * w1_minus_w2
        return -2 * np.log(expit(t)) + 0.5 * 2 * (w1_minus_w2 / 2) ** 2

    diff = minimize_scalar(neg_posterior, bounds=(-10, 10), method="bounded", options={"xatol": 1e-10}).x
    t = 2 * diff
    expected = 0.5 * 1.0 + 0.5 * (expit(t - 1) + expit(t + 1)) / 2
    assert MPIRT(ANCHORS, IRT, basis).estimate([1, 1]) == pytest.approx(expected, abs=1e-4)
    gm = GMPIRT(ANCHORS, IRT, basis, 0.5).estimate([1, 1])
    assert gm == pytest.approx(0.5 * 1.0 + 0.5 * expected, abs=1e-4)


def test_estimators_refuse_wrong_scores():
    with pytest.raises(EstimatorError, match="3 scores for 2 anchors"):
        Mean(ANCHORS).estimate([1, 0, 1])
    with pytest.raises(EstimatorError, match="NaN"):
        Weighted(ANCHORS).estimate([1, float("nan")])
    with pytest.raises(EstimatorError, match="lambda"):
        GPIRT(ANCHORS, IRT, 1.5).estimate([1, 0])
