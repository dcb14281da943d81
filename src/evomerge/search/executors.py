"""The executors a config can name (``search.executor``): the in-process one and Ray's.
Their contract (``Executor``, ``ExecutorClass``) is in ``local_executor``."""

from __future__ import annotations

from ..registry import Registry
from .local_executor import ExecutorClass, LocalExecutor
from .ray_executor import RayExecutor

EXECUTORS: Registry[type[ExecutorClass]] = Registry("executor")
EXECUTORS.register("local", LocalExecutor)
EXECUTORS.register("ray", RayExecutor)  # Ray itself is imported only when one is made
