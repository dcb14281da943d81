"""Item response theory, fitted here, on the run's own respondents.

The model is tinyBenchmarks' multidimensional 2PL (Polo et al., "tinyBenchmarks:
evaluating LLMs with fewer examples", ICML 2024, arXiv 2402.14992)::

    P(item i answered right | ability theta) = sigmoid(a_i . theta - b_i)

with Gaussian priors on abilities, discriminations and difficulties, fitted by MAP.
A run has few respondents (the endpoints, the base and a handful of cheap random
merges), so the priors are what keep the fit finite: an item every respondent gets
right would otherwise have a difficulty of minus infinity.

Why scipy and not py-irt (which tinyBenchmarks uses): py-irt pulls in Pyro and fits by
stochastic variational inference, slow for problems of a few dozen respondents. The
joint MAP here is a smooth problem of a few thousand variables that L-BFGS with an
exact gradient solves in well under a second, deterministically.

Scores in [0, 1] are used as soft labels (the Bernoulli likelihood with a fractional
target), so partial credit needs no threshold. A missing score (NaN: a respondent not
scored on that item, ``fitness.respondent_items``) drops out of the likelihood; the
priors carry the parameters it would have informed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from ..errors import EvomergeError


class IRTError(EvomergeError):
    """Responses that an IRT model cannot be fitted to or used with."""


@dataclass(frozen=True)
class Priors:
    """Standard deviations of the zero-mean Gaussian priors."""

    ability: float = 1.0
    discrimination: float = 1.0
    difficulty: float = 3.0


@dataclass(frozen=True)
class IRTModel:
    """Item parameters ``a`` (items x dim) and ``b`` (items), and the respondents' ``theta``."""

    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    priors: Priors = Priors()

    @property
    def dim(self) -> int:
        return self.a.shape[1]

    @property
    def n_items(self) -> int:
        return self.a.shape[0]

    def probabilities(self, theta: np.ndarray) -> np.ndarray:
        """P(right) on every item for one ability (dim,) or several (n, dim)."""
        return expit(np.clip(np.asarray(theta) @ self.a.T - self.b, -30, 30))

    def ability(self, scores: Sequence[float] | np.ndarray, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """MAP ability of a new respondent from its scores on ``items`` (the p-IRT step).

        tinyBenchmarks fits this by maximum likelihood; the prior here keeps it finite
        when every anchor is right (or wrong), which a small anchor set often is.
        """
        y, idx = _check_scores(scores, items, self.n_items)
        a, b = self.a[idx], self.b[idx]
        var = self.priors.ability**2

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = a @ theta - b
            nll = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z)) + 0.5 * theta @ theta / var
            return nll, a.T @ (expit(z) - y) + theta / var

        return minimize(loss, np.zeros(self.dim), jac=True, method="L-BFGS-B").x

    def combination(
        self, scores: Sequence[float] | np.ndarray, items: Sequence[int] | np.ndarray, basis: np.ndarray
    ) -> np.ndarray:
        """MERGE3's mp-IRT ability: the combination ``w @ basis`` of the endpoints' abilities
        (rows of ``basis``) that best explains the scores on ``items``.

        Mencattini et al., "MERGE^3: Efficient Evolutionary Merging on Consumer-grade GPUs",
        ICML 2025 (arXiv 2502.10436), fit ``w`` by unpenalised maximum likelihood from the
        uniform combination; a weak prior around that start keeps ``w`` finite when every
        anchor is answered alike.
        """
        y, idx = _check_scores(scores, items, self.n_items)
        basis = np.atleast_2d(np.asarray(basis, dtype=float))
        if basis.shape[1] != self.dim:
            raise IRTError(f"the basis abilities have {basis.shape[1]} dimensions; the model has {self.dim}")
        k = basis.shape[0]
        start = np.full(k, 1.0 / k)
        zb = self.a[idx] @ basis.T  # (anchors, k): each endpoint's logit on each anchor, before b
        b = self.b[idx]

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            z = zb @ w - b
            d = w - start
            nll = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z)) + 0.5 * d @ d
            return nll, zb.T @ (expit(z) - y) + d

        w = minimize(loss, start, jac=True, method="L-BFGS-B").x
        return w @ basis


