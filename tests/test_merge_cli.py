"""`evomerge merge` against `mergekit-yaml` on the same YAML, on two architectures: the
demo family (Llama) and a random-weight GPT-2 family built here (tied embeddings,
``transformer.h.N`` names). Both write HF checkpoints; their tensors must agree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import IncompatibleModelsError
from evomerge.merge import merge_config
from evomerge.models.save import OutputExistsError
from helpers import cli

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# `mergekit-yaml`, with mergekit's magnitude sorts made stable: equal magnitudes at a
# TIES/breadcrumbs cut are then kept in index order, as evomerge keeps them (torch's
# default order of equal values is unspecified; test_merge_engine shows that only
# entries at the cut's magnitude differ otherwise). Everything else is mergekit's CLI.
STABLE_MERGEKIT_YAML = """
import sys, torch, mergekit.sparsify
class StableSorts:
    def __getattr__(self, name): return getattr(torch, name)
    def argsort(self, x, **kwargs): return torch.argsort(x, stable=True, **kwargs)
    def sort(self, x, **kwargs): return torch.sort(x, stable=True, **kwargs)
mergekit.sparsify.torch = StableSorts()
from mergekit.scripts.run_yaml import main
sys.exit(main())
"""


class StableSorts:
    """``torch`` as mergekit.sparsify sees it, with stable sorts (STABLE_MERGEKIT_YAML's, in this process)."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)

    def argsort(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.argsort(x, stable=True, **kwargs)  # type: ignore[call-overload]

    def sort(self, x: torch.Tensor, **kwargs: object) -> object:
        return torch.sort(x, stable=True, **kwargs)  # type: ignore[call-overload]


def run_mergekit_yaml(config: Path, out: Path, *flags: str, stable: bool = True, process: bool = False) -> None:
    """mergekit-yaml's own command (its click ``main``) on ``config``: in this process, or
    with ``process=True`` as the installed console script in a process of its own.
    ``stable=False``: stock mergekit (what a bf16 merge, which runs mergekit's own kernels in
    evomerge too, is compared with)."""
    if process:
        program = (
            [sys.executable, "-c", STABLE_MERGEKIT_YAML]
            if stable
            else [str(Path(sys.executable).parent / "mergekit-yaml")]
        )
        subprocess.run([*program, str(config), str(out), *flags], check=True, capture_output=True, timeout=600)
        return
    import mergekit.sparsify
    from mergekit.scripts.run_yaml import main

    saved = mergekit.sparsify.torch
    if stable:
        mergekit.sparsify.torch = StableSorts()
    try:
        main.main([str(config), str(out), *flags], standalone_mode=False)
    finally:
        mergekit.sparsify.torch = saved


def assert_same_checkpoint(ours: Path, theirs: Path) -> None:
    a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        bf16 = a[name].dtype == torch.bfloat16  # both round the same fp32 values: at most one ulp apart
        tol = {"rtol": 8e-3, "atol": 1e-5} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(a[name], b[name], **tol, msg=name)


def configs(root: Path, base: str, others: list[str]) -> list[dict]:
    m = [str(root / o) for o in others]
    return [
        {
            "merge_method": "ties",
            "base_model": str(root / base),
            "models": [
                {"model": m[0], "parameters": {"weight": [0.2, 1.0], "density": 0.5}},
                {
                    "model": m[1],
                    "parameters": {"weight": -0.3, "density": [{"filter": "attn", "value": 0.1}, {"value": 0.9}]},
                },
            ],
            "parameters": {"normalize": False, "lambda": 0.7},
            "dtype": "float32",
        },
        {
            "merge_method": "task_arithmetic",
            "base_model": str(root / base),
            "models": [
                {"model": m[0], "parameters": {"weight": [1.0, 0.0, 0.5]}},
                {"model": m[1], "parameters": {"weight": 0.4}},
            ],
            "dtype": "float32",
        },
        {
            "merge_method": "dare_linear",  # random: compared at density 1, where DARE keeps everything
            "base_model": str(root / base),
            "models": [{"model": m[0], "parameters": {"weight": 0.7}}, {"model": m[1], "parameters": {"weight": 0.6}}],
            "dtype": "float32",
            "out_dtype": "bfloat16",
        },
        {
            "merge_method": "slerp",
            "base_model": str(root / base),
            "models": [{"model": str(root / base)}, {"model": m[0]}],
            "parameters": {"t": [{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.4}]},
            "dtype": "float32",
        },
    ]


@pytest.mark.parametrize("family", ["demo", "gpt2"])
def test_evomerge_merge_equals_mergekit_yaml(family, demo_family, gpt2_family, tmp_path):
    if family == "demo":
        root, base, others = demo_family / "models", "base", ["add", "greek"]
    else:
        root, base, others = gpt2_family / "models", "base", ["a", "b"]
    for i, config in enumerate(configs(root, base, others)):
        path = write_config(tmp_path / f"{i}.yml", config)
        ours = merge_config(path, tmp_path / f"ours{i}")
        # the installed console script once (a smoke test of the real command), its main in-process after
        run_mergekit_yaml(path, tmp_path / f"theirs{i}", process=i == 0 and family == "demo")
        assert_same_checkpoint(ours, tmp_path / f"theirs{i}")
        assert AutoModelForCausalLM.from_pretrained(ours) is not None
        assert AutoTokenizer.from_pretrained(ours) is not None
        assert yaml.safe_load((ours / "mergekit_config.yml").read_text())["merge_method"] == config["merge_method"]
        assert "```yaml" in (ours / "README.md").read_text()


def test_slices_configs_are_run_by_mergekit(demo_family, tmp_path):
    """Passthrough layer stacking changes the layer count: mergekit's run_merge does it."""
    root = demo_family / "models"
    config = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(root / "add"), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(root / "greek"), "layer_range": [1, 2]}]},
        ],
        "dtype": "float32",
    }
    out = merge_config(write_config(tmp_path / "s.yml", config), tmp_path / "stacked")
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3


