"""The merge engine's memory model: tiers give bit-identical candidates, ``auto`` picks as
documented under a budget, an impossible budget fails before any tensor is read, and a
merge streamed to disk equals the in-memory one. Real checkpoints throughout: the demo
family (fp32 Llama), the random GPT-2 family, and a bf16 copy of the demo family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evomerge.errors import MemoryBudgetError, MergeConfigError
from evomerge.merge import Merger, Recipe, merge_config
from evomerge.merge.memory import EVAL_HEADROOM, hybrid_stacks, parse_size, plan
from evomerge.merge.run import load_live_model
from evomerge.models import Checkpoint, ModelPool
from evomerge.models.save import SafetensorsStream
from helpers import cli

W3 = [0.7, -0.4, 1.2]
CASES = [
    ("task_arithmetic", [{"weight": w} for w in W3], {}),
    ("ties", [{"weight": w, "density": d} for w, d in zip(W3, (0.1, 0.5, 0.9), strict=True)], {"rescale": True}),
    ("breadcrumbs_ties", [{"weight": w, "density": 0.4, "gamma": 0.05} for w in W3], {}),
    ("dare_ties", [{"weight": w, "density": 0.4} for w in W3], {}),
    ("della", [{"weight": w, "density": 0.5, "epsilon": 0.1} for w in W3], {}),
    ("slerp", [{}], {"t": 0.3}),
    ("model_stock", [{}, {}], {}),
]


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory, demo_family) -> Path:
    """The demo family saved in bf16: task vectors with few distinct magnitudes."""
    root = tmp_path_factory.mktemp("bf16")
    for name in ("base", "add", "greek", "cyrillic"):
        shutil.copytree(demo_family / "models" / name, root / name)
        file = root / name / "model.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
        config = json.loads((root / name / "config.json").read_text())
        config["dtype"] = "bfloat16"
        (root / name / "config.json").write_text(json.dumps(config))
    return root


def _models(family: str, demo_family: Path, gpt2_family: Path, bf16_family: Path) -> tuple[Path, list[str]]:
    if family == "demo":
        return demo_family / "models", ["add", "greek", "cyrillic"]
    if family == "bf16":
        return bf16_family, ["add", "greek", "cyrillic"]
    return gpt2_family / "models", ["a", "b", "c"]


def _recipe(root: Path, endpoints: list[str], method: str, per_model: list[dict], params: dict) -> Recipe:
    return Recipe.from_mergekit(
        {
            "merge_method": method,
            "base_model": str(root / "base"),
            "models": [{"model": str(root / e), "parameters": p} for e, p in zip(endpoints, per_model, strict=False)],
            "parameters": params,
            "evomerge": {"seed": 5},
        }
    )


@pytest.mark.parametrize("family", ["demo", "gpt2", "bf16"])
def test_every_tier_gives_the_device_tiers_candidates_bit_for_bit(family, demo_family, gpt2_family, bf16_family):
    root, endpoints = _models(family, demo_family, gpt2_family, bf16_family)
    first = _recipe(root, endpoints, "ties", [{"weight": 1.0}] * 3, {})
    mergers = {tier: Merger.for_recipe(first, tier=tier) for tier in ("device", "host", "disk")}
    disk = mergers["disk"].plan
    half = disk.device_needs["disk"] + disk.footprint.cache // 2  # a budget that holds about half the stacks
    mergers["hybrid"] = Merger.for_recipe(first, tier="hybrid", memory_budget=half)
    assert {t: m.tier for t, m in mergers.items()} == {t: t for t in ("device", "host", "disk", "hybrid")}
    assert 0 < len(mergers["hybrid"].plan.cached) < len(mergers["device"].pool.tensor_names)
    live = {t: load_live_model(m) for t, m in mergers.items()}
    for method, per_model, params in CASES:
        rec = _recipe(root, endpoints, method, per_model, params)
        states = {}
        for tier, merger in mergers.items():
            merger.merge_into(live[tier], rec)
            states[tier] = {n: p.detach().clone() for n, p in live[tier].state_dict().items()}
        base = Checkpoint.open(root / "base")
        changed = sum(
            not torch.equal(states["device"][n], base.tensor(n).to(states["device"][n].dtype))
            for n in base.tensor_names
        )
        assert changed > 0, method  # the merge did something
        for tier in ("host", "disk", "hybrid"):
            for name, tensor in states["device"].items():
                assert torch.equal(states[tier][name], tensor), (method, tier, name)
    assert mergers["device"].cache._stacks and not mergers["disk"].cache._stacks  # disk keeps no stacks
    assert set(mergers["hybrid"].cache._stacks) == set(mergers["hybrid"].plan.cached)  # hybrid: those it planned
    stack = next(iter(mergers["device"].cache._stacks.values()))
    assert stack.dtype == (torch.bfloat16 if family == "bf16" else torch.float32)  # the checkpoints' own dtype


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs_ties", "dare_ties", "slerp"])
def test_bf16_rows_widened_in_the_kernel_equal_task_vectors_formed_first(bf16_family, monkeypatch, method):
    """From bf16 checkpoints merged in fp32, the fused kernels read the rows' bf16 bits and
    widen and subtract as they go (``chunks(raw=True)``): every merged tensor, kept in fp32,
    equals bit for bit what the kernel gives when fed fp32 task vectors formed first."""
    _, per_model, params = next(c for c in CASES if c[0] == method)
    rec = _recipe(bf16_family, ["add", "greek", "cyrillic"], method, per_model, params)
    merger = Merger.for_recipe(rec, tier="device")

    def merged() -> dict[str, torch.Tensor]:
        out = {}
        for name in merger.merged_tensors:
            out[name] = torch.empty(merger.output_shape(name), dtype=torch.float32)
            merger.merge_tensor(rec, name, out[name])
        return out

    from evomerge.merge import fused

    as_array, chunks, used = fused.as_array, Merger.chunks, []

    def counted(t: torch.Tensor):
        used.append(t.dtype)
        return as_array(t)

    monkeypatch.setattr(fused, "as_array", counted)
    widened = merged()
    assert used and set(used) == {torch.bfloat16}  # the kernels read bits
    monkeypatch.setattr(Merger, "chunks", lambda self, *a, raw=False, **k: chunks(self, *a, **k))
    used.clear()
    formed = merged()
    assert used and set(used) == {torch.float32}  # the same kernels, fed formed task vectors
    base = Checkpoint.open(bf16_family / "base")
    assert any(not torch.equal(formed[n], base.tensor(n).float()) for n in formed)  # the merge did something
    for name, tensor in formed.items():
        assert torch.equal(widened[name], tensor), name


def test_auto_takes_the_fastest_tier_that_fits_the_budget(demo_family):
    pool = ModelPool.open(demo_family / "models" / "base", [demo_family / "models" / e for e in ("add", "greek")])
    cpu = torch.device("cpu")
    needs = plan(pool, cpu, tier="device", budget=10**12).device_needs
    f = plan(pool, cpu, budget=10**12).footprint
    # what each tier holds, from the checkpoints' headers (the demo family is fp32)
    assert f.cache == 3 * 4 * sum(pool.base.numel(n) for n in pool.tensor_names)
    assert needs["device"] - needs["disk"] == f.cache - f.largest_stack
    assert needs["disk"] == f.live + EVAL_HEADROOM + f.work + f.tables + f.largest_stack
    assert plan(pool, cpu, budget=needs["device"]).tier == "device"
    chosen = plan(pool, cpu, budget=needs["device"] - 1)  # all but a little fits: hybrid keeps what does
    assert chosen.tier == "hybrid" and "device needs" in chosen.reason and "reads the rest" in chosen.describe()
    assert needs["disk"] + chosen.cached_bytes <= needs["device"] - 1 and chosen.cached_bytes > f.cache / 2
    assert plan(pool, cpu, budget=needs["disk"] + f.largest_stack - 1).tier in ("hybrid", "disk")
    assert plan(pool, cpu, budget=needs["disk"]).tier == "disk"
    with pytest.raises(MemoryBudgetError, match=r"even the disk tier needs .* merge.memory_budget"):
        plan(pool, cpu, budget=needs["disk"] - 1)
    with pytest.raises(MemoryBudgetError, match="merge tier device needs"):
        plan(pool, cpu, tier="device", budget=needs["device"] - 1)
    # a one-off merge streamed to disk plans no live model and no evaluation headroom
    streamed = plan(pool, cpu, tier="disk", budget=10**12, live=False).device_needs["disk"]
    assert streamed == needs["disk"] - f.live - EVAL_HEADROOM


def test_the_hybrid_tier_reads_only_the_stacks_it_does_not_keep(demo_family):
    """Per candidate the hybrid tier reads from the checkpoints only what it does not keep,
    so with about half the stacks kept it reads about half the disk tier's bytes."""
    rec = _recipe(demo_family / "models", ["add", "greek"], "ties", [{"weight": 1.0, "density": 0.5}] * 2, {})
    disk = Merger.for_recipe(rec, tier="disk")
    half = disk.plan.device_needs["disk"] + disk.plan.footprint.cache // 2
    hybrid = Merger.for_recipe(rec, tier="hybrid", memory_budget=half)
    assert 0.4 < hybrid.plan.cached_bytes / disk.plan.footprint.cache <= 0.5
    read = {}
    for name, merger in (("disk", disk), ("hybrid", hybrid)):
        model = load_live_model(merger)
        merger.merge_into(model, rec)  # the first candidate reads every stack once
        first = merger.cache.bytes_read
        merger.merge_into(model, rec)
        read[name] = merger.cache.bytes_read - first
    assert read["disk"] == disk.plan.footprint.cache  # everything, again
    assert read["hybrid"] == disk.plan.footprint.cache - hybrid.plan.cached_bytes  # only what it does not keep
    kept = hybrid_stacks({"a": 5, "b": 3, "c": 2, "d": 1}, 6)
    assert kept == ("a", "d")  # largest first, then what still fits


