"""The model pool: lazy reading, grouping, and a clear error for every unmergeable set."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from evomerge.errors import CheckpointError, IncompatibleModelsError
from evomerge.models import Checkpoint, ModelPool, tensor_group
from evomerge.models import checkpoint as checkpoint_module

SPECIALISTS = ("add", "greek", "cyrillic")


def variant(src: Path, dst: Path, edit=None, config_edit=None) -> Path:
    """A copy of a checkpoint with its tensors (and config) edited."""
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    if edit:
        tensors = edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    if config_edit:
        config = json.loads((src / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def members(demo_family: Path) -> dict[str, Path]:
    return {name: demo_family / "models" / name for name in ("base", *SPECIALISTS)}


def test_pool_of_the_demo_family(members):
    pool = ModelPool.open(members["base"], [members[s] for s in SPECIALISTS])
    assert [m.name for m in pool.models] == [str(members[n]) for n in ("base", *SPECIALISTS)]
    assert pool.num_layers == 6
    assert pool.groups["model.layers.1.mlp.up_proj.weight"] == (1, "mlp")
    assert pool.groups["lm_head.weight"] == (None, "lm_head")
    eager = load_file(members["greek"] / "model.safetensors")
    greek = pool.endpoints[1]
    assert greek.tensor_names == sorted(eager)
    for name in eager:
        assert greek.shape(name) == tuple(eager[name].shape)
        assert torch.equal(greek.tensor(name), eager[name])


def test_gpt2_names_are_grouped():
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    groups = {name: tensor_group(name) for name in model.state_dict()}
    assert groups["transformer.h.2.attn.c_attn.weight"] == (2, "attention")
    assert groups["transformer.h.0.mlp.c_proj.weight"] == (0, "mlp")
    assert groups["transformer.h.1.ln_2.weight"] == (1, "norms")
    assert groups["transformer.wte.weight"] == (None, "embeddings")
    assert {g.layer for g in groups.values()} == {None, 0, 1, 2}


def test_two_architectures_are_refused(members, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=256, n_head=8, vocab_size=103)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(IncompatibleModelsError, match=r"model_type 'gpt2' but .* has 'llama'"):
        ModelPool.open(members["base"], [members["add"], tmp_path / "gpt2"])


def test_a_missing_tensor_is_named(members, tmp_path):
    broken = variant(
        members["add"], tmp_path / "add", edit=lambda t: {k: v for k, v in t.items() if "layers.1.mlp.up" not in k}
    )
    with pytest.raises(IncompatibleModelsError, match=r"'model.layers.1.mlp.up_proj.weight' is missing from .*add"):
        ModelPool.open(members["base"], [broken])


def _replaced(name: str, shape: tuple[int, ...]):
    return lambda tensors: {**tensors, name: torch.zeros(shape)}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_replaced("model.layers.0.mlp.up_proj.weight", (600, 256)), r"up_proj.weight: shape \(600, 256\) in .*add"),
        (_replaced("model.embed_tokens.weight", (110, 128)), r"vocabulary sizes differ .*113.* 110"),
    ],
    ids=["shape", "vocab"],
)
def test_a_shape_mismatch_is_named(members, tmp_path, edit, message):
    broken = variant(members["add"], tmp_path / "add", edit=edit)
    with pytest.raises(IncompatibleModelsError, match=message):
        ModelPool.open(members["base"], [broken])


def test_a_different_tokenizer_of_the_same_size_is_refused(members, tmp_path):
    other = variant(members["add"], tmp_path / "add")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(IncompatibleModelsError, match="different tokenizers"):
        ModelPool.open(members["base"], [other])


def test_pickled_weights_need_an_opt_in(members, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(members["add"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"allow_pickle=True"):
        Checkpoint.open(pickled)
    opened = Checkpoint.open(pickled, allow_pickle=True)
    assert torch.equal(opened.tensor("lm_head.weight"), Checkpoint.open(members["add"]).tensor("lm_head.weight"))


def test_bad_paths_get_clear_errors(members, tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        Checkpoint.open(tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        Checkpoint.open(tmp_path / "nope" / "deeper")
    with pytest.raises(IncompatibleModelsError, match="listed twice"):
        ModelPool.open(members["base"], [members["add"], members["add"]])
    with pytest.raises(IncompatibleModelsError, match="at least one endpoint"):
        ModelPool.open(members["base"], [])


def test_hub_ids_are_downloaded(members, monkeypatch):
    """The hub cannot be reached here, so its download call is replaced by a stand-in
    that serves a local copy; what is tested is that a hub id takes that path."""
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        assert "*.safetensors" in allow_patterns and not any(p.endswith(".bin") for p in allow_patterns)
        return str(members["add"])

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ckpt = checkpoint_module.Checkpoint.open("someone/add-model", revision="main")
    assert calls == [("someone/add-model", "main")] and "lm_head.weight" in ckpt.tensor_names


def test_a_model_that_needs_its_own_code_is_refused_unless_trusted(members, tmp_path):
    """config.json with auto_map (or an unknown model_type) means loading runs the repository's code."""
    custom = variant(
        members["add"], tmp_path / "custom", config_edit=lambda c: c.update(auto_map={"AutoConfig": "x.X"})
    )
    with pytest.raises(CheckpointError, match=r"auto_map.*models\.trust_remote_code: true"):
        ModelPool.open(members["base"], [custom])
    unknown = variant(members["add"], tmp_path / "unknown", config_edit=lambda c: c.update(model_type="mystery"))
    with pytest.raises(CheckpointError, match="model_type 'mystery'"):
        Checkpoint.open(unknown)
    pool = ModelPool.open(members["base"], [custom], trust_remote_code=True)
    assert pool.endpoints[0].trust_remote_code and pool.endpoints[0].tensor_names == pool.base.tensor_names