def test_cli_refuses_a_non_empty_output_dir_unless_forced(demo_family, tmp_path):
    config = write_config(tmp_path / "c.yml", configs(demo_family / "models", "base", ["add", "greek"])[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cmd = ["merge", str(config), "--out", str(out)]
    refused = cli(*cmd)
    assert refused.returncode == 2
    assert "not empty" in refused.stdout and "--force" in refused.stdout
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputExistsError):
        merge_config(config, out)
    forced = cli(*cmd, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()


def test_two_architectures_are_refused(demo_family, gpt2_family, tmp_path):
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(demo_family / "models" / "base"),
        "models": [{"model": str(gpt2_family / "models" / "a"), "parameters": {"weight": 1.0}}],
    }
    with pytest.raises(IncompatibleModelsError, match="different architectures"):
        merge_config(write_config(tmp_path / "x.yml", config), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("source", ["base", "add_ext", "truncate"])
def test_different_vocabularies_merge_as_mergekit_aligns_them(source, demo_family, extended_vocab, tmp_path):
    models = demo_family / "models"
    config = {
        "merge_method": "ties",
        "base_model": str(models / "base"),
        "models": [
            {"model": str(extended_vocab), "parameters": {"weight": 0.8, "density": 0.6}},
            {"model": str(models / "greek"), "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "dtype": "float32",
    }
    flags = []
    if source == "truncate":
        config["evomerge"] = {"unsafe_truncate_embeddings": True}  # mergekit ignores this key ...
        flags = ["--unsafe-truncate-embeddings"]  # ... and takes it as a flag
    else:
        config["tokenizer_source"] = "base" if source == "base" else str(extended_vocab)
    path = write_config(tmp_path / "v.yml", config)
    ours = merge_config(path, tmp_path / "ours")
    run_mergekit_yaml(path, tmp_path / "theirs", *flags)
    assert_same_checkpoint(ours, tmp_path / "theirs")
    merged = AutoModelForCausalLM.from_pretrained(ours)
    rows = 115 if source == "add_ext" else 113
    assert merged.get_input_embeddings().weight.shape[0] == rows == len(AutoTokenizer.from_pretrained(ours))


def test_different_vocabularies_without_an_option_fail_naming_it(demo_family, extended_vocab, tmp_path):
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(demo_family / "models" / "base"),
        "models": [{"model": str(extended_vocab), "parameters": {"weight": 1.0}}],
    }
    with pytest.raises(IncompatibleModelsError, match="tokenizer_source"):
        merge_config(write_config(tmp_path / "v.yml", config), tmp_path / "out")


def test_a_failed_write_loses_nothing_and_leaves_no_temp_dir(tmp_path):
    from evomerge.models.save import write_atomically

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def crash(tmp: Path) -> None:
        (tmp / "half.bin").write_text("partial")
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(out, crash, force=True)
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or backup left
    write_atomically(out, lambda tmp: (tmp / "new.txt").write_text("new"), force=True)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "slerp"])
def test_dtype_bfloat16_computes_in_bf16_as_mergekit_yaml_does(method, demo_family, tmp_path, capsys):
    """``dtype: bfloat16`` merges in bf16 (TIES and task arithmetic on evomerge's fast path, op for
    op as mergekit computes; slerp on mergekit's kernels), so the exported YAML rebuilds the same
    model under mergekit-yaml (its sorts stable; stock mergekit differs at equal magnitudes at a
    TIES cut only, reported). An fp32 merge rounded to bf16 differs in about 10% of the entries."""
    root = demo_family / "models"
    config = configs(root, "base", ["add", "greek"])[{"ties": 0, "task_arithmetic": 1, "slerp": 3}[method]]
    config = {**config, "dtype": "bfloat16"}
    path = write_config(tmp_path / "c.yml", config)
    ours, fp32 = (
        merge_config(path, tmp_path / "ours"),
        merge_config(
            write_config(tmp_path / "f.yml", {**config, "dtype": "float32", "out_dtype": "bfloat16"}), tmp_path / "fp32"
        ),
    )
    run_mergekit_yaml(path, tmp_path / "theirs")
    run_mergekit_yaml(path, tmp_path / "stock", stable=False)
    a, b = load_file(ours / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")
    c, d = load_file(fp32 / "model.safetensors"), load_file(tmp_path / "stock" / "model.safetensors")
    differ = sum(int((a[n] != b[n]).sum()) for n in a)
    stock = sum(int((a[n] != d[n]).sum()) for n in a)
    rounded = sum(int((c[n] != b[n]).sum()) for n in a)
    total = sum(t.numel() for t in a.values())
    with capsys.disabled():
        print(
            f"\n{method} dtype bfloat16: {differ / total:.4%} of entries differ from mergekit-yaml "
            f"({stock / total:.4%} from stock mergekit-yaml; fp32 compute rounded to bf16: {rounded / total:.2%})"
        )
    assert all(t.dtype == torch.bfloat16 for t in a.values())
    assert differ == 0
    assert stock < 0.01 * total and (stock == 0 or method == "ties")  # the sort's order of equal magnitudes
    assert rounded > 0  # the dtype matters: computing in fp32 would not rebuild the same model


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory, demo_family) -> Path:
    """The `add` model with pickled weights only: a .bin shard behind a safetensors-style index."""
    out = tmp_path_factory.mktemp("pickled") / "add_bin"
    shutil.copytree(demo_family / "models" / "add", out)
    state = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    torch.save(state, out / "pytorch_model-00001-of-00001.bin")
    index = {"metadata": {}, "weight_map": dict.fromkeys(state, "pytorch_model-00001-of-00001.bin")}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


def test_an_index_of_pickled_shards_needs_the_opt_in(pickled_model):
    from evomerge.errors import CheckpointError
    from evomerge.models import Checkpoint

    with pytest.raises(CheckpointError, match=r"points at pickled shards \(pytorch_model-00001-of-00001.bin\)"):
        Checkpoint.open(pickled_model)
    ckpt = Checkpoint.open(pickled_model, allow_pickle=True)
    assert torch.equal(ckpt.read("lm_head.weight"), ckpt.tensor("lm_head.weight"))


def test_a_slices_config_over_pickled_models_needs_the_opt_in(pickled_model, demo_family, tmp_path):
    from evomerge.errors import CheckpointError

    config = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(demo_family / "models" / "greek"), "layer_range": [0, 1]}]},
            {"sources": [{"model": str(pickled_model), "layer_range": [1, 2]}]},
        ],
        "dtype": "float32",
    }
    path = write_config(tmp_path / "s.yml", config)
    with pytest.raises(CheckpointError, match="pickled shards"):
        merge_config(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    refused = cli("merge", str(path), "--out", str(tmp_path / "out"))
    assert refused.returncode == 2 and "allow_pickle" in refused.stdout and "Traceback" not in refused.stderr


def test_a_dare_export_says_how_to_rebuild_the_exact_weights(demo_family, tmp_path, caplog):
    """mergekit-yaml draws its own DARE masks; the exported YAML and model card say so, and
    `evomerge merge` on the exported YAML rebuilds the same weights, bit for bit."""
    root = demo_family / "models"
    dare = {
        "merge_method": "dare_ties",
        "base_model": str(root / "base"),
        "models": [
            {"model": str(root / "add"), "parameters": {"weight": 0.8, "density": 0.5}},
            {"model": str(root / "greek"), "parameters": {"weight": 0.6, "density": 0.4}},
        ],
        "dtype": "float32",
    }
    out = merge_config(write_config(tmp_path / "dare.yml", dare), tmp_path / "first")
    exported = (out / "mergekit_config.yml").read_text()
    assert exported.startswith("# dare_ties drops entries at random: below density 1, mergekit-yaml draws other")
    assert "evomerge merge mergekit_config.yml" in " ".join(exported.split())
    assert "mergekit-yaml draws other masks" in " ".join((out / "README.md").read_text().split())
    assert "drops entries at random" in caplog.text
    again = merge_config(out / "mergekit_config.yml", tmp_path / "again")
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    ties = merge_config(write_config(tmp_path / "ties.yml", configs(root, "base", ["add", "greek"])[0]), tmp_path / "t")
    assert not (ties / "mergekit_config.yml").read_text().startswith("#")  # deterministic methods: no note
