"""The in-memory engine against mergekit, on real checkpoints: the demo family (Llama)
and a random-weight GPT-2 family built here. Every merge is written into a live
model and compared, tensor by tensor, with ``mergekit.merge_methods.api.merge_tensors``
on the same inputs (and, in ``test_merge_cli.py``, with a ``mergekit-yaml`` run)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.errors import CheckpointError, MergeConfigError
from evomerge.merge import Merger, ModelEntry, Recipe, methods, per_layer
from evomerge.merge.fastpaths import FAST_METHODS
from evomerge.merge.run import load_live_model
from evomerge.models import Checkpoint

ENDPOINTS = ("add", "greek", "cyrillic")


def recipe(
    family: Path, method: str, per_model: list[dict], base: bool = True, endpoints=ENDPOINTS, **params
) -> Recipe:
    """A recipe as a mergekit config would give it: per-model settings for base-less methods
    start with the base model as an input."""
    names = ([] if base else ["base"]) + list(endpoints[: len(per_model) - (0 if base else 1)])
    config = {
        "merge_method": method,
        "models": [
            {"model": str(family / "models" / n), "parameters": p} for n, p in zip(names, per_model, strict=True)
        ],
        "parameters": params,
    }
    if "seed" in params:
        config["evomerge"] = {"seed": params.pop("seed")}
    if base:
        config["base_model"] = str(family / "models" / "base")
    return Recipe.from_mergekit(config)


class _StableSorts:
    """torch, with ``argsort``/``sort`` stable: mergekit's masks with equal magnitudes
    ordered by index, as evomerge orders them (torch's default order of equal values is
    unspecified; see ``evomerge.merge.masks``)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def argsort(x, **kwargs):
        return torch.argsort(x, stable=True, **kwargs)

    @staticmethod
    def sort(x, **kwargs):
        return torch.sort(x, stable=True, **kwargs)


@contextmanager
def stable_mergekit_sorts():
    import mergekit.sparsify

    saved = mergekit.sparsify.torch
    mergekit.sparsify.torch = _StableSorts()
    try:
        yield
    finally:
        mergekit.sparsify.torch = saved


def mergekit_reference(merger: Merger, rec: Recipe, name: str, *, stable: bool = True) -> torch.Tensor:
    """mergekit's own result for one tensor, with the parameters mergekit's resolver gives
    (its sorts made stable unless ``stable=False``)."""
    tensors, kwargs = merger.mergekit_arguments(rec, name)
    if not stable:
        return merge_tensors(tensors, rec.method, **kwargs)
    with stable_mergekit_sorts():
        return merge_tensors(tensors, rec.method, **kwargs)


