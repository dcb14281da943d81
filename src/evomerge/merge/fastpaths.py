"""The merge methods with a fast path of their own, by name (one file per family); the
engine runs every other mergekit method through mergekit's own ``merge_tensors``, and a
recipe computed in bf16/fp16 too unless its method is in ``HALF_FAST_METHODS``."""

from __future__ import annotations

from ..registry import Registry
from .gta import GTA_METHODS, HALF_METHODS, gta
from .linear import linear, slerp
from .select import layer_select
from .tensorjob import FastPath

FAST_PATHS: Registry[FastPath] = Registry("merge fast path")
for _method in GTA_METHODS:
    FAST_PATHS.register(_method, gta)
FAST_PATHS.register("linear", linear)
FAST_PATHS.register("slerp", slerp)
FAST_PATHS.register("layer_select", layer_select)

FAST_METHODS = frozenset(FAST_PATHS.names())

#: fast paths that also compute in bf16/fp16 as mergekit does (``layer_select`` copies bytes)
HALF_FAST_METHODS = HALF_METHODS | {"layer_select"}
