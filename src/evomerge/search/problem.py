"""The problem a search solves: genes to a recipe, a merged model to objective values.

The Merger / Problem / Searcher split mirrors Mergenetic's, so its users find their
way: the ``Merger`` writes a recipe into the live model, the ``MergeProblem`` knows what
the genes mean and how a model is scored, the ``Searcher`` drives the algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pymoo.core.problem import Problem
from transformers import PreTrainedTokenizerBase

from ..merge.candidate import Candidate
from .objectives import Measurement, Objective, ObjectiveError
from .pathspace import PathSpace
from .space import SearchSpace


@dataclass(frozen=True)
class Evaluation:
    """One candidate's measurement and what it cost; a failed one has its error instead."""

    measurement: Measurement | None
    merge_s: float
    eval_s: float
    error: str | None = None

    @classmethod
    def failed(cls, err: BaseException, seconds: float) -> Evaluation:
        return cls(None, 0.0, seconds, f"{type(err).__name__}: {err}")


class MergeProblem:
    """``objectives`` are searched on; ``checks`` are only scored in the held-out test, beside
    them (``test_names``), to show what a merge keeps of skills it was not searched for."""

    def __init__(
        self, space: SearchSpace | PathSpace, objectives: Sequence[Objective], checks: Sequence[Objective] = ()
    ) -> None:
        if not objectives:
            raise ObjectiveError("a search needs at least one objective")
        self.space = space
        self.objectives = list(objectives)
        self.checks = list(checks)
        self.names = tuple(n for o in self.objectives for n in o.names)
        self.maximize = tuple(m for o in self.objectives for m in o.maximize)
        self.test_names = self.names + tuple(n for c in self.checks for n in c.names)
        if len(set(self.test_names)) != len(self.test_names):
            raise ObjectiveError(f"objective and check names must differ: {list(self.test_names)}")

    @property
    def n_obj(self) -> int:
        return len(self.names)

    def decode(self, x: Sequence[float]) -> Candidate:
        return self.space.decode(x)

    def measure(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Measurement:
        parts = [o.measure(model, tokenizer) for o in self.objectives]
        return Measurement(tuple(v for p in parts for v in p.values), {k: v for p in parts for k, v in p.items.items()})

    def test(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[float, ...]:
        """Held-out scores in ``test_names``' order: the objectives', then the checks'."""
        return tuple(v for o in [*self.objectives, *self.checks] for v in o.test(model, tokenizer))

    def minimized(self, values: Sequence[float]) -> np.ndarray:
        """pymoo's ``F``: every objective as one to minimise."""
        return np.array([-v if up else v for v, up in zip(values, self.maximize, strict=True)], dtype=float)

    def pymoo_problem(self) -> Problem:
        """The bounds pymoo sees; values come through ask/tell, never ``Problem.evaluate``."""
        return Problem(n_var=self.space.n_var, n_obj=self.n_obj, xl=0.0, xu=1.0)
