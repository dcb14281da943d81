"""From a ``fitness:`` config to a ready estimator: the respondents scored (or reused), the
IRT fits (``fits``) made, the anchors picked."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import ExperimentConfig, FitnessConfig
from ..errors import EvomergeError
from ..evaluate.evaluator import Evaluator
from ..merge.engine import Merger
from ..merge.recipe import Recipe
from .anchors import SELECTIONS, select_anchors
from .estimators import ESTIMATORS, Estimator
from .fits import IRTFits
from .respondents import (
    ItemScorer,
    Respondent,
    collect_responses,
    random_recipe,
    respondent_set,
    shared_cache_dir,
)

log = logging.getLogger(__name__)


def build_estimator(
    config: FitnessConfig,
    n_items: int,
    *,
    fits: IRTFits | None = None,
    strata: Sequence[str] | None = None,
) -> Estimator:
    """The estimator ``config`` names, with its anchors drawn from ``n_items`` search items."""
    cls, selection = ESTIMATORS[config.estimator], chosen_selection(config)
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
        responses=fits.completed if fits is not None else None,
        strata=strata,
    )
    return cls.build(anchors, fits, config.lam)


def chosen_selection(config: FitnessConfig) -> str:
    """The anchor selection a fitness section runs: its own, else its estimator's default
    (``all`` for full evaluation, whatever the section says)."""
    default = ESTIMATORS[config.estimator].default_selection
    return default if default == "all" else config.selection or default


def needs_respondents(config: FitnessConfig, *, has_strata: bool) -> bool:
    """Whether the estimator or its anchor selection needs respondents' scores."""
    return ESTIMATORS[config.estimator].uses_irt or SELECTIONS[chosen_selection(config)].needs_respondents(has_strata)


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
            f"estimator {f.estimator} with {chosen_selection(f)} anchors calibrates on random merges; "
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
        share=f.respondent_items,
        seed=f.seed,
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
