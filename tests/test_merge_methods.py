"""The method registry: complete, faithful to mergekit's declarations, and strict."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import registered_methods
from mergekit.merge_methods.api import merge_tensors

from evomerge.errors import MergeConfigError
from evomerge.merge.methods import get_method, methods, resolve_params
from evomerge.models import Checkpoint

ISSUE_METHODS = {
    "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "layer_select",
}  # fmt: skip


def test_every_mergekit_method_and_layer_select_is_declared():
    assert {m.spec.name for m in registered_methods()} | {"layer_select"} == set(methods())
    assert set(methods()) >= ISSUE_METHODS


@pytest.mark.parametrize(
    ("method", "param", "default"),
    [
        ("ties", "normalize", True),
        ("task_arithmetic", "normalize", False),
        ("dare_ties", "rescale", True),
        ("della", "epsilon", 0.15),
        ("breadcrumbs", "gamma", 0.01),
        ("ties", "lambda", 1.0),
        ("ties", "int8_mask", False),
    ],
)
def test_defaults_are_mergekits(method, param, default):
    assert get_method(method).param(param).default == default


def test_per_model_and_required_parameters():
    ties = get_method("ties")
    assert ties.param("weight").per_model and ties.param("weight").required
    assert ties.param("density").per_model and not ties.param("density").required
    assert not ties.param("normalize").per_model
    assert ties.base == "required" and get_method("linear").base == "ignored"
    assert get_method("slerp").param("t").required


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della"])
def test_resolved_parameters_are_accepted_by_mergekit(method, demo_family):
    """Our declaration, resolved with defaults, drives mergekit itself on real tensors."""
    name = "model.layers.0.mlp.up_proj.weight"
    tensors = [Checkpoint.open(demo_family / "models" / m).tensor(name) for m in ("base", "add", "greek", "cyrillic")]
    params = resolve_params(get_method(method), {"weight": [0.5, 1.0, 1.0], "density": 0.5}, n_endpoints=3)
    torch.manual_seed(0)
    merged = merge_tensors(tensors, method, base_index=0, parameters=params)
    assert merged.shape == tensors[0].shape and torch.isfinite(merged).all()
    assert not torch.equal(merged, tensors[0])


def test_unknown_names_list_the_valid_ones_with_a_suggestion():
    with pytest.raises(MergeConfigError, match=r"unknown merge method 'tie'\. Did you mean 'ties'\?.*task_arithmetic"):
        get_method("tie")
    with pytest.raises(MergeConfigError, match=r"Did you mean 'density'\?"):
        resolve_params(get_method("ties"), {"weight": 1.0, "densty": 0.5}, 2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weight": 1.0, "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"weight": 1.0, "density": 0.0}, r"density must be in \(0, 1\]"),
        ({"density": 0.5}, "needs parameter 'weight'"),
        ({"weight": [1.0, 2.0]}, r"one value or one per endpoint \(3\)"),
        ({"weight": 1.0, "lambda": [1.0, 2.0, 3.0]}, "shared by all models"),
        ({"weight": 1.0, "density": "half"}, r"ties.density takes a float, got 'half'"),
        ({"weight": 1.0, "normalize": "yes"}, r"ties.normalize takes a bool, got 'yes'"),
        ({"weight": [1.0, True, 0.5]}, r"ties.weight takes a float, got True"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(MergeConfigError, match=message):
        resolve_params(get_method("ties"), params, n_endpoints=3)


def test_defaults_are_filled_in():
    resolved = resolve_params(get_method("dare_ties"), {"weight": 0.5}, n_endpoints=2)
    assert resolved == {"int8_mask": False, "normalize": False, "rescale": True, "lambda": 1.0,
                        "weight": 0.5, "density": 1.0}  # fmt: skip


def test_the_registry_cannot_be_changed_by_a_caller():
    with pytest.raises(TypeError):
        methods()["ties"] = methods()["linear"]  # type: ignore[index]
    assert get_method("ties").name == "ties"
