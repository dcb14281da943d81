"""Merge methods as pure tensor functions (mergekit semantics), applied in memory."""

from .inplace import task_arithmetic_into
from .kernels import linear, task_arithmetic
from .methods import MethodSpec, ParamSpec, get_method, methods, resolve_params

__all__ = [
    "MethodSpec",
    "ParamSpec",
    "get_method",
    "linear",
    "methods",
    "resolve_params",
    "task_arithmetic",
    "task_arithmetic_into",
]