def test_an_impossible_budget_fails_before_any_tensor_is_read(demo_family, monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("a tensor was read before the budget was checked")

    monkeypatch.setattr(Checkpoint, "read", read)
    monkeypatch.setattr(Checkpoint, "tensor", read)
    rec = _recipe(demo_family / "models", ["add"], "ties", [{"weight": 1.0, "density": 0.5}], {})
    with pytest.raises(MemoryBudgetError, match="does not fit"):
        Merger.for_recipe(rec, memory_budget="1MB")


@pytest.mark.slow
def test_a_run_over_its_budget_exits_2_with_the_numbers(demo_family, tmp_path):
    config = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
    done = cli(
        "run", str(config), "--run-dir", str(tmp_path / "run"), "--set", "merge.memory_budget=20MB", "--no-progress"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not fit" in done.stdout and "GiB" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


@pytest.mark.parametrize(
    ("text", "size"), [("24GB", 24 * 10**9), ("80GiB", 80 * 2**30), ("512 MiB", 2**29), (1000, 1000)]
)
def test_memory_sizes_are_read_with_their_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["24 parsecs", "-3GB", "", 0])
def test_a_bad_memory_size_is_refused(bad):
    with pytest.raises(MergeConfigError, match="memory size"):
        parse_size(bad)


def test_checkpoint_read_copies_the_tensor_without_mapping_it(demo_family):
    ckpt = Checkpoint.open(demo_family / "models" / "greek")
    for name in ckpt.tensor_names:
        read = ckpt.read(name)
        assert torch.equal(read, ckpt.tensor(name)) and read.dtype == ckpt.dtype(name)
    out = torch.empty(ckpt.numel(name), dtype=ckpt.dtype(name))
    assert torch.equal(ckpt.read(name, out=out).reshape(-1), ckpt.tensor(name).reshape(-1))


def test_a_streamed_checkpoint_in_shards_loads_as_the_live_merge(demo_family, tmp_path):
    """SafetensorsStream in several shards, with an index: from_pretrained reads it back."""
    root = demo_family / "models"
    rec = _recipe(root, ["add", "greek"], "ties", [{"weight": 0.8, "density": 0.4}] * 2, {})
    merger = Merger.for_recipe(rec)
    live = load_live_model(merger)
    merger.merge_into(live, rec)
    state = {n: live.state_dict()[n] for n in merger.pool.tensor_names}
    shutil.copy(root / "base" / "config.json", tmp_path)
    stream = SafetensorsStream(
        tmp_path, [(n, tuple(t.shape), t.dtype) for n, t in state.items()], max_shard_bytes=2**20
    )
    for name in reversed(list(state)):  # any order
        stream.write(name, state[name])
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "dare_linear"])
def test_evomerge_merge_streams_what_the_live_merge_holds(bf16_family, tmp_path, method):
    """The one-off merge (disk tier, written tensor by tensor) equals a live model's merge,
    in the checkpoints' dtype when the config names none."""
    per_model = [{"weight": 0.6, "density": 0.5}, {"weight": 0.9, "density": 0.3}]
    rec = _recipe(bf16_family, ["add", "greek"], method, per_model, {})
    out = merge_config(rec, tmp_path / "out")
    merger = Merger.for_recipe(rec)
    live = load_live_model(merger)
    merger.merge_into(live, rec)
    written = load_file(out / "model.safetensors")
    assert set(written) == set(merger.pool.tensor_names)
    for name, tensor in written.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, live.state_dict()[name]), name
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == method