def test_hub_ids_are_fetched_at_their_revision_and_code_only_when_trusted(members, monkeypatch):
    """The hub cannot be reached here: snapshot_download is replaced by a stand-in that
    records its arguments and answers with a local model."""
    import huggingface_hub

    calls: list[tuple[str, str | None, list[str]]] = []

    def fake_snapshot_download(repo_id: str, revision: str | None = None, allow_patterns=()) -> str:
        calls.append((repo_id, revision, list(allow_patterns)))
        return str(members["base"] if repo_id == "org/base" else members["add"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ModelPool.open("org/base", ["org/math"], revision={"org/math": "v1.2"})
    assert [(c[0], c[1]) for c in calls] == [("org/base", None), ("org/math", "v1.2")]
    assert all("*.py" not in c[2] for c in calls)
    calls.clear()
    ModelPool.open("org/base", ["org/math"], revision="abc123", trust_remote_code=True)
    assert [(c[1], "*.py" in c[2]) for c in calls] == [("abc123", True), ("abc123", True)]


@pytest.mark.parametrize(
    ("dtype", "said"),
    [("int64", "I64 weights (integers or bools)"), ("bool", "BOOL weights"), ("float8_e5m2", "F8_E5M2 weights (8-bit")],
)
def test_a_weight_that_is_not_floating_point_is_refused_by_name(members, tmp_path, dtype, said):
    """Cast into a merge, an integer weight made every model score 0.0 with no warning;
    an FP8 one crashed with a KeyError."""
    name = "model.layers.2.self_attn.v_proj.weight"
    odd = variant(members["add"], tmp_path / "odd", edit=lambda t: t | {name: t[name].to(getattr(torch, dtype))})
    with pytest.raises(CheckpointError, match=re.escape(f"odd: tensor '{name}' holds {said}")):
        ModelPool.open(members["base"], [odd])


def test_a_config_json_that_disagrees_with_the_tensors_is_refused(members, tmp_path):
    wide = variant(members["add"], tmp_path / "wide", config_edit=lambda c: c.update(intermediate_size=400))
    with pytest.raises(CheckpointError, match=r"wide: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape"):
        ModelPool.open(members["base"], [wide])
    heads = variant(members["add"], tmp_path / "heads", config_edit=lambda c: c.update(num_attention_heads=5))
    with pytest.raises(CheckpointError, match=r"heads: its config.json does not describe a model transformers can"):
        ModelPool.open(members["base"], [heads])
