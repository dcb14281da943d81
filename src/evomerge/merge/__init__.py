"""Merge methods as pure tensor functions (mergekit semantics), applied in memory."""

from .inplace import task_arithmetic_into
from .kernels import linear, task_arithmetic

__all__ = ["linear", "task_arithmetic", "task_arithmetic_into"]