def assert_matches_mergekit(merger: Merger, model: torch.nn.Module, rec: Recipe) -> None:
    merger.merge_into(model, rec)
    state = model.state_dict()
    for name in merger.pool.tensor_names:
        torch.testing.assert_close(state[name], mergekit_reference(merger, rec, name), rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module", params=["demo", "gpt2"])
def family(request, demo_family, gpt2_family):
    """(root, endpoints, {fused: Merger}, live model) of the demo family or the GPT-2 one."""
    root, endpoints = (demo_family, ENDPOINTS) if request.param == "demo" else (gpt2_family, ("a", "b", "c"))
    mergers = {
        fused: Merger.for_recipe(recipe(root, "ties", [{"weight": 1.0}] * 3, endpoints=endpoints), fused=fused)
        for fused in (True, False)
    }
    return root, endpoints, mergers, load_live_model(mergers[True])


@pytest.fixture(scope="module")
def demo_merger(demo_family):
    return {
        fused: Merger.for_recipe(recipe(demo_family, "ties", [{"weight": 1.0}] * 3), fused=fused)
        for fused in (True, False)
    }


@pytest.fixture(scope="module")
def live(demo_merger):
    return load_live_model(demo_merger[True])


W3 = [0.7, -0.4, 1.2]

DETERMINISTIC = [
    ("task_arithmetic", [{"weight": w} for w in W3], {}),
    ("task_arithmetic", [{"weight": w} for w in W3], {"normalize": True, "lambda": 0.6}),
    ("task_arithmetic", [{"weight": 0.5}, {"weight": -0.5}, {"weight": 0.0}], {"normalize": True}),
    ("ties", [{"weight": 1.0, "density": d} for d in (0.1, 0.5, 0.9)], {}),
    ("ties", [{"weight": w, "density": 0.5} for w in W3], {"normalize": False, "lambda": 0.6}),
    ("ties", [{"weight": w, "density": d} for w, d in zip(W3, (0.1, 1.0, 0.9), strict=True)], {"rescale": True}),
    ("ties", [{"weight": w} for w in W3], {}),  # density 1: sign election only
    ("breadcrumbs", [{"weight": w, "density": 0.5, "gamma": 0.05} for w in W3], {}),
    (
        "breadcrumbs_ties",
        [{"weight": w, "density": d} for w, d in zip(W3, (0.1, 0.5, 0.9), strict=True)],
        {"normalize": True},
    ),
    ("linear", [{"weight": w} for w in (0.2, 0.7, 1.0, -0.4)], {"base": False}),
    ("linear", [{"weight": w} for w in (0.2, 0.7, 1.0, 0.4)], {"base": False, "normalize": False}),
    ("slerp", [{}], {"t": 0.3}),
    ("slerp", [{}], {"t": [0.0, 0.8]}),  # a gradient over the layers
    ("task_arithmetic", [{"weight": [0.2, 1.0]}, {"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.1}]}], {}),
    # methods without a fast path go through mergekit's merge_tensors
    ("nuslerp", [{"weight": 0.3}, {"weight": 0.7}], {}),
    ("model_stock", [{}, {}], {}),
    ("multislerp", [{"weight": w} for w in (0.2, 0.5, 0.3)], {}),
    ("karcher", [{}, {}, {}], {"base": False}),
    ("sce", [{}, {}, {}], {"select_topk": 0.5}),
    ("nearswap", [{}], {"t": 0.001}),
    ("arcee_fusion", [{}], {}),
    ("ram", [{}, {}], {}),
    ("ramplus_tl", [{}, {}], {"r": 0.2}),
    ("passthrough", [{"scale": 0.5}], {"base": False}),
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize(("method", "per_model", "params"), DETERMINISTIC)
def test_merge_into_equals_mergekit(family, fused, method, per_model, params):
    root, endpoints, mergers, live = family
    params = dict(params)
    base = params.pop("base", True)
    rec = recipe(root, method, per_model, base=base, endpoints=endpoints, **params)
    assert_matches_mergekit(mergers[fused], live, rec)


def test_plain_parameters_are_resolved_once_per_merge_and_layer_wise_ones_per_tensor(
    demo_family, demo_merger, live, monkeypatch
):
    """mergekit's parameter resolution once per candidate where no value varies by tensor
    (the values the parity tests above check); a gradient or a filter, once per tensor."""
    import mergekit.parameter_resolver as resolver

    real, calls = resolver.resolve_parameters, []

    def counted(*args, **kwargs):
        calls.append(kwargs["tensor_name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(resolver, "resolve_parameters", counted)
    merger = demo_merger[True]
    for weights in (W3, [1.0, 0.5, 0.2]):  # two candidates: resolved once each
        merger.merge_into(live, recipe(demo_family, "task_arithmetic", [{"weight": w} for w in weights]))
    assert len(calls) == 2
    calls.clear()
    layered = recipe(demo_family, "task_arithmetic", [{"weight": [0.2, 1.0]}, {"weight": 0.5}, {"weight": 0.1}])
    merger.merge_into(live, layered)
    assert sorted(calls) == sorted(merger.merged_tensors)


TIED = [
    ("ties", [{"weight": w, "density": d} for w, d in zip(W3, (0.1, 0.5, 0.9), strict=True)], {}),
    ("ties", [{"weight": 1.0, "density": 0.35}] * 3, {"rescale": True, "normalize": False}),
    ("breadcrumbs", [{"weight": w, "density": 0.5, "gamma": 0.1} for w in W3], {}),
    ("breadcrumbs_ties", [{"weight": w, "density": d} for w, d in zip(W3, (0.2, 0.6, 0.8), strict=True)], {}),
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize(("method", "per_model", "params"), TIED)
def test_ties_at_the_cut_are_broken_as_mergekit_breaks_them(tied_family, fused, method, per_model, params):
    """Task vectors of 9 magnitudes: every density cuts through a run of equal magnitudes,
    so which entries are kept depends on the sort's order, as in mergekit."""
    endpoints = ("a", "b", "c")
    merger = Merger.for_recipe(recipe(tied_family, "ties", [{"weight": 1.0}] * 3, endpoints=endpoints), fused=fused)
    rec = recipe(tied_family, method, per_model, endpoints=endpoints, **params)
    assert_matches_mergekit(merger, load_live_model(merger), rec)


@pytest.mark.parametrize("density", [0.1, 0.35, 0.5, 0.9])
def test_only_equal_magnitudes_at_the_cut_differ_from_stock_mergekit(tied_family, density, capsys):
    """Against mergekit with torch's default (unstable) sort: one endpoint at weight 1, so the
    merged delta is the masked task vector. Both keep the same number of entries; any
    entry kept by one and not the other has exactly the cut's magnitude."""
    rec = recipe(tied_family, "ties", [{"weight": 1.0, "density": density}], endpoints=("a",))
    merger = Merger.for_recipe(rec)
    live = load_live_model(merger)
    merger.merge_into(live, rec)
    state = live.state_dict()
    differ = total = 0
    for name in merger.pool.tensor_names:
        base = merger.pool.base.tensor(name)
        delta = (merger.pool.endpoints[0].tensor(name) - base).reshape(-1)
        ours = (state[name] - base).reshape(-1) != 0
        theirs = (mergekit_reference(merger, rec, name, stable=False) - base).reshape(-1) != 0
        assert int(ours.sum()) == int(theirs.sum()), name
        changed = ours != theirs
        if changed.any():
            cut = delta[ours].abs().min()
            assert torch.all(delta[changed].abs() == cut), name
        differ += int(changed.sum())
        total += delta.numel()
    with capsys.disabled():
        print(
            f"\nties density {density}: {differ / total:.3%} of entries differ from stock mergekit (equal at the cut)"
        )


def test_a_magnitude_cut_keeps_exactly_the_stably_sorted_range():
    """``masks.magnitude_cuts`` against the mask it stands for (a stable sort's range), on
    vectors with many equal magnitudes, scanned in chunks; and the L1 norm it keeps."""
    from evomerge.merge import masks

    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 3000, (1,), generator=generator))
        delta = torch.randint(-4, 5, (n,), generator=generator) / 8
        if trial % 4 == 0:
            delta = torch.randn(n, generator=generator)
        histogram = np.zeros(masks.BUCKETS, np.int64)
        masks.magnitude_histogram(delta, histogram)

        def sweep(delta=delta):
            return ((s, [delta[s : s + 97]]) for s in range(0, delta.numel(), 97))

        magnitude = delta.abs()
        for method in ("magnitude", "magnitude_outliers"):
            for density in (0.05, 0.3, 0.5, 0.9):
                cuts = masks.magnitude_cuts(method, [density], [0.1], n, [histogram], sweep)
                if method == "magnitude":
                    keep = torch.argsort(magnitude, descending=True, stable=True)[: max(1, int(density * n))]
                else:
                    target = int(density * n)
                    bottom = max(0, n - target - int(0.1 * n))
                    keep = torch.argsort(magnitude, stable=True)[bottom : bottom + target]
                expected = torch.zeros(n, dtype=torch.bool)
                expected[keep] = True
                assert torch.equal(cuts.mask(0, delta, 0), expected), (trial, method, density)
                kept_l1 = sum(masks.cut_l1(cuts, 0, chunk, start) for start, (chunk,) in sweep())
                assert kept_l1 == pytest.approx(float(magnitude[expected].double().sum()), rel=1e-6, abs=1e-9)


def test_random_levels_are_the_same_in_torch_and_in_the_fused_kernel():
    from numba import njit

    from evomerge.merge import fused, masks

    @njit
    def levels(n, seed):
        out = np.empty(n, np.int64)
        for j in range(n):
            out[j] = fused.level(j, seed)
        return out

    for seed in (1, 12345, 2**32 - 1):
        ours = masks.random_levels(torch.arange(200_000), seed)
        assert np.array_equal(ours.numpy(), levels(200_000, np.uint64(seed)))
        assert abs(float((ours < masks.LEVELS // 2).float().mean()) - 0.5) < 0.005  # uniform enough
    assert not torch.equal(masks.random_levels(torch.arange(1000), 1), masks.random_levels(torch.arange(1000), 2))


def test_every_deterministic_method_is_covered():
    random = {"dare_ties", "dare_linear", "della", "della_linear"}  # tested in expectation below
    assert {m for m, _, _ in DETERMINISTIC} == set(methods()) - random - {"layer_select"}
    assert FAST_METHODS - random - {"layer_select"} <= {m for m, _, _ in DETERMINISTIC}


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della_linear", "della"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_random_sparsification_keeps_the_density_and_the_norm(demo_family, demo_merger, live, method, fused):
    """One endpoint at weight 1: the merged delta is the sparsified, L1-rescaled task vector."""
    density = 0.3
    rec = recipe(demo_family, method, [{"weight": 1.0, "density": density}], seed=7)
    merger = demo_merger[fused]
    merger.merge_into(live, rec)
    ours = {n: p.detach().clone() for n, p in live.state_dict().items()}
    base, add = merger.pool.base, merger.pool.endpoints[0]
    kept = total = 0
    for name in merger.pool.tensor_names:
        delta = add.tensor(name) - base.tensor(name)
        merged_delta = ours[name] - base.tensor(name)
        nonzero = delta != 0
        kept += int((merged_delta[nonzero] != 0).sum())
        total += int(nonzero.sum())
        # rescale (the default) restores each task vector's L1 norm, as mergekit's does
        ref_delta = mergekit_reference(merger, rec, name) - base.tensor(name)
        for d in (merged_delta, ref_delta):
            torch.testing.assert_close(d.abs().sum(), delta.abs().sum(), rtol=2e-4, atol=1e-6)
    assert abs(kept / total - density) < 0.005, kept / total  # 1.35M entries: binomial sd ~0.0004
    merger.merge_into(live, rec)  # the same recipe merges identically
    assert all(torch.equal(ours[n], p) for n, p in live.state_dict().items())
    merger.merge_into(live, Recipe(**{**rec.__dict__, "seed": 8}))
    assert not all(torch.equal(ours[n], p) for n, p in live.state_dict().items())


def test_fused_and_eager_draw_the_same_dare_masks(demo_family, demo_merger, live):
    rec = recipe(demo_family, "dare_ties", [{"weight": w, "density": 0.4} for w in W3], seed=3)
    results = []
    for fused in (True, False):
        demo_merger[fused].merge_into(live, rec)
        results.append({n: p.detach().clone() for n, p in live.state_dict().items()})
    for name, tensor in results[0].items():
        torch.testing.assert_close(tensor, results[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_layer_select_takes_each_layer_whole_from_its_model(demo_family, demo_merger, live):
    rec = Recipe.from_mergekit(
        {
            "merge_method": "layer_select",
            "base_model": str(demo_family / "models" / "base"),
            "models": [{"model": str(demo_family / "models" / e)} for e in ENDPOINTS],
            "parameters": {"source": [{"filter": "lm_head", "value": 3}, {"value": [2, 1, 0, 3, 0, 2]}]},
        }
    )
    demo_merger[True].merge_into(live, rec)
    expect = {
        "model.layers.0.": "greek",
        "model.layers.1.": "add",
        "model.layers.3.": "cyrillic",
        "model.layers.5.": "greek",
        "lm_head": "cyrillic",
    }
    for name, tensor in live.state_dict().items():
        source = next((m for prefix, m in expect.items() if name.startswith(prefix)), "base")
        assert torch.equal(tensor, Checkpoint.open(demo_family / "models" / source).tensor(name)), name


def test_recipe_round_trips_through_mergekit_yaml(demo_family):
    rec = recipe(
        demo_family,
        "dare_ties",
        [
            {"weight": [0.2, 0.9], "density": {"value": 0.5}},
            {"weight": 1.0, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]},
        ],
        normalize=True,
        seed=11,
    )
    again = Recipe.from_yaml(rec.to_yaml())
    assert again == rec and hash(again) == hash(rec)
    assert "evomerge" in rec.to_mergekit() and "seed" in rec.to_yaml()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"merge_method": "tiess"}, "Did you mean 'ties'"),
        ({"parameters": {"densty": 0.5}}, "Did you mean 'density'"),
        ({"parameters": {"density": 1.5}}, r"must be in \(0, 1\]"),
        ({"parameters": {"density": [0.5, 0.0]}}, r"must be in \(0, 1\]"),
        ({"parameters": {"weight": "heavy"}}, "takes a float"),
        ({"modelz": []}, "unknown key"),
    ],
)
def test_bad_recipes_are_refused_with_a_clear_error(demo_family, change, message):
    config = recipe(demo_family, "ties", [{"weight": 1.0}]).to_mergekit() | change
    with pytest.raises(MergeConfigError, match=message):
        Recipe.from_mergekit(config)


def test_nan_in_a_checkpoint_is_refused_naming_model_and_tensor(demo_family, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(demo_family / "models" / "add", broken)
    state = load_file(broken / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    rec = Recipe(
        "task_arithmetic",
        (ModelEntry(str(broken), (("weight", 1.0),)),),
        base_model=str(demo_family / "models" / "base"),
    )
    merger = Merger.for_recipe(rec)
    with pytest.raises(CheckpointError, match=r"broken: tensor 'model.layers.1.mlp.up_proj.weight' holds 1 NaN"):
        merger.merge_into(load_live_model(merger), rec)


def test_della_epsilon_out_of_range_is_refused(demo_family, demo_merger, live):
    rec = recipe(demo_family, "della", [{"weight": 1.0, "density": 0.9, "epsilon": 0.2}])
    with pytest.raises(MergeConfigError, match="epsilon"):
        demo_merger[False].merge_into(live, rec)


def test_per_layer_groups_give_each_group_of_layers_its_value(gpt2_family):
    """Three GPT-2 layers in groups of two: layers 0-1 take the endpoint whole, layer 2 the base."""
    models = gpt2_family / "models"
    weight = per_layer([1.0, 0.0], num_layers=3, group_size=2)
    assert weight == (1.0, 1.0, 0.0)
    rec = Recipe(
        "task_arithmetic", (ModelEntry(str(models / "a"), (("weight", weight),)),), base_model=str(models / "base")
    )
    merger = Merger.for_recipe(rec)
    live = load_live_model(merger)
    merger.merge_into(live, rec)
    base, a = Checkpoint.open(models / "base"), Checkpoint.open(models / "a")
    for name in merger.pool.tensor_names:
        layer = merger.pool.groups[name].layer
        expect = a if layer in (0, 1) or layer is None else base  # outside the layers: t = 0, the first value
        torch.testing.assert_close(live.state_dict()[name], expect.tensor(name), rtol=1e-6, atol=1e-7, msg=name)
    with pytest.raises(MergeConfigError, match="make 2 groups"):
        per_layer([1.0, 0.5, 0.0], num_layers=3, group_size=2)


def test_a_missing_gpu_is_a_clear_error(demo_family):
    """Runs where CUDA is absent (as on CI); on a GPU machine the device is simply used."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MergeConfigError, match="no CUDA GPU"):
        Merger.for_recipe(recipe(demo_family, "ties", [{"weight": 1.0}]), device="cuda")


def test_recipes_from_flat_parameters(demo_family):
    """What a search decodes: one value per model or one for all, shared values once."""
    models = [str(demo_family / "models" / e) for e in ENDPOINTS]
    base = str(demo_family / "models" / "base")
    rec = Recipe.from_params(
        "ties", models, {"weight": [0.2, 0.5, 1.0], "density": 0.4, "lambda": 0.8}, base_model=base
    )
    assert rec == recipe(
        demo_family,
        "ties",
        [{"weight": 0.2, "density": 0.4}, {"weight": 0.5, "density": 0.4}, {"weight": 1.0, "density": 0.4}],
        **{"lambda": 0.8},
    )
    with pytest.raises(MergeConfigError, match=r"one value or one per endpoint \(3\)"):
        Recipe.from_params("ties", models, {"weight": [1.0, 2.0]}, base_model=base)
    with pytest.raises(MergeConfigError, match="needs parameter 'weight'"):
        Recipe.from_params("ties", models, {"density": 0.5}, base_model=base)


@pytest.mark.parametrize("name", ["base", "add", "greek"])
def test_a_recipe_of_one_whole_model_gives_that_model_bit_for_bit(demo_family, demo_merger, live, name):
    """The test phase's endpoint rows merge one model at weight 1: that must be the checkpoint
    itself, not ``base + (endpoint - base)`` rounded in fp32."""
    from evomerge.fitness.respondents import single_model

    demo_merger[True].merge_into(live, single_model(str(demo_family / "models" / name)))
    checkpoint = Checkpoint.open(demo_family / "models" / name)
    for tensor in checkpoint.tensor_names:
        assert torch.equal(live.state_dict()[tensor], checkpoint.tensor(tensor)), tensor
