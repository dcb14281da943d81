"""The merge tiers on a GPU: each tier's candidates equal the CPU merge, and what each costs.

On the bench's synthetic Llama family in bf16 (``bench/scale.py``: base + 3 endpoints,
0.5B parameters by default), for task_arithmetic, ties and dare_ties:

- the reference: the same recipes merged on the CPU (tier ``device``, the numba kernels);
- on the GPU, each tier: ``device`` (stacks in GPU memory), ``host`` (stacks in pinned
  CPU memory, each copied on a side stream while the previous one merges), ``disk``
  (read per candidate): the first merge (cache and per-run tables), the median of the
  others, ``torch.cuda.max_memory_allocated`` and the process's peak RSS, and how far
  the merged weights are from the CPU's (entries that differ, and the largest difference
  relative to the tensor's largest magnitude: a bf16 last-place rounding is <= 2**-7);
- the reference for speed, in the same process: a ``copy_`` of the live model's bytes.

Measured on an H100 (2026-11-27, 0.5B, 4 candidates): ties equal to the CPU's bit for
bit in every tier; task_arithmetic 0.026% of entries one bf16 rounding apart (fp32 sums in
another order); dare_ties 0.0005% of entries further apart (up to 0.057 of the tensor's
scale), likely where the sign election's sum of rescaled deltas is within rounding of
zero (not confirmed yet).

Without CUDA it prints one JSON line saying so and exits 0 (``make bench`` runs it
everywhere). Usage: ``python bench/cuda_tiers.py [--small] [--candidates 4] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scale import GiB, build_family, mergekit_config, peak_rss

METHODS = ("task_arithmetic", "ties", "dare_ties")


def merged_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """(entries that differ, the largest difference over the tensor's largest magnitude).

    Summing the same fp32 terms in another order can round an entry to the neighbouring
    bf16 value; near zero that can even flip its sign, so units in the last place of the
    entry itself say nothing there. Relative to the tensor's scale, a last-place rounding
    is at most 2**-7 (bf16 keeps 8 significant bits: its spacing in [1, 2) is 2**-7)."""
    a, b = a.float(), b.float()
    scale = float(a.abs().max()) or 1.0
    return int((a != b).sum()), float((a - b).abs().max()) / scale


def run_tier(family: Path, method: str, tier: str, device: str, n: int, reference: dict | None) -> dict:
    from evomerge.merge import Merger, Recipe
    from evomerge.merge.run import load_live_model

    recipes = [Recipe.from_mergekit(mergekit_config(method, family, s)) for s in range(n)]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    merger = Merger.for_recipe(recipes[0], device=device, tier=tier)
    model = load_live_model(merger)
    times, first_state = [], None
    for i, recipe in enumerate(recipes):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        merger.merge_into(model, recipe)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if i == 0:
            first_state = merged_state(model)
    params = list(model.parameters())
    scratch = torch.randn(max(p.numel() for p in params), device=params[0].device).to(params[0].dtype)
    copies = []
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for p in params:
            p.data.copy_(scratch[: p.numel()].view_as(p))
        if cuda:
            torch.cuda.synchronize()
        copies.append(time.perf_counter() - t)
    out = {
        "method": method,
        "tier": merger.tier,
        "device": device,
        "first_merge_s": round(times[0], 3),
        "merge_s": round(statistics.median(times[1:]), 4),
        "copy_s": round(min(copies), 4),
        "merge_over_copy": round(statistics.median(times[1:]) / min(copies), 1),
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / GiB, 2) if cuda else None,
        "rss_peak_gib": round(peak_rss() / GiB, 2),
    }
    if reference is not None:
        assert first_state is not None
        differ, worst = 0, 0.0
        for k, v in reference.items():
            d, w = difference(v, first_state[k])
            differ, worst = differ + d, max(worst, w)
        total = sum(v.numel() for v in reference.values())
        out.update({"differ_frac": differ / total, "max_err_over_scale": worst})
    del model, merger
    return out, first_state


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", type=Path, default=None)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"bench": "cuda_tiers", "skipped": "no CUDA device"}))
        return
    shape = "small" if a.small else "0.5b"
    family = build_family(a.family or Path.home() / ".cache" / "evomerge" / f"bench-scale-{shape}", shape)
    rows, checks = [], {}
    for method in a.methods.split(","):
        _, reference = run_tier(family, method, "device", "cpu", 2, None)
        for tier in ("device", "host", "disk"):
            row, _ = run_tier(family, method, tier, a.device, a.candidates, reference)
            rows.append(row)
            print(row, flush=True)
            # the same arithmetic in fp32 on another device: at most a last-place rounding apart
            checks[f"{method}_{tier}_rounding_only"] = row["max_err_over_scale"] <= 2**-7
            checks[f"{method}_{tier}_differ_below_1e-3"] = row["differ_frac"] < 1e-3
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(json.dumps({"bench": "cuda_tiers", "device": name, "shape": shape, "rows": rows, "checks": checks}))


if __name__ == "__main__":
    main()
