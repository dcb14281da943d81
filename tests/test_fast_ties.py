"""Exact mode: TIES from once-per-run magnitude ranks equals mergekit's TIES on the same inputs."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.merge.kernels import ties
from evomerge.merge.sparsify import MagnitudeRanks
from evomerge.models import Checkpoint

NAMES = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"]


@pytest.fixture(scope="module")
def inputs(demo_family):
    models = [Checkpoint.open(demo_family / "models" / m) for m in ("base", "add", "greek", "cyrillic")]
    out = {}
    for name in NAMES:
        tensors = [m.tensor(name) for m in models]
        deltas = [t - tensors[0] for t in tensors[1:]]
        out[name] = (tensors, deltas, [MagnitudeRanks(d) for d in deltas])  # once per run
    return out


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(
    ("weights", "normalize", "lambda_", "rescale"),
    [
        ([1.0, 1.0, 1.0], True, 1.0, False),
        ([0.7, -0.4, 1.2], True, 1.0, False),
        ([0.7, -0.4, 1.2], False, 0.6, False),
        ([0.5, 1.0, 0.8], False, 1.0, True),
    ],
)
def test_ties_matches_mergekit(inputs, density, weights, normalize, lambda_, rescale):
    densities = [density, min(1.0, density + 0.2), density]
    params = {"weight": weights, "density": densities, "normalize": normalize, "lambda": lambda_, "rescale": rescale}
    for name, (tensors, deltas, ranks) in inputs.items():
        ref = merge_tensors(tensors, "ties", base_index=0, parameters=params)
        ours = ties(
            tensors[0], deltas, ranks, weights, densities, normalize=normalize, rescale=rescale, lambda_=lambda_
        )
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6, msg=name)


def test_top_mask_keeps_the_density_and_the_largest_entries():
    delta = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    ranks = MagnitudeRanks(delta)
    for density in (0.01, 0.3, 0.999):
        mask = ranks.top_mask(density)
        assert int(mask.sum()) == max(1, int(density * delta.numel()))
        assert delta.abs()[mask].min() >= delta.abs()[~mask].max()
    assert ranks.top_mask(1.0).all()
    assert not ranks.top_mask(0.0).any()  # mergekit zeroes the task vector at density 0
