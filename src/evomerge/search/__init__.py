"""The search: algorithms by name, the search space, objectives, the ask/tell loop,
the run store, resume and the held-out test phase."""

from .algorithms import ALGORITHMS, AlgorithmError, algorithm_class, is_multi_objective, make_algorithm
from .executors import Executor, LocalExecutor
from .experiment import ResumeError, RunExistsError, RunResult, resume_run, run_experiment
from .loop import ReplayError, Searcher, Termination, winners
from .objectives import FunctionObjective, Measurement, Objective, ObjectiveError, TaskObjective
from .problem import Evaluation, MergeProblem
from .space import Gene, SearchSpace, SearchSpaceError
from .store import RunStore, RunStoreError

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
