"""IRT fitting and the per-candidate ability fits, on data simulated from a 2PL model."""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from evomerge.fitness import IRTError, IRTModel, fit_irt


def simulate(n_resp: int, n_items: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_resp, dim))
    a = np.abs(rng.normal(1.0, 0.5, size=(n_items, dim)))
    b = rng.normal(0.0, 1.0, size=n_items)
    y = (rng.random((n_resp, n_items)) < expit(theta @ a.T - b)).astype(float)
    return theta, a, b, y


def aligned_correlations(fitted: np.ndarray, truth: np.ndarray) -> list[float]:
    """Abilities are identified up to an affine map (rotation included): align by least squares."""
    x = np.column_stack([fitted, np.ones(len(fitted))])
    coef, *_ = np.linalg.lstsq(x, truth, rcond=None)
    return [float(np.corrcoef(x @ coef[:, d], truth[:, d])[0, 1]) for d in range(truth.shape[1])]


def test_recovers_one_dimensional_abilities_and_difficulties():
    theta, a, b, y = simulate(120, 300, dim=1)
    model = fit_irt(y, dim=1)
    assert np.corrcoef(model.theta[:, 0], theta[:, 0])[0, 1] >= 0.95  # oriented: no sign flip
    assert np.corrcoef(model.b, b)[0, 1] >= 0.9
    assert np.corrcoef(model.a[:, 0], a[:, 0])[0, 1] >= 0.5  # discriminations are the noisiest part


def test_recovers_two_dimensional_abilities():
    theta, _, _, y = simulate(150, 300, dim=2, seed=1)
    model = fit_irt(y, dim=2)
    assert min(aligned_correlations(model.theta, theta)) >= 0.9


def test_few_respondents_many_items_still_predicts_probabilities():
    """A run's situation: a few dozen respondents, many items."""
    theta, a, b, y = simulate(30, 900, dim=2, seed=2)
    model = fit_irt(y, dim=2)
    truth = expit(theta @ a.T - b)
    assert np.corrcoef(model.probabilities(model.theta).ravel(), truth.ravel())[0, 1] >= 0.85


def test_new_respondent_ability_from_a_subset_of_items():
    theta, a, b, y = simulate(200, 400, dim=1, seed=3)
    known = IRTModel(a, b, theta[:1])
    items = np.arange(0, 400, 4)  # 100 anchors
    fitted = [known.ability(row[items], items)[0] for row in y[:60]]
    assert np.corrcoef(fitted, theta[:60, 0])[0, 1] >= 0.9


def test_ability_is_the_map_of_a_hand_computed_case():
    """One dimension, a = 1, b = 0, prior N(0, 1), both anchors right: the MAP solves
    2 * (1 - sigmoid(t)) = t."""
    model = IRTModel(np.ones((4, 1)), np.zeros(4), np.zeros((1, 1)))
    expected = brentq(lambda t: 2 * (1 - expit(t)) - t, 0, 5)
    assert model.ability([1.0, 1.0], [0, 1])[0] == pytest.approx(expected, abs=1e-5)
    assert model.ability([1.0, 0.0], [0, 1])[0] == pytest.approx(0.0, abs=1e-6)


def test_combination_recovers_the_mixing_weights_of_the_endpoints():
    rng = np.random.default_rng(4)
    a = np.abs(rng.normal(1, 0.3, size=(2000, 2)))
    b = rng.normal(0, 1, size=2000)
    basis = np.array([[2.0, -1.0], [-1.0, 2.0]])
    true_theta = np.array([0.3, 0.7]) @ basis
    y = (rng.random(2000) < expit(a @ true_theta - b)).astype(float)
    model = IRTModel(a, b, basis)
    items = np.arange(2000)
    assert model.combination(y, items, basis) == pytest.approx(true_theta, abs=0.15)


def test_refuses_scores_outside_zero_one():
    with pytest.raises(IRTError, match=r"\[0, 1\]"):
        fit_irt(np.array([[0.5, 2.0], [1.0, 0.0]]))
    with pytest.raises(IRTError, match="respondents x items"):
        fit_irt(np.zeros(5))
    model = IRTModel(np.ones((3, 1)), np.zeros(3), np.zeros((1, 1)))
    with pytest.raises(IRTError, match="one score per item"):
        model.ability([1.0], [0, 1])
    with pytest.raises(IRTError, match=r"0\.\.2"):
        model.ability([1.0], [7])


def test_fit_is_deterministic():
    *_, y = simulate(40, 100, dim=2, seed=5)
    first, second = fit_irt(y, 2, seed=3), fit_irt(y, 2, seed=3)
    assert np.array_equal(first.theta, second.theta) and np.array_equal(first.b, second.b)


def test_missing_scores_drop_out_of_the_fit():
    """A respondent scored on part of the items (fitness.respondent_items): what it was not
    scored on is NaN and changes nothing, whatever it would have been."""
    theta, _, b, y = simulate(40, 200, dim=1, seed=3)
    hidden = np.random.default_rng(0).random(y.shape) < 0.5
    flipped = np.where(hidden, 1 - y, y)  # the hidden scores, all wrong
    one = fit_irt(np.where(hidden, np.nan, y), dim=1)
    other = fit_irt(np.where(hidden, np.nan, flipped), dim=1)
    assert np.array_equal(one.b, other.b) and np.array_equal(one.theta, other.theta)
    # and half the scores still recover the items (the full matrix: about 0.95)
    assert np.corrcoef(one.b, b)[0, 1] >= 0.85
    assert np.corrcoef(one.theta[:, 0], theta[:, 0])[0, 1] >= 0.9
    # A full matrix fits as it always did: NaN support changes no bit of it.
    assert np.array_equal(fit_irt(y, dim=1).b, fit_irt(y.copy(), dim=1).b)


def test_a_respondent_with_no_score_is_refused():
    _, _, _, y = simulate(5, 30, dim=1)
    y[2] = np.nan
    with pytest.raises(IRTError, match="at least one item"):
        fit_irt(y, dim=1)


def test_the_dimension_is_chosen_when_respondents_have_a_single_item_each():
    """A tiny task cut thin (fitness.respondent_items): a validation respondent with one
    scored item has nothing to predict and is left out of the choice, not a NaN loss."""
    from evomerge.fitness.fits import IRTFits
    from evomerge.fitness.respondents import Respondent, Responses

    _, _, _, y = simulate(12, 8, dim=1, seed=4)
    y[4:, :] = np.nan
    for r in range(4, 12):
        y[r, r % 8] = r % 2  # the extras: one item each
    kinds = ["base", "endpoint", "endpoint", "endpoint"] + ["extra"] * 8
    responses = Responses(tuple(Respondent(str(i), k, None) for i, k in enumerate(kinds)), tuple("abcdefgh"), y)
    fits = IRTFits(responses)
    assert fits.chosen_dim in (1, 2, 3, 4, 6, 8) and np.isfinite(fits.completed).all()
