"""``evomerge.evolve``: one call, in the style of the simple evolutionary-merge scripts.

It builds the same ``ExperimentConfig`` the YAML and the CLI use (so every run it makes
can be resumed and re-run from its ``config.yaml``) and returns the winner ready to use:
its genes, its score, and the live model holding its merge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .config import ConfigError, TaskConfig
from .evaluate.scorers import SCORERS
from .fitness.estimators import ESTIMATORS, Full, Mean
from .loader import load_config
from .merge.candidate import Candidate, candidate_from_yaml
from .merge.run import save_candidate
from .search.experiment import RunResult, run_experiment
from .search.objectives import FunctionObjective, Objective
from .search.rundir import RunDir

#: ``fitness="accuracy"``: the default scorer's accuracy. Any other registered scorer is
#: named as itself; a registered estimator's name means accuracy estimated by it.
ACCURACY = "accuracy"
FitnessFn = Callable[[torch.nn.Module, PreTrainedTokenizerBase], float | Sequence[float]]


@dataclass
class EvolveResult:
    """The winner (best, or the first Pareto member): genes, score, model and tokenizer."""

    run: RunResult
    model: torch.nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.run.load()  # the live model held a baseline after the test phase

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.run.tokenizer

    @property
    def best_genes(self) -> dict[str, float]:
        return self.run.best.genes

    @property
    def best_score(self) -> float | tuple[float, ...]:
        """The search's score of the winner (an estimate when ``eval_samples`` is set)."""
        values = tuple(self.run.best.objectives)
        return values[0] if len(values) == 1 else values

    @property
    def recipe(self) -> Candidate:
        """The winner's recipe, or its layer path (``space="path"``)."""
        return candidate_from_yaml(self.run.best.recipe)

    @property
    def test_scores(self) -> dict[str, dict[str, float]]:
        """Held-out scores of the winner(s) and the baselines, by candidate name."""
        return {t.name: t.scores for t in self.run.tests}

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        """The winner as an HF checkpoint, with its tokenizer and mergekit YAML."""
        return save_candidate(self.model, self.recipe, self.run.merger, out, force=force)


def evolve(
    models: Sequence[str],
    base_model: str | None = None,
    *,
    task: str | tuple[str, str] | None = None,
    fitness: str | Sequence[str] | FitnessFn = "accuracy",
    eval_samples: int | None = None,
    method: str = "task_arithmetic",
    algorithm: str = "GA",
    population_size: int = 10,
    generations: int = 5,
    mutation_rate: float | None = None,
    crossover_rate: float | None = None,
    elitism_rate: float | None = None,
    granularity: str = "global",
    run_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = False,
    task_options: dict[str, Any] | None = None,
    search_options: dict[str, Any] | None = None,
    space: str = "recipe",
    path: dict[str, Any] | None = None,
) -> EvolveResult:
    """Evolve a merge of ``models`` (the base may be among them) and return the winner.

    ``task``: a JSONL/CSV file (split into search and test) or a ``(search, test)`` pair.
    ``fitness``: ``"accuracy"``, ``"loss"`` (mean NLL of the answers), ``"perplexity"``,
    an estimator name (accuracy estimated by it: ``"mpirt"``, ...), a list of those (one
    objective each, on the same data), or ``fn(model, tokenizer) -> float | list[float]``
    (maximised). ``eval_samples``: items scored per candidate (a random subsample, or
    the anchors of an IRT estimator); default: all search items. ``task_options`` go to
    the task (``template``, ``extractor``, ``max_new_tokens``, ...), ``search_options``
    to the algorithm. ``space="path"``: search layer paths through ``models``' layers
    instead of merge recipes (the first model is model A; ``path``: the ``search.path``
    options, e.g. ``{"repeats": 2, "scales": "slot", "from_run": "runs/ps"}``).
    """
    endpoints = [m for m in models if m != base_model]
    options = dict(search_options or {})
    for key, value in (("mutation_rate", mutation_rate), ("crossover_rate", crossover_rate)):
        if value is not None:
            options[key] = value
    if elitism_rate is not None:
        options["elitism_rate"] = elitism_rate
    objectives: list[Objective] | None = None
    tasks: list[dict[str, Any]] = []
    fitness_section: dict[str, Any] = {"estimator": Mean.name if eval_samples else Full.name, "anchors": eval_samples}
    if callable(fitness):
        objectives = [FunctionObjective(fitness)]
    else:
        names = [fitness] if isinstance(fitness, str) else list(fitness)
        if task is None:
            raise ConfigError("give task= (a data file or a (search, test) pair), or a fitness function")
        data = {"data": task} if isinstance(task, str) else {"search": task[0], "test": task[1]}
        default_scorer = TaskConfig.model_fields["scorer"].default
        for name in names:
            if name in ESTIMATORS:
                fitness_section["estimator"] = name
                scorer = default_scorer
            elif name == ACCURACY or name in SCORERS:
                scorer = default_scorer if name == ACCURACY else name
            else:
                valid = [ACCURACY, *SCORERS.names(), *ESTIMATORS.names()]
                raise ConfigError(f"fitness {name!r}: use one of {valid}, or a function (model, tokenizer) -> float")
            entry = {"name": name, **data, "scorer": scorer, **(task_options or {})}
            if not SCORERS[scorer].binary:  # not right/wrong: no IRT; a plain (sub)sample mean
                entry["fitness"] = {"estimator": Mean.name, "anchors": eval_samples} if eval_samples else {}
            tasks.append(entry)
    if fitness_section["estimator"] == Full.name:
        fitness_section.pop("anchors")
    config = load_config(
        {
            "models": {"base": base_model, "endpoints": endpoints},
            "merge": {"method": method},
            "tasks": tasks,
            "fitness": fitness_section,
            "search": {
                "algorithm": algorithm,
                "population_size": population_size,
                "generations": generations,
                "granularity": granularity,
                "options": options,
                "space": space,
                **({"path": path} if path else {}),
            },
            "output": {"device": device},
            "seed": seed,
        }
    )
    folder = RunDir.default(run_dir=run_dir).path
    return EvolveResult(run_experiment(config, folder, objectives=objectives, resume=resume, progress=progress))
