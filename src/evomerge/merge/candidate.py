"""What a search candidate is: a merge recipe (parameter space) or a layer path (data flow).

Both are frozen, hashable, stored as YAML under the same column of the run store and
told apart by that YAML; ``put_into`` makes the live model hold either.
"""

from __future__ import annotations

import torch

from .engine import Merger
from .layerpath import LayerPath, is_path_yaml
from .pathmodel import PathMerger
from .recipe import Recipe

Candidate = Recipe | LayerPath
#: What holds the source models a candidate is made from.
Sources = Merger | PathMerger


def candidate_from_yaml(text: str) -> Candidate:
    """A stored candidate, by what its YAML holds."""
    return LayerPath.from_yaml(text) if is_path_yaml(text) else Recipe.from_yaml(text)


def put_into(sources: Sources, model: torch.nn.Module, candidate: Candidate) -> torch.nn.Module:
    """Make the live ``model`` hold ``candidate``: merged in place, or its path assembled."""
    if isinstance(candidate, LayerPath):
        if not isinstance(sources, PathMerger):
            raise TypeError("a layer path is put into a model by a PathMerger")
        return sources.merge_into(model, candidate)
    if not isinstance(sources, Merger):
        raise TypeError("a recipe is merged by a Merger")
    return sources.merge_into(model, candidate)
