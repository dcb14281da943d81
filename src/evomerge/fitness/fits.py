"""The IRT fits a run makes once from its respondents' scores.

The IRT model is fitted on every respondent. gp-IRT and gmp-IRT also need their
``lambda``: as in tinyBenchmarks (Polo et al., 2024), it is chosen on validation
respondents (here every third extra respondent) held out of a second fit, as the
value on a grid that minimises the mean absolute error of the blend against those
respondents' full scores. ``dim: auto`` is chosen on the same respondents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from ..errors import EvomergeError
from .anchors import Anchors
from .irt import IRTModel, fit_irt
from .respondents import Responses

log = logging.getLogger(__name__)

LAMBDA_GRID = np.linspace(0, 1, 21)
#: Used when there are too few extra respondents to validate lambda on: MERGE3's default.
DEFAULT_LAMBDA = 0.5
#: Dimensions ``dim: auto`` chooses from, and the fallback without validation respondents.
DIMS = (1, 2, 3, 4, 6, 8)
DEFAULT_DIM = 3


@dataclass
class IRTFits:
    """The IRT fits a run needs, each made once: on every respondent, and without the
    validation respondents (for choosing lambda and, with ``dim="auto"``, the dimension)."""

    responses: Responses
    dim: int | Literal["auto"] = "auto"
    seed: int = 0
    _train_fits: dict[int, IRTModel] = field(default_factory=dict, repr=False)

    def _train_fit(self, dim: int) -> IRTModel:
        """The fit without validation respondents, once per dimension (the choice of the
        dimension and the choice of lambda share them)."""
        if dim not in self._train_fits:
            self._train_fits[dim] = fit_irt(self.responses.scores[self.train_rows], dim, seed=self.seed)
        return self._train_fits[dim]

    @cached_property
    def chosen_dim(self) -> int:
        """``dim``, or the smallest dimension whose held-out log loss is within 2% of the
        best. The loss is, per validation respondent, that of the items at odd positions,
        predicted from an ability fitted on the even ones.

        tinyBenchmarks picks the dimension by the error of the predicted mean instead; on
        simulated one-dimensional data that criterion chose 6 dimensions (the prior's
        shrinkage shrinks as dimensions are added), while the per-item loss chose 1.
        """
        if self.dim != "auto":
            return self.dim
        val = self.validation_rows
        if len(val) < 2:
            log.warning("too few validation respondents to choose the IRT dimension; using %d", DEFAULT_DIM)
            return DEFAULT_DIM
        losses = []
        for dim in DIMS:
            model = self._train_fit(dim)
            loss = 0.0
            for row in self.responses.scores[val]:
                scored = np.flatnonzero(~np.isnan(row))  # all items, unless respondent_items < 1
                seen, unseen = scored[0::2], scored[1::2]
                if len(unseen) == 0:  # one scored item (a tiny task cut thin): nothing to predict
                    continue
                p = np.clip(model.probabilities(model.ability(row[seen], seen))[unseen], 1e-9, 1 - 1e-9)
                y = row[unseen]
                loss -= float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) / len(val)
            losses.append(loss)
        chosen = next(d for d, loss in zip(DIMS, losses, strict=True) if loss <= 1.02 * min(losses))
        log.info(
            "IRT dimension %d (held-out log loss %s)",
            chosen,
            {d: round(v, 4) for d, v in zip(DIMS, losses, strict=True)},
        )
        return chosen

    @cached_property
    def full(self) -> IRTModel:
        return fit_irt(self.responses.scores, self.chosen_dim, seed=self.seed)

    @cached_property
    def completed(self) -> np.ndarray:
        """The respondents' scores, each missing one (``fitness.respondent_items`` < 1) filled
        in with the full fit's probability: what anchor selections and the choice of lambda
        read, which need every respondent's score on every item."""
        scores = self.responses.scores
        missing = np.isnan(scores)
        if not missing.any():
            return scores
        return np.where(missing, self.full.probabilities(self.full.theta), scores)

    @cached_property
    def validation_rows(self) -> np.ndarray:
        return self.responses.rows("extra")[::3]

    @cached_property
    def train_rows(self) -> np.ndarray:
        return np.setdiff1d(np.arange(len(self.responses.respondents)), self.validation_rows)

    @property
    def train(self) -> IRTModel:
        return self._train_fit(self.chosen_dim)

    def choose_lambda(self, name: str, anchors: Anchors, inner: Callable[[Sequence[float]], float]) -> float:
        """The grid value of lambda with the least MAE on the validation respondents, for a
        blend of the weighted anchors and ``inner`` (fitted without those respondents)."""
        val = self.validation_rows
        if len(val) < 2:
            log.warning(
                "%s: %d validation respondents are too few to choose lambda; using %.1f (add fitness.respondents)",
                name,
                len(val),
                DEFAULT_LAMBDA,
            )
            return DEFAULT_LAMBDA
        scores = self.completed[val]
        truth = scores.mean(axis=1)
        parts = [(anchors.weights @ row[anchors.index], inner(row[anchors.index])) for row in scores]
        errors = [np.abs([lam * w + (1 - lam) * p for w, p in parts] - truth).mean() for lam in LAMBDA_GRID]
        return float(LAMBDA_GRID[int(np.argmin(errors))])

    def basis(self, model: IRTModel, fitted_rows: np.ndarray | None = None) -> np.ndarray:
        """The endpoints' abilities in ``model`` (fitted on ``fitted_rows``, default all)."""
        rows = np.arange(len(self.responses.respondents)) if fitted_rows is None else fitted_rows
        endpoints = self.responses.rows("endpoint")
        if len(endpoints) == 0:
            raise EvomergeError("mp-IRT needs the endpoints among the respondents")
        return model.theta[np.searchsorted(rows, endpoints)]
