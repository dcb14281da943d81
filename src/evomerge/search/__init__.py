"""The search: every pymoo algorithm by name and the search space; the ask/tell loop,
the run store and resume land with the rest of issue 6."""

from .algorithms import ALGORITHMS, AlgorithmError, algorithm_class, is_multi_objective, make_algorithm
from .space import Gene, SearchSpace, SearchSpaceError

__all__ = [
    "ALGORITHMS",
    "AlgorithmError",
    "Gene",
    "SearchSpace",
    "SearchSpaceError",
    "algorithm_class",
    "is_multi_objective",
    "make_algorithm",
]
