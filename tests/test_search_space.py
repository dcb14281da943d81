"""x in [0, 1]^d -> Recipe, checked by merging the decoded recipes into the real demo models."""

import numpy as np
import pytest
import torch

from evomerge.errors import MergeConfigError
from evomerge.merge.engine import Merger
from evomerge.merge.run import load_live_model
from evomerge.models.checkpoint import Checkpoint
from evomerge.search.space import SearchSpace, SearchSpaceError


@pytest.fixture(scope="module")
def family(demo_family):
    models = demo_family / "models"
    return str(models / "base"), [str(models / "add"), str(models / "greek")]


def test_genes_follow_the_method_and_granularity(family):
    base, eps = family
    assert SearchSpace("ties", eps, base, num_layers=2).n_var == 4  # weight, density per endpoint
    assert SearchSpace("task_arithmetic", eps, base, num_layers=2).n_var == 2  # its density has no effect
    assert SearchSpace("slerp", eps[:1], base, num_layers=2).n_var == 1  # t
    per_layer = SearchSpace("ties", eps, base, num_layers=4, granularity="layer", group_size=2)
    assert per_layer.n_var == 2 * 2 * 2 and per_layer.genes[0].name.endswith("@layers 0-1")
    assert SearchSpace("dare_ties", eps, base, num_layers=2, granularity="module").n_var == 2 * 2 * 3
    select = SearchSpace("layer_select", eps, base, num_layers=2, granularity="layer")
    assert [g.choices for g in select.genes] == [(0, 1, 2), (0, 1, 2)]
    negative = SearchSpace("linear", eps, None, num_layers=2, allow_negative_weights=True)
    assert (negative.genes[0].low, negative.genes[0].high) == (-1.0, 1.0)


def test_decode_is_deterministic_and_honours_frozen_and_fixed_genes(family):
    base, eps = family
    space = SearchSpace("ties", eps, base, num_layers=2, frozen={"density[add]@all": 0.5}, fixed={"normalize": False})
    assert space.n_var == 3
    x = [0.25, 0.5, 1.0]
    recipe = space.decode(x)
    assert recipe == space.decode(list(x)) and recipe.digest == space.decode(x).digest
    config = recipe.to_mergekit()
    assert config["parameters"] == {"normalize": False}
    assert config["models"][0]["parameters"] == {"weight": 0.25, "density": 0.5}
    assert config["models"][1]["parameters"] == {"weight": 0.5, "density": 1.0}


def test_per_layer_genes_reach_the_right_layers(family, demo_family):
    """Layer 0 takes the add specialist's task vector in full, layer 1 (and the rest) none of it."""
    base, eps = family
    space = SearchSpace("task_arithmetic", eps[:1], base, num_layers=6, granularity="layer", params=["weight"])
    recipe = space.decode([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    merger = Merger.for_recipe(recipe)
    model = merger.merge_into(load_live_model(merger), recipe)
    add, b = Checkpoint.open(eps[0]), Checkpoint.open(base)
    state = dict(model.named_parameters())
    layer0 = next(n for n in state if ".layers.0." in n and n.endswith("weight"))
    layer1 = layer0.replace(".layers.0.", ".layers.1.")
    assert torch.allclose(state[layer0], add.tensor(layer0), atol=1e-6)
    assert torch.allclose(state[layer1], b.tensor(layer1), atol=1e-6)


def test_layer_select_genes_pick_whole_models(family):
    base, eps = family
    space = SearchSpace("layer_select", eps, base, num_layers=6, granularity="layer")
    recipe = space.decode([0.5, 0.99, 0.0, 0.0, 0.0, 0.0])  # layer 0 from choice 1 (add), layer 1 from choice 2 (greek)
    merger = Merger.for_recipe(recipe)
    state = dict(merger.merge_into(load_live_model(merger), recipe).named_parameters())
    name0 = next(n for n in state if ".layers.0." in n)
    name1 = name0.replace(".layers.0.", ".layers.1.")
    assert torch.equal(state[name0], Checkpoint.open(eps[0]).tensor(name0))
    assert torch.equal(state[name1], Checkpoint.open(eps[1]).tensor(name1))


def test_module_genes_merge(family):
    base, eps = family
    space = SearchSpace("dare_ties", eps, base, num_layers=2, granularity="module", seed=3)
    recipe = space.decode(np.full(space.n_var, 0.7))
    merger = Merger.for_recipe(recipe)
    model = merger.merge_into(load_live_model(merger), recipe)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_della_extremes_stay_in_its_density_range(family):
    """DELLA refuses density ± epsilon outside (0, 1): the default range keeps clear of it."""
    base, eps = family
    space = SearchSpace("della", eps, base, num_layers=2)
    for x in (np.zeros(space.n_var), np.ones(space.n_var)):
        recipe = space.decode(x)
        merger = Merger.for_recipe(recipe)
        model = merger.merge_into(load_live_model(merger), recipe)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_space_errors(family):
    base, eps = family
    with pytest.raises(SearchSpaceError, match=r"group_size 5: choose 1\.\.2"):
        SearchSpace("ties", eps, base, num_layers=2, granularity="layer", group_size=5)
    with pytest.raises(SearchSpaceError, match="cannot freeze"):
        SearchSpace("ties", eps, base, num_layers=2, frozen={"weight@all": 1.0})
    with pytest.raises(SearchSpaceError, match="both searched and fixed"):
        SearchSpace("ties", eps, base, num_layers=2, fixed={"density": 0.5})
    with pytest.raises(MergeConfigError, match="densty"):
        SearchSpace("ties", eps, base, num_layers=2, params=["densty"])
    with pytest.raises(SearchSpaceError, match="x must be 4 finite numbers"):
        SearchSpace("ties", eps, base, num_layers=2).decode([0.5, float("nan"), 0.1, 0.2])
