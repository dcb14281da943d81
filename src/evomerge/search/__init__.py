"""The search: algorithms by name, the search space, objectives, the ask/tell loop,
the run store, resume and the held-out test phase."""

from typing import TYPE_CHECKING

from .algorithms import ALGORITHMS, AlgorithmError, algorithm_class, is_multi_objective, make_algorithm
from .local_executor import Executor, LocalExecutor
from .loop import ReplayError, Searcher, Termination, winners
from .objectives import FunctionObjective, Measurement, Objective, ObjectiveError, TaskObjective
from .problem import Evaluation, MergeProblem
from .space import Gene, SearchSpace, SearchSpaceError
from .store import RunStore, RunStoreError

if TYPE_CHECKING:
    from .experiment import ResumeError, RunExistsError, RunResult, resume_run, run_experiment

_RUN = ("ResumeError", "RunExistsError", "RunResult", "resume_run", "run_experiment")


def __getattr__(name: str) -> object:
    """A run's entry points sit above the config loader, which imports this package's
    registries (algorithms, executors, trackers): they are imported on first use."""
    if name in _RUN:
        from . import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "AlgorithmError",
    "Evaluation",
    "Executor",
    "FunctionObjective",
    "Gene",
    "LocalExecutor",
    "Measurement",
    "MergeProblem",
    "Objective",
    "ObjectiveError",
    "ReplayError",
    "ResumeError",
    "RunExistsError",
    "RunResult",
    "RunStore",
    "RunStoreError",
    "SearchSpace",
    "SearchSpaceError",
    "Searcher",
    "TaskObjective",
    "Termination",
    "algorithm_class",
    "is_multi_objective",
    "make_algorithm",
    "resume_run",
    "run_experiment",
    "winners",
]
