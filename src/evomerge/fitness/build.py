"""From a ``fitness:`` config and the respondents' scores to a ready estimator.

The IRT model is fitted on every respondent. gp-IRT and gmp-IRT also need their
``lambda``: as in tinyBenchmarks (Polo et al., 2024), it is chosen on validation
respondents (here every third extra respondent) held out of a second fit, as the
value on a grid that minimises the mean absolute error of the blend against those
respondents' full scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..config import FitnessConfig
from ..errors import EvomergeError
from .anchors import Anchors, select_anchors
from .estimators import ESTIMATORS, GMPIRT, GPIRT, MPIRT, PIRT, Estimator, Full, blend
from .irt import IRTModel, fit_irt
from .respondents import Responses

log = logging.getLogger(__name__)

LAMBDA_GRID = np.linspace(0, 1, 21)
#: Used when there are too few extra respondents to validate lambda on: MERGE3's default.
DEFAULT_LAMBDA = 0.5


@dataclass
class IRTFits:
    """The IRT fits a run needs, each made once: on every respondent, and without the
    validation respondents (for choosing lambda)."""

    responses: Responses
    dim: int
    seed: int = 0

    @cached_property
    def full(self) -> IRTModel:
        return fit_irt(self.responses.scores, self.dim, seed=self.seed)

    @cached_property
    def validation_rows(self) -> np.ndarray:
        return self.responses.rows("extra")[::3]

    @cached_property
    def train(self) -> IRTModel:
        rows = np.setdiff1d(np.arange(len(self.responses.respondents)), self.validation_rows)
        return fit_irt(self.responses.scores[rows], self.dim, seed=self.seed)

    def basis(self, model: IRTModel, fitted_rows: np.ndarray | None = None) -> np.ndarray:
        """The endpoints' abilities in ``model`` (fitted on ``fitted_rows``, default all)."""
        rows = np.arange(len(self.responses.respondents)) if fitted_rows is None else fitted_rows
        endpoints = self.responses.rows("endpoint")
        if len(endpoints) == 0:
            raise EvomergeError("mp-IRT needs the endpoints among the respondents")
        return model.theta[np.searchsorted(rows, endpoints)]


def build_estimator(
    config: FitnessConfig,
    n_items: int,
    *,
    fits: IRTFits | None = None,
    strata: Sequence[str] | None = None,
) -> Estimator:
    """The estimator ``config`` names, with its anchors drawn from ``n_items`` search items."""
    name = config.estimator
    if name == "full":
        return Full(Anchors(np.arange(n_items), np.full(n_items, 1.0 / n_items), n_items))
    assert config.anchors is not None  # FitnessConfig checks it
    selection = config.chosen_selection
    cls = ESTIMATORS[name]
    needs_fits = (
        cls.uses_irt or selection in ("kmeans_irt", "kmeans_correct") or (selection == "stratified" and strata is None)
    )
    if needs_fits and fits is None:
        raise EvomergeError(
            f"estimator {name} with {selection} anchors needs respondents' scores (an IRT fit); "
            "use estimator mean with random anchors to do without"
        )
    anchors = select_anchors(
        selection,  # type: ignore[arg-type]
        config.anchors,
        n_items,
        seed=config.seed,
        irt=fits.full if fits is not None and selection == "kmeans_irt" else None,
        responses=fits.responses.scores if fits is not None else None,
        strata=strata,
    )
    if not cls.uses_irt:
        return cls(anchors)
    assert fits is not None
    if name == "pirt":
        return PIRT(anchors, fits.full)
    if name == "mpirt":
        return MPIRT(anchors, fits.full, fits.basis(fits.full))
    lam = config.lam if config.lam is not None else choose_lambda(name, anchors, fits)
    if name == "gpirt":
        return GPIRT(anchors, fits.full, lam)
    return GMPIRT(anchors, fits.full, fits.basis(fits.full), lam)


def choose_lambda(name: str, anchors: Anchors, fits: IRTFits) -> float:
    """The grid value of lambda with the least MAE on the validation respondents."""
    val = fits.validation_rows
    if len(val) < 2:
        log.warning(
            "%s: %d validation respondents are too few to choose lambda; using %.1f (add fitness.respondents)",
            name,
            len(val),
            DEFAULT_LAMBDA,
        )
        return DEFAULT_LAMBDA
    train_rows = np.setdiff1d(np.arange(len(fits.responses.respondents)), val)
    irt = fits.train
    inner: PIRT = PIRT(anchors, irt) if name == "gpirt" else MPIRT(anchors, irt, fits.basis(irt, train_rows))
    scores = fits.responses.scores[val]
    truth = scores.mean(axis=1)
    parts = np.array([(anchors.weights @ row[anchors.index], inner.estimate(row[anchors.index])) for row in scores])
    errors = [np.abs([blend(lam, w, p) for w, p in parts] - truth).mean() for lam in LAMBDA_GRID]
    return float(LAMBDA_GRID[int(np.argmin(errors))])
