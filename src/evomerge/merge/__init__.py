"""Merging: the method registry, recipes, and the in-memory engine (mergekit semantics)."""

from .engine import Merger
from .methods import MethodSpec, ParamSpec, get_method, methods
from .recipe import ModelEntry, Recipe, per_layer
from .run import merge_config

__all__ = [
    "Merger",
    "MethodSpec",
    "ModelEntry",
    "ParamSpec",
    "Recipe",
    "get_method",
    "merge_config",
    "methods",
    "per_layer",
]
