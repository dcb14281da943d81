"""Per-candidate merge cost: our engine vs mergekit's ``merge_tensors`` vs a memory copy.

Two pools, each a base plus 3 endpoints:
- synthetic: a Llama-shaped model whose every matrix is 4096x4096 (2 layers, ~235M
  parameters), endpoints = base + small noise, saved as safetensors in a temp dir;
- the demo family (1.35M parameters).

For ties, dare_ties, task_arithmetic, linear and slerp it measures, in the same run:
- ours: ``Merger.merge_into`` on the whole pool (median of ``--repeat`` candidates);
- the floor: ``torch.clone`` of every tensor that a merge writes, best of all the clones
  timed in the run (a clone's fresh pages fault or not, as glibc's mmap threshold adapts,
  which moves it 3-5x between calls here), plus ``copy_`` into existing memory;
- mergekit: ``merge_tensors`` on the same inputs. On the synthetic pool only the first
  ``--mergekit-tensors`` 4096x4096 tensors are merged by mergekit (a TIES candidate costs
  it ~6 s per tensor here) and ours is timed on those same tensors for the ratio;
- precompute: the first merge of a run (the cache of every model's tensors, the
  magnitude histograms, the DARE level tables) and the resident memory it adds; peak
  RSS of the process at the end. ``bench/scale.py`` measures the tiers at 0.5B in bf16.

Usage: ``python bench/merge_speed.py [--mergekit-tensors 2] [--repeat 3] [--skip-synthetic]``.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mergekit.merge_methods.api import merge_tensors
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.demo import build_demo_family
from evomerge.merge import Merger, Recipe
from evomerge.merge.run import load_live_model

#: ``:TIER`` runs the method with the cache in that tier (default: the one ``auto`` picks).
METHODS = ("ties", "dare_ties", "task_arithmetic", "linear", "slerp")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_synthetic(root: Path) -> list[Path]:
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=4096,
        intermediate_size=4096,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = []
    for i, name in enumerate(("base", "e1", "e2", "e3")):
        with torch.no_grad():
            for k, p in model.state_dict().items():
                p.copy_(base[k] + (0.01 * torch.randn_like(p) if i else 0))
        model.save_pretrained(root / name)
        paths.append(root / name)
    del model, base
    return paths


def recipe(method: str, base: Path, endpoints: list[Path]) -> Recipe:
    weights = (0.6, 0.3, 0.9)
    models: list[dict] = []
    config: dict = {"merge_method": method}
    if method == "linear":
        models = [
            {"model": str(p), "parameters": {"weight": w}}
            for p, w in zip([base, *endpoints], (0.4, *weights), strict=True)
        ]
    elif method == "slerp":
        config["base_model"] = str(base)
        models = [{"model": str(endpoints[0])}]
        config["parameters"] = {"t": 0.4}
    else:
        config["base_model"] = str(base)
        density = {} if method == "task_arithmetic" else {"density": 0.5}
        models = [
            {"model": str(p), "parameters": {"weight": w, **density}} for p, w in zip(endpoints, weights, strict=True)
        ]
    config["models"] = models
    return Recipe.from_mergekit(config)


def time_ours(merger: Merger, model: torch.nn.Module, rec: Recipe, repeat: int) -> tuple[float, float, float]:
    """(first call incl. precompute, steady per-candidate median, resident MB the first call added)."""
    before = rss_mb()
    t0 = time.perf_counter()
    merger.merge_into(model, rec)
    first = time.perf_counter() - t0
    added = rss_mb() - before
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        merger.merge_into(model, rec)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), added


def time_clone(model: torch.nn.Module, names: list[str], repeat: int) -> float:
    """Clone every written tensor; best of ``repeat + 2`` runs after a warm-up."""
    state = dict(model.named_parameters())
    times = []
    for _ in range(repeat + 3):
        t0 = time.perf_counter()
        for n in names:
            state[n].detach().clone()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def time_copy(model: torch.nn.Module, names: list[str], repeat: int) -> float:
    """Copy every written tensor into memory that exists: bandwidth alone, no page faults."""
    state = dict(model.named_parameters())
    scratch = {n: torch.empty_like(state[n]) for n in names}
    times = []
    for _ in range(repeat + 3):
        t0 = time.perf_counter()
        for n in names:
            scratch[n].copy_(state[n])
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def time_mergekit(merger: Merger, rec: Recipe, names: list[str]) -> float:
    total = 0.0
    for name in names:
        tensors, kwargs = merger.mergekit_arguments(rec, name)
        t0 = time.perf_counter()
        merge_tensors(tensors, rec.method, **kwargs)
        total += time.perf_counter() - t0
    return total


def time_ours_on(merger: Merger, model: torch.nn.Module, rec: Recipe, names: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        merger.merge_into(model, rec, tensors=names)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_pool(label: str, paths: list[Path], mergekit_tensors: int | None, repeat: int, methods: list[str]) -> dict:
    base, endpoints = paths[0], paths[1:]
    results: dict = {}
    floors: list[float] = []
    copies: list[float] = []
    for label_method in methods:
        method, _, tier = label_method.partition(":")
        rec = recipe(method, base, endpoints)
        merger = Merger.for_recipe(rec, tier=tier or "auto")
        model = load_live_model(merger)
        names = merger.pool.tensor_names
        first, steady, added = time_ours(merger, model, rec, repeat)
        floors.append(time_clone(model, names, repeat))
        copies.append(time_copy(model, names, repeat))
        big = [n for n in names if merger.pool.base.shape(n) == (4096, 4096)]
        sample = names if mergekit_tensors is None else big[:mergekit_tensors]
        mergekit = time_mergekit(merger, rec, sample)
        ours_sample = steady if sample == names else time_ours_on(merger, model, rec, sample, repeat)
        results[label_method] = {
            "ours_s": round(steady, 4),
            "mergekit_s_on_sample": round(mergekit, 3),
            "ours_s_on_sample": round(ours_sample, 4),
            "speedup_vs_mergekit": round(mergekit / ours_sample, 1),
            "sample_tensors": len(sample),
            "precompute_s": round(first - steady, 2),
            "precompute_mb": round(added, 0),
        }
        r = results[label_method]
        print(
            f"[{label}] {label_method:15s} ours {steady:7.3f}s  "
            f"mergekit {mergekit:7.3f}s vs ours {ours_sample:7.4f}s on {len(sample)} tensors "
            f"({r['speedup_vs_mergekit']:6.1f}x)  precompute {r['precompute_s']:6.2f}s +{added:6.0f} MB"
        )
        del merger, model
    floor, copy = min(floors), min(copies)
    print(f"[{label}] floor: clone {floor:.4f}s (best of the run), copy_ into existing memory {copy:.4f}s")
    for method, r in results.items():
        r["vs_clone_floor"] = round(r["ours_s"] / floor, 2)
        r["vs_copy"] = round(r["ours_s"] / copy, 2)
        print(f"[{label}] {method:15s} {r['vs_clone_floor']:6.1f}x the clone floor, {r['vs_copy']:6.1f}x the copy")
    results["clone_floor_s"] = round(floor, 4)
    results["copy_s"] = round(copy, 4)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mergekit-tensors", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    args = parser.parse_args()
    methods = args.methods.split(",")
    print(f"torch threads: {torch.get_num_threads()}")
    family = build_demo_family()
    demo = run_pool(
        "demo", [family / "models" / n for n in ("base", "add", "greek", "cyrillic")], None, args.repeat, methods
    )
    synthetic = {}
    params = 0
    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = build_synthetic(Path(tmp))
            from evomerge.models import Checkpoint

            ckpt = Checkpoint.open(paths[0])
            params = sum(torch.Size(ckpt.shape(n)).numel() for n in ckpt.tensor_names)
            print(f"synthetic pool: {params / 1e6:.0f}M parameters per model, built in {time.perf_counter() - t0:.0f}s")
            synthetic = run_pool("synthetic", paths, args.mergekit_tensors, args.repeat, methods)
    print(
        json.dumps(
            {
                "bench": "merge_speed",
                "synthetic_params": params,
                "synthetic": synthetic,
                "demo": demo,
                "peak_rss_mb": round(peak_rss_mb()),
            }
        )
    )


if __name__ == "__main__":
    main()
