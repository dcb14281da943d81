"""The ``layer_select`` fast path: each tensor copied from the model its layer is taken from."""

from __future__ import annotations

from ..errors import MergeConfigError
from ..models.groups import tensor_group
from .recipe import Recipe
from .tensorjob import TensorJob


def layer_select(job: TensorJob) -> None:
    recipe, merger = job.recipe, job.merger
    source = layer_source(recipe, job.name, merger.num_layers)
    models = [recipe.base_model, *recipe.model_names] if recipe.base_model else recipe.model_names
    if not 0 <= source < len(models):
        raise MergeConfigError(f"layer_select.source {source} for {job.name}: pick 0..{len(models) - 1} ({models})")
    job.target.copy_(job.stack[merger.row(models[source])].view(job.target.shape))


def layer_source(recipe: Recipe, name: str, num_layers: int) -> int:
    """Which model (0 = base, then the recipe's models) ``layer_select`` takes a tensor from.

    ``source`` is one index for every layer, a list with one index per layer, or filter
    conditions over those. Tensors outside the layers come from the base unless a filter
    names them.
    """
    settings = dict(recipe.parameters)
    if "source" not in settings:
        raise MergeConfigError("layer_select needs parameter 'source': a model index per layer")
    setting = settings["source"]
    if isinstance(setting, tuple) and setting and isinstance(setting[0], tuple):
        for filt, value in setting:
            if filt in (None, "*") or filt in name:
                setting = value
                break
        else:
            return 0
    layer = tensor_group(name).layer
    if not isinstance(setting, tuple):
        return int(setting)
    if layer is None:
        return 0
    if len(setting) != num_layers:
        raise MergeConfigError(f"layer_select.source has {len(setting)} entries; give one per layer ({num_layers})")
    return int(setting[layer])  # type: ignore[arg-type]  # a tuple of per-layer ints here
