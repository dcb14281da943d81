"""What a candidate is scored on: one or more named objectives, each maximised or minimised.

An objective measures the live model (already holding the candidate's merge) and
returns one value per name, in natural units (accuracy, loss). The search minimises
``F = -value`` for objectives that are maximised, so the stored numbers always read
as the user expects. Two kinds:

- ``TaskObjective``: a ``tasks:`` entry: an evaluator (items, scorer) and a fitness
  estimator scoring anchors only during the search, every test item after it;
- ``FunctionObjective``: any ``fn(model, tokenizer) -> float | list[float]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import ExperimentConfig, TaskConfig
from ..errors import CandidateError, EvomergeError
from ..evaluate.evaluator import Evaluator, evaluator_for
from ..fitness.build import prepare_estimator
from ..fitness.estimators import Estimator
from ..fitness.respondents import ItemScorer
from ..merge.candidate import Sources
from ..merge.engine import Merger
from .rundir import RunDir


class ObjectiveError(EvomergeError):
    """An objective that cannot score a candidate."""


@dataclass(frozen=True)
class Measurement:
    values: tuple[float, ...]  # one per objective name, natural units
    items: dict[str, dict[str, float]] = field(default_factory=dict)  # objective -> item id -> score


class Objective:
    """Base class; ``names`` and ``maximize`` have one entry per value ``measure`` returns."""

    names: tuple[str, ...]
    maximize: tuple[bool, ...]

    def prepare(
        self,
        merger: Sources,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        run_dir: Path | None,
        executor: ItemScorer | None = None,
    ) -> None:
        """Once per run, before the search (e.g. fit the IRT estimator; its respondents are
        scored by ``executor`` when given, else in ``model``)."""

    def measure(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Measurement:
        raise NotImplementedError

    def test(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[float, ...]:
        """The held-out score, one value per name."""
        raise NotImplementedError


class TaskObjective(Objective):
    def __init__(self, task: TaskConfig, experiment: ExperimentConfig, evaluator: Evaluator | None = None) -> None:
        self.task = task
        self.config = experiment.model_copy(update={"fitness": experiment.fitness_for(task)})
        self.evaluator = evaluator or evaluator_for(task)
        self.names = (task.name,)
        self.maximize = (self.evaluator.higher_is_better,)
        self.estimator: Estimator | None = None

    def prepare(
        self,
        merger: Sources,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        run_dir: Path | None,
        executor: ItemScorer | None = None,
    ) -> None:
        cache = RunDir(run_dir).respondents(self.task.name) if run_dir is not None else None
        self.estimator = prepare_estimator(
            self.config,
            self.evaluator,
            model,
            tokenizer,
            merger if isinstance(merger, Merger) else None,
            cache=cache,
            executor=executor,
        )

    @property
    def anchor_ids(self) -> list[str]:
        if self.estimator is None:
            raise ObjectiveError(f"objective {self.task.name} is not prepared; call prepare() before the search")
        search = self.evaluator.splits.search
        return [search[i].id for i in self.estimator.anchors.index]

    def measure(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Measurement:
        ids = self.anchor_ids
        scores = self.evaluator.score(model, tokenizer, ids)
        assert self.estimator is not None
        value = self.estimator.estimate([scores[i] for i in ids])
        return Measurement((value,), {self.task.name: scores})

    def test(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[float, ...]:
        return (float(np.mean(list(self.evaluator.score_test(model, tokenizer).values()))),)


class FunctionObjective(Objective):
    """A user's ``fn(model, tokenizer)`` returning a float or a list of floats (one per name).

    ``test_fn`` scores held-out data after the search; without one, the test phase calls
    ``fn`` again, which is no held-out score (the results say so through ``held_out``).
    """

    def __init__(
        self,
        fn: Callable[[torch.nn.Module, PreTrainedTokenizerBase], float | Sequence[float]],
        names: Sequence[str] = ("fitness",),
        *,
        maximize: bool | Sequence[bool] = True,
        test_fn: Callable[[torch.nn.Module, PreTrainedTokenizerBase], float | Sequence[float]] | None = None,
    ) -> None:
        self.fn, self.test_fn = fn, test_fn
        self.names = tuple(names)
        self.maximize = (maximize,) * len(self.names) if isinstance(maximize, bool) else tuple(maximize)
        if len(self.maximize) != len(self.names):
            raise ObjectiveError(f"{len(self.names)} names but {len(self.maximize)} maximize flags")
        self.held_out = test_fn is not None

    def _values(self, fn: Callable, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[float, ...]:
        out = fn(model, tokenizer)
        values = tuple(float(v) for v in (out if isinstance(out, (list, tuple, np.ndarray)) else [out]))
        if len(values) != len(self.names):
            raise ObjectiveError(
                f"the fitness function returned {len(values)} values for {len(self.names)} objectives "
                f"{list(self.names)}; return one float per name"
            )
        if not all(np.isfinite(values)):
            raise CandidateError(f"the fitness function returned {values}; every value must be finite")
        return values

    def measure(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Measurement:
        return Measurement(self._values(self.fn, model, tokenizer))

    def test(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[float, ...]:
        return self._values(self.test_fn or self.fn, model, tokenizer)


def task_objectives(config: ExperimentConfig) -> list[Objective]:
    """The tasks a search optimises."""
    return [TaskObjective(task, config) for task in config.tasks if task.objective]


def task_checks(config: ExperimentConfig) -> list[Objective]:
    """The tasks scored only in the held-out test (``objective: false``): their ``test`` needs
    no ``prepare``, since only the estimator of a search needs anchors or respondents."""
    return [TaskObjective(task, config) for task in config.tasks if not task.objective]