def test_the_torch_scans_for_gpus_find_the_compiled_ones_masks(demo_family, bf16_family, monkeypatch):
    """The mask scans a GPU runs (torch: bincount, nonzero, int64 hashing) against the
    compiled CPU ones, here on the CPU: the same cuts, levels and L1 tables, so the same merge."""
    from evomerge.merge import masks

    root, endpoints = bf16_family, ["add", "greek", "cyrillic"]
    cases = [
        ("ties", [{"weight": w, "density": d} for w, d in zip(W3, (0.1, 0.5, 0.9), strict=True)], {"rescale": True}),
        ("breadcrumbs", [{"weight": w, "density": 0.4, "gamma": 0.05} for w in W3], {"rescale": True}),
        ("dare_ties", [{"weight": w, "density": 0.4} for w in W3], {}),
    ]
    results = {}
    for compiled in (True, False):
        monkeypatch.setattr(masks, "COMPILED_SCANS", compiled)
        merger = Merger.for_recipe(_recipe(root, endpoints, "ties", [{"weight": 1.0}] * 3, {}), fused=False)
        live = load_live_model(merger)
        for method, per_model, params in cases:
            merger.merge_into(live, _recipe(root, endpoints, method, per_model, params))
            results[(compiled, method)] = {n: p.detach().clone() for n, p in live.state_dict().items()}
    for method, _, _ in cases:
        for name, tensor in results[(True, method)].items():
            assert torch.equal(results[(False, method)][name], tensor), (method, name)
