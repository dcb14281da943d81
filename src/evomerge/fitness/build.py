"""From a ``fitness:`` config and the respondents' scores to a ready estimator.

The IRT model is fitted on every respondent. gp-IRT and gmp-IRT also need their
``lambda``: as in tinyBenchmarks (Polo et al., 2024), it is chosen on validation
respondents (here every third extra respondent) held out of a second fit, as the
value on a grid that minimises the mean absolute error of the blend against those
respondents' full scores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import ExperimentConfig, FitnessConfig
from ..errors import EvomergeError
from ..evaluate.evaluator import Evaluator
from ..merge.engine import Merger
from ..merge.recipe import Recipe
from .anchors import SELECTIONS, Anchors, select_anchors
from .estimators import ESTIMATORS, Estimator, blend
from .irt import IRTModel, fit_irt
from .respondents import (
    ItemScorer,
    Respondent,
    Responses,
    collect_responses,
    random_recipe,
    respondent_set,
    shared_cache_dir,
)

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
        seen = np.arange(0, self.responses.scores.shape[1], 2)
        unseen = np.arange(1, self.responses.scores.shape[1], 2)
        losses = []
        for dim in DIMS:
            model = self._train_fit(dim)
            loss = 0.0
            for row in self.responses.scores[val]:
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
    def validation_rows(self) -> np.ndarray:
        return self.responses.rows("extra")[::3]

    @cached_property
    def train_rows(self) -> np.ndarray:
        return np.setdiff1d(np.arange(len(self.responses.respondents)), self.validation_rows)

    @property
    def train(self) -> IRTModel:
        return self._train_fit(self.chosen_dim)

    def choose_lambda(self, name: str, anchors: Anchors, inner: Estimator) -> float:
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
        scores = self.responses.scores[val]
        truth = scores.mean(axis=1)
        parts = [(anchors.weights @ row[anchors.index], inner.estimate(row[anchors.index])) for row in scores]
        errors = [np.abs([blend(lam, w, p) for w, p in parts] - truth).mean() for lam in LAMBDA_GRID]
        return float(LAMBDA_GRID[int(np.argmin(errors))])

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
    cls, selection = ESTIMATORS[config.estimator], config.chosen_selection
    if fits is None and needs_respondents(config, has_strata=strata is not None):
        raise EvomergeError(
            f"estimator {config.estimator} with {selection} anchors needs respondents' scores (an IRT fit); "
            "use estimator mean with random anchors to do without"
        )
    anchors = select_anchors(
        selection,
        config.anchors,
        n_items,
        seed=config.seed,
        irt=(lambda: fits.full) if fits is not None else None,
        responses=fits.responses.scores if fits is not None else None,
        strata=strata,
    )
    return cls.build(anchors, fits, config.lam)


def needs_respondents(config: FitnessConfig, *, has_strata: bool) -> bool:
    """Whether the estimator or its anchor selection needs respondents' scores."""
    return ESTIMATORS[config.estimator].uses_irt or SELECTIONS[config.chosen_selection].needs_respondents(has_strata)


def prepare_estimator(
    config: ExperimentConfig,
    evaluator: Evaluator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    merger: Merger | None,
    *,
    cache: Path | None = None,
    executor: ItemScorer | None = None,
) -> Estimator:
    """What a run does once, before its search: score the respondents (when the
    estimator or the anchor selection needs them; on ``executor``'s workers when given),
    fit IRT, pick anchors."""
    f = config.fitness
    n = len(evaluator.splits.search)
    strata = item_strata(f, evaluator)
    if not needs_respondents(f, has_strata=strata is not None):
        return build_estimator(f, n, strata=strata)
    if merger is None:
        raise EvomergeError(
            f"estimator {f.estimator} with {f.chosen_selection} anchors calibrates on random merges; "
            "this run has none (a layer-path search): use estimator full, or mean with random anchors"
        )

    responses = collect_responses(
        evaluator,
        model,
        tokenizer,
        merger,
        run_respondents(config),
        cache=cache,
        executor=executor,
        shared=shared_cache_dir() if f.reuse_respondents else None,
        context=scoring_context(config, model),
    )
    return build_estimator(f, n, fits=IRTFits(responses, f.dim, seed=f.seed), strata=strata)


def scoring_context(config: ExperimentConfig, model: torch.nn.Module) -> str:
    """Where and in what precision respondents are scored: scores from elsewhere (a GPU in
    bf16, say) may differ in a few items, so they are kept apart."""
    dtype = next(model.parameters()).dtype
    # hub ids are fingerprinted by name: a pinned revision is another checkpoint
    pinned = f":revision={json.dumps(config.models.revision, sort_keys=True)}" if config.models.revision else ""
    if config.search.executor == "ray":
        return f"ray:gpus={config.search.ray.gpus_per_worker}:{dtype}{pinned}"
    return f"{config.output.device}:{dtype}{pinned}"


def item_strata(config: FitnessConfig, evaluator: Evaluator) -> list[str] | None:
    """Each search item's value of ``fitness.strata`` (an item field), for stratified anchors."""
    if config.strata is None:
        return None
    missing = [it.id for it in evaluator.splits.search if config.strata not in it.meta]
    if missing:
        raise EvomergeError(
            f"fitness.strata is {config.strata!r}, but search items {missing[:5]} have no such field "
            f"(task {evaluator.name}); name a field every item has, or drop strata"
        )
    return [str(it.meta[config.strata]) for it in evaluator.splits.search]


def random_merges(config: ExperimentConfig) -> Callable[[np.random.Generator], Recipe]:
    """The run's random merges: its method, its endpoints, parameters drawn at random."""
    m = config.models
    return lambda rng: random_recipe(config.merge.method, m.endpoints, m.base, rng)


def run_respondents(config: ExperimentConfig) -> list[Respondent]:
    f, m = config.fitness, config.models
    return respondent_set(
        m.endpoints, m.base, f.respondents, random_merges(config), seed=f.seed, checkpoints=f.checkpoints
    )


def estimate_fitness(
    estimator: Estimator, evaluator: Evaluator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> float:
    """Score the live model on the estimator's anchors only, and estimate its full-split score."""
    search = evaluator.splits.search
    ids = [search[i].id for i in estimator.anchors.index]
    scores = evaluator.score(model, tokenizer, ids)
    return estimator.estimate([scores[i] for i in ids])
