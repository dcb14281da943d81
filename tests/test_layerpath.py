"""Layer paths in memory: exact against model A and against mergekit's passthrough, exported
as an ordinary checkpoint, searched as genes (the data-flow space)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate.decoding import StopCheck
from evomerge.evaluate.generation import GENERATION_ENGINES
from evomerge.merge.candidate import candidate_from_yaml
from evomerge.merge.layerpath import Hop, LayerPath
from evomerge.merge.pathexport import save_path
from evomerge.merge.pathmodel import PathMerger
from evomerge.merge.recipe import Recipe
from evomerge.merge.run import merge_config
from evomerge.search.pathspace import PathSpace

IDS = torch.tensor([[5, 9, 17, 3, 22, 8, 11, 4], [7, 7, 30, 2, 14, 19, 6, 1]])


def _family(request, name: str):
    root = request.getfixturevalue(name)
    models = root / "models"
    pair = ("add", "greek") if name == "demo_family" else ("a", "b")
    return str(models / pair[0]), str(models / pair[1])


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(params=["demo_family", "gpt2_family"])
def pair(request):
    return _family(request, request.param)


def test_identity_path_gives_model_a_exactly(pair):
    a, b = pair
    merger = PathMerger.open([a, b])
    reference = AutoModelForCausalLM.from_pretrained(a).eval()
    layers = merger.num_layers[a]
    merger.merge_into(merger.model, LayerPath((b), tuple(Hop(b, i) for i in range(layers))))  # another path first
    assert not torch.equal(_logits(merger.model), _logits(reference))
    model = merger.merge_into(merger.model, LayerPath.identity(a, layers))
    assert torch.equal(_logits(model), _logits(reference))
    # the path holds references: no parameter of the live model is new memory
    bank = {p.data_ptr() for m in (a, b) for layer in merger.layers[m] for p in layer.parameters()}
    heads = {p.data_ptr() for mods in merger.heads.values() for m in mods.values() for p in m.parameters()}
    assert {p.data_ptr() for p in model.parameters()} <= bank | heads


def test_repeated_block_equals_mergekit_passthrough(pair, tmp_path):
    a, b = pair
    merger = PathMerger.open([a, b])
    n = merger.num_layers[a]
    path = LayerPath(a, (Hop(a, 0), Hop(a, 1), Hop(b, 1), Hop(a, 1), *(Hop(a, i) for i in range(2, n))))
    ours = _logits(merger.merge_into(merger.model, path))
    out = merge_config(path.to_yaml(), tmp_path / "mk")  # slices: run by mergekit's own run_merge
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    assert theirs.config.num_hidden_layers == n + 2
    assert torch.equal(ours, _logits(theirs))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 5e-4), (torch.bfloat16, 0.15)])
def test_export_loads_as_an_ordinary_checkpoint(pair, tmp_path, dtype, atol):
    a, b = pair
    if dtype != torch.float32:  # the sources as bf16 checkpoints, as real 7B models come
        for name in ("a", "b"):
            model = AutoModelForCausalLM.from_pretrained(pair[name == "b"], dtype=dtype)
            model.save_pretrained(tmp_path / name)
            AutoTokenizer.from_pretrained(pair[name == "b"]).save_pretrained(tmp_path / name)
        a, b = str(tmp_path / "a"), str(tmp_path / "b")
    merger = PathMerger.open([a, b])
    n = merger.num_layers[a]
    hops = (Hop(b, 0), Hop(a, 1, 0.8), Hop(b, 1, 1.25), Hop(a, 1, 1.1), *(Hop(a, i, 0.9) for i in range(2, n)))
    path = LayerPath(a, hops)
    ours = _logits(merger.merge_into(merger.model, path)).float()
    out = save_path(merger, path, tmp_path / "path")
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    assert loaded.config.num_hidden_layers == len(hops) and next(loaded.parameters()).dtype == dtype
    # the scales folded into o_proj/down_proj equal the scaled stream up to the norms' eps
    gap = float((_logits(loaded).float() - ours).abs().max())
    print(f"export gap {dtype}: {gap:.2e}")
    assert gap <= atol, gap
    assert "layer path of" in (out / "README.md").read_text()
    # mergekit rebuilds the same tensors, bit for bit, from the exported config
    rebuilt = merge_config((out / "mergekit_config.yml").read_text(), tmp_path / "rebuilt")
    mine, theirs = load_file(out / "model.safetensors"), load_file(next(rebuilt.glob("*.safetensors")))
    theirs.pop("lm_head.weight", None) if "lm_head.weight" not in mine else None
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_every_engine_generates_through_a_repeated_layer(demo_family, tmp_path):
    a, b = (str(demo_family / "models" / m) for m in ("add", "greek"))
    merger = PathMerger.open([a, b])
    path = LayerPath(a, (Hop(a, 0), Hop(a, 1), Hop(b, 2), Hop(a, 1, 0.9), *(Hop(a, i) for i in range(2, 6))))
    model = merger.merge_into(merger.model, path)
    reference = AutoModelForCausalLM.from_pretrained(save_path(merger, path, tmp_path / "p")).eval()
    tokenizer = AutoTokenizer.from_pretrained(a)
    prompts = [tokenizer(p)["input_ids"] for p in ("12+7=", "ΑΒ+Γ=", "abc def", "3")]
    stop = StopCheck(tokenizer, ["\n"])
    expected = GENERATION_ENGINES["hf"]().decode(reference, prompts, 8, stop)
    # without a slot per hop, the repeated layer's two hops would overwrite one cache entry
    for engine in ("eager", "hf", "compiled"):
        assert GENERATION_ENGINES[engine]().decode(model, prompts, 8, stop) == expected, engine
    # another path, of another length, in the same live model: every engine follows it
    merger.merge_into(model, LayerPath.identity(b, 6))
    expected = GENERATION_ENGINES["hf"]().decode(AutoModelForCausalLM.from_pretrained(b).eval(), prompts, 8, stop)
    for engine in ("eager", "compiled"):
        assert GENERATION_ENGINES[engine]().decode(model, prompts, 8, stop) == expected, engine


def test_path_yaml_round_trips_and_is_told_from_a_recipe():
    path = LayerPath("m/a", (Hop("m/a", 0), Hop("m/b", 3, 0.75)))
    assert candidate_from_yaml(path.to_yaml()) == path
    assert LayerPath.from_yaml(path.to_yaml()).digest == path.digest
    recipe = Recipe.from_params("linear", ["m/a"], {"weight": 1.0})
    assert candidate_from_yaml(recipe.to_yaml()) == recipe
    assert path.folded_scales() == [1.0, 1 / 0.75]
    # a path that ends in another model closes on an empty slice of the head: mergekit takes the head from there
    assert path.to_mergekit()["slices"][-1] == {"sources": [{"model": "m/a", "layer_range": [0, 0]}]}
    from evomerge.errors import MergeConfigError

    with pytest.raises(MergeConfigError, match="a hop is"):
        LayerPath.from_yaml("evomerge:\n  path: {head: a, hops: [[a, two, 1.0]]}\n")


def test_path_space_starts_from_model_a_and_decodes_genes():
    space = PathSpace(["x/a", "x/b"], {"x/a": 3, "x/b": 3}, repeats=2, scales="matrix")
    assert space.n_var == 12 + 36
    assert space.decode(space.initial_x()) == LayerPath.identity("x/a", 3)
    x = np.full(space.n_var, 0.25)
    on = {g.name: k for k, g in enumerate(space.genes)}
    for name in ("on@0:a.0", "on@4:b.1", "on@7:a.1"):
        x[on[name]] = 0.9
    x[on["scale@a.0>b.1"]] = 1.0  # the top of the range: 1.5
    path = space.decode(x)
    assert path.hops == (Hop("x/a", 0), Hop("x/b", 1, 1.5), Hop("x/a", 1, 0.75))
    kept = PathSpace(["x/a", "x/b"], {"x/a": 3, "x/b": 3}, repeats=1, scales="slot", keep_first=1, keep_last=1)
    assert [h.layer for h in kept.decode(kept.initial_x()).hops] == [0, 1, 2]
    short = PathSpace(["x/a", "x/b"], {"x/a": 3, "x/b": 3}, scales="none", max_length=2)
    assert short.n_var == 12 and len(short.decode(np.ones(12)).hops) == 2
    assert short.decode(np.zeros(12)).hops == ()  # every slot off: a path still, scored, not a crash


def test_sources_of_another_architecture_or_width_are_refused(demo_family, gpt2_family, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.errors import MergeConfigError

    greek = str(demo_family / "models" / "greek")
    with pytest.raises(MergeConfigError, match="one architecture"):
        PathMerger.open([greek, str(gpt2_family / "models" / "a")])
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=113, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4))  # fmt: skip
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(MergeConfigError, match="hidden size 64"):
        PathMerger.open([greek, str(tmp_path / "narrow")])
    merger = PathMerger.open([greek])
    with pytest.raises(MergeConfigError, match="has 6 layers; the path asks for layer 9"):
        merger.merge_into(merger.model, LayerPath(greek, (Hop(greek, 9),)))