def fit_irt(responses: np.ndarray, dim: int = 2, *, priors: Priors | None = None, seed: int = 0) -> IRTModel:
    """Fit item parameters and abilities to ``responses`` (respondents x items, values in
    [0, 1], NaN where a respondent was not scored on an item).

    Each ability dimension is oriented so that its mean discrimination is positive, so
    that higher ability means more items right and two fits are comparable.
    """
    y = np.asarray(responses, dtype=float)
    if y.ndim != 2 or min(y.shape) == 0:
        raise IRTError(f"responses must be a respondents x items matrix; got shape {y.shape}")
    seen = ~np.isnan(y)
    if not seen.any(axis=1).all():
        raise IRTError("every respondent needs a score on at least one item")
    if not np.isfinite(y[seen]).all() or y[seen].min() < 0 or y[seen].max() > 1:
        raise IRTError(
            "IRT needs per-item scores in [0, 1] (right/wrong or partial credit); these are not. "
            "Use the full, mean or weighted estimator for other scores (e.g. perplexity)."
        )
    if dim < 1:
        raise IRTError(f"dim must be at least 1, got {dim}")
    priors = priors or Priors()
    n_resp, n_items = y.shape
    rng = np.random.default_rng(seed)
    weight = seen.astype(float)  # 0 where missing: no likelihood, no gradient
    counts = weight.sum(axis=0)
    rate = np.divide(np.where(seen, y, 0).sum(axis=0), counts, out=np.full(n_items, 0.5), where=counts > 0)
    y = np.where(seen, y, 0.0)
    mean = np.clip(rate, 0.02, 0.98)
    x0 = np.concatenate(
        [
            rng.normal(0, 0.1, n_resp * dim),  # theta
            rng.normal(0.5, 0.1, n_items * dim),  # a: start on the "more ability, more right" side
            -np.log(mean / (1 - mean)),  # b: each item's observed rate at theta = 0
        ]
    )
    var = np.array([priors.ability, priors.discrimination, priors.difficulty]) ** 2

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = x[: n_resp * dim].reshape(n_resp, dim)
        a = x[n_resp * dim : (n_resp + n_items) * dim].reshape(n_items, dim)
        return theta, a, x[(n_resp + n_items) * dim :]

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta, a, b = unpack(x)
        z = theta @ a.T - b
        nll = -np.sum(weight * (y * log_expit(z) + (1 - y) * log_expit(-z)))
        prior = 0.5 * (np.sum(theta**2) / var[0] + np.sum(a**2) / var[1] + np.sum(b**2) / var[2])
        g = weight * (expit(z) - y)
        grad = np.concatenate(
            [(g @ a + theta / var[0]).ravel(), (g.T @ theta + a / var[1]).ravel(), -g.sum(axis=0) + b / var[2]]
        )
        return nll + prior, grad

    result = minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    theta, a, b = unpack(result.x)
    flip = np.where(a.mean(axis=0) < 0, -1.0, 1.0)
    return IRTModel(a * flip, b.copy(), theta * flip, priors)


def _check_scores(
    scores: Sequence[float] | np.ndarray, items: Sequence[int] | np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(scores, dtype=float)
    idx = np.asarray(items, dtype=int)
    if y.shape != idx.shape or y.ndim != 1 or len(y) == 0:
        raise IRTError(f"{len(y)} scores for {len(idx)} items; give one score per item, at least one")
    if idx.min() < 0 or idx.max() >= n_items:
        raise IRTError(f"item positions must be in 0..{n_items - 1}")
    if not np.isfinite(y).all() or y.min() < 0 or y.max() > 1:
        raise IRTError("IRT estimators need per-item scores in [0, 1]")
    return y, idx
