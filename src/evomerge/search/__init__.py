"""The search: algorithms by name, the search space, objectives, the ask/tell loop,
the run store, resume and the held-out test phase."""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .algorithms import ALGORITHMS, AlgorithmError, algorithm_class, is_multi_objective, make_algorithm
    from .experiment import ResumeError, RunExistsError, RunResult, resume_run, run_experiment
    from .local_executor import Executor, LocalExecutor
    from .loop import ReplayError, Searcher, Termination, winners
    from .objectives import FunctionObjective, Measurement, Objective, ObjectiveError, TaskObjective
    from .problem import Evaluation, MergeProblem
    from .space import Gene, SearchSpace, SearchSpaceError
    from .store import RunStore, RunStoreError

#: Each exported name's module. All are imported on first use: reading a run directory
#: (the GUI's first page, ``search.rundir``) needs no torch, and a run's entry points sit
#: above the config loader, which imports this package's registries.
_WHERE = {
    **dict.fromkeys(["ALGORITHMS", "AlgorithmError", "algorithm_class", "is_multi_objective", "make_algorithm"],
                    "algorithms"),
    **dict.fromkeys(["ResumeError", "RunExistsError", "RunResult", "resume_run", "run_experiment"], "experiment"),
    **dict.fromkeys(["Executor", "LocalExecutor"], "local_executor"),
    **dict.fromkeys(["ReplayError", "Searcher", "Termination", "winners"], "loop"),
    **dict.fromkeys(["FunctionObjective", "Measurement", "Objective", "ObjectiveError", "TaskObjective"],
                    "objectives"),
    **dict.fromkeys(["Evaluation", "MergeProblem"], "problem"),
    **dict.fromkeys(["Gene", "SearchSpace", "SearchSpaceError"], "space"),
    **dict.fromkeys(["RunStore", "RunStoreError"], "store"),
}  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
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
