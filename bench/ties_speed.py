"""TIES per candidate: mergekit's merge_tensors vs ours from once-per-run ranks.

One 4096x4096 fp32 tensor, 3 endpoints; the references (mergekit, and a clone of the
output bytes as the memory floor) are measured in the same run. The full engine
benchmark (bench/merge_speed.py, every method, a 200M-parameter pool) is issue 3's.
"""

from __future__ import annotations

import json
import time

import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.merge.kernels import ties
from evomerge.merge.sparsify import MagnitudeRanks


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    g = torch.Generator().manual_seed(0)
    n = 4096
    base = torch.randn(n, n, generator=g)
    ends = [base + 0.01 * torch.randn(n, n, generator=g) for _ in range(3)]
    weights, densities = [0.7, 1.0, 0.5], [0.3, 0.5, 0.7]
    params = {"weight": weights, "density": densities}

    t0 = time.perf_counter()
    deltas = [e - base for e in ends]
    ranks = [MagnitudeRanks(d) for d in deltas]
    precompute = time.perf_counter() - t0
    extra_bytes = sum(d.numel() * d.element_size() + r.rank.numel() * 4 for d, r in zip(deltas, ranks, strict=True))

    t_ref = best_of(lambda: merge_tensors([base, *ends], "ties", base_index=0, parameters=params), 1)
    t_ours = best_of(lambda: ties(base, deltas, ranks, weights, densities), 3)
    t_clone = best_of(lambda: base.clone(), 5)
    ours = ties(base, deltas, ranks, weights, densities)
    ref = merge_tensors([base, *ends], "ties", base_index=0, parameters=params)
    exact = bool(torch.allclose(ours, ref, rtol=1e-5, atol=1e-6))

    print(f"threads {torch.get_num_threads()}, tensor {n}x{n} fp32, 3 endpoints, exact match: {exact}")
    print(f"mergekit merge_tensors ties : {t_ref:8.3f} s per candidate")
    print(f"ours (ranks precomputed)    : {t_ours:8.3f} s per candidate  -> {t_ref / t_ours:.1f}x faster")
    print(f"clone of the output (floor) : {t_clone:8.3f} s            -> ours is {t_ours / t_clone:.1f}x the floor")
    print(f"once-per-run precompute     : {precompute:8.3f} s, {extra_bytes / 2**20:.0f} MiB (deltas + int32 ranks)")
    print(json.dumps({"bench": "ties_speed", "mergekit_s": round(t_ref, 3), "ours_s": round(t_ours, 3),
                      "speedup": round(t_ref / t_ours, 1), "clone_s": round(t_clone, 4),
                      "vs_floor": round(t_ours / t_clone, 1), "precompute_s": round(precompute, 2),
                      "precompute_mib": round(extra_bytes / 2**20), "exact": exact}))  # fmt: skip


if __name__ == "__main__":
    main()
