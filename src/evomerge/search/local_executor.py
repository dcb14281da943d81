"""The executor contract (where candidates are merged and scored) and the in-process one.

The loop hands an executor a batch of recipes and stores each result as it arrives,
in whatever order; it never touches a model itself. So a parallel executor (a Ray
pool of workers, each with its own live model) plugs in without changing the loop:
it implements ``evaluate`` and yields ``(index, Evaluation)`` as workers finish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import CandidateError, EvomergeError, MemoryBudgetError
from ..evaluate.evaluator import Evaluator
from ..merge.candidate import Candidate, Sources, put_into
from .problem import Evaluation, MergeProblem

if TYPE_CHECKING:
    from ..config import ExperimentConfig


class Executor(Protocol):
    """Merges and scores candidates for the search loop and the test phase."""

    def evaluate(self, problem: MergeProblem, recipes: Sequence[Candidate]) -> Iterator[tuple[int, Evaluation]]:
        """Merge and score each recipe; yield ``(its index, result)`` as each finishes. A
        candidate that raises (other than ``RUN_ERRORS``) yields an ``Evaluation.failed``."""
        ...

    def evaluate_one(self, problem: MergeProblem, recipe: Candidate) -> Evaluation:
        """Merge and score one recipe here and now."""
        ...

    def test(self, problem: MergeProblem, recipe: Candidate) -> tuple[tuple[float, ...], float]:
        """The held-out scores of ``recipe`` and the seconds they took."""
        ...

    def score_items(
        self, evaluator: Evaluator, recipes: Sequence[Candidate], items: Sequence[Sequence[str]] | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """Each recipe's score on its ``items`` (ids) of ``evaluator``'s search items, else on
        every one (IRT respondents)."""
        ...


class ExecutorClass(Protocol):
    """A registered executor: made from the run's merger, live model, tokenizer and config."""

    @classmethod
    def create(
        cls, merger: Sources, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig
    ) -> Executor: ...


class LocalExecutor:
    """One live model in this process: each candidate is merged into it in place."""

    def __init__(self, merger: Sources, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.merger, self.model, self.tokenizer = merger, model, tokenizer

    @classmethod
    def create(
        cls, merger: Sources, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: ExperimentConfig
    ) -> LocalExecutor:
        return cls(merger, model, tokenizer)

    def evaluate(self, problem: MergeProblem, recipes: Sequence[Candidate]) -> Iterator[tuple[int, Evaluation]]:
        for i, recipe in enumerate(recipes):
            start = time.perf_counter()
            try:
                evaluation = self.evaluate_one(problem, recipe)
            except CandidateError as err:
                evaluation = Evaluation.failed(err, time.perf_counter() - start)
            except RUN_ERRORS:
                raise
            except Exception as err:  # this candidate's own failure; the loop applies search.on_error
                evaluation = Evaluation.failed(err, time.perf_counter() - start)
            yield i, evaluation

    @torch.no_grad()
    def evaluate_one(self, problem: MergeProblem, recipe: Candidate) -> Evaluation:
        with out_of_memory_as_error(self.merger):
            start = time.perf_counter()
            put_into(self.merger, self.model, recipe)
            merged = time.perf_counter()
            measurement = problem.measure(self.model, self.tokenizer)
        return Evaluation(measurement, merged - start, time.perf_counter() - merged)

    @torch.no_grad()
    def score_items(
        self, evaluator: Evaluator, recipes: Sequence[Candidate], items: Sequence[Sequence[str]] | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        for i, recipe in enumerate(recipes):
            with out_of_memory_as_error(self.merger):
                put_into(self.merger, self.model, recipe)
                yield i, evaluator.score(self.model, self.tokenizer, None if items is None else items[i])

    @torch.no_grad()
    def test(self, problem: MergeProblem, recipe: Candidate) -> tuple[tuple[float, ...], float]:
        """The held-out scores of ``recipe`` and the seconds they took."""
        with out_of_memory_as_error(self.merger):
            start = time.perf_counter()
            put_into(self.merger, self.model, recipe)
            return problem.test(self.model, self.tokenizer), time.perf_counter() - start


#: Errors of the run, not of one candidate: bad data or settings (every candidate would
#: fail alike), out of memory, a full disk. They stop the run whatever search.on_error says.
RUN_ERRORS: tuple[type[BaseException], ...] = (EvomergeError, OSError, MemoryError)


def close(executor: Executor) -> None:
    """Release what an executor holds (Ray actors, say); a local one holds nothing."""
    closer = getattr(executor, "close", None)
    if closer is not None:
        closer()


@contextmanager
def out_of_memory_as_error(merger: Sources) -> Iterator[None]:
    """A device out of memory mid-candidate (after generation's own batch halving) becomes a
    ``MemoryBudgetError`` naming what to change; finished evaluations are already stored."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise MemoryBudgetError(
            f"{merger.device} ran out of memory during a candidate (merge tier {merger.tier}): {err}. "
            "Every finished evaluation is stored. Lower the task's batch_size, or set merge.tier: host or disk "
            "(or a smaller merge.memory_budget), then continue with `evomerge resume RUN_DIR`."
        ) from err
