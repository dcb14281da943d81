"""How fast the demo family evaluates: batched greedy generation vs one prompt at a time.

The reference (batch 1) is measured in the same run, so the ratio holds on a noisy
machine. Target: 100 items well under a second at the default batch size.
"""

from __future__ import annotations

import json
import time

import torch

from evomerge.demo import build_demo_family, load_member, read_manifest
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.evaluate import GenerationScorer


def items_per_second(model, tok, items, batch_size: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        GenerationScorer("exact", strict=True, max_new_tokens=12, batch_size=batch_size).score(model, tok, items)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def main() -> None:
    family = build_demo_family()
    manifest = read_manifest(family)
    model, tok = load_member(family, "base")
    items = load_jsonl(family / manifest["tasks"][manifest["target_task"]]["search"])
    items = as_task_items(items)
    sample = items[:: max(1, len(items) // 100)][:100]
    ref = items_per_second(model, tok, sample, batch_size=1, repeat=1)
    ours = items_per_second(model, tok, sample, batch_size=64)
    full = items_per_second(model, tok, items, batch_size=128, repeat=1)
    print(f"threads: {torch.get_num_threads()}  items: {len(sample)} (mixed skills)")
    print(f"batch 1   (reference): {ref:8.1f} items/s  -> 100 items in {100 / ref:.2f}s")
    print(f"batch 64  (ours)     : {ours:8.1f} items/s  -> 100 items in {100 / ours:.2f}s")
    print(f"batch 128 on the whole {len(items)}-item search split: {full:.1f} items/s")
    print(f"ratio batch64/batch1: {ours / ref:.1f}x")
    print(
        json.dumps(
            {
                "bench": "demo_eval_speed",
                "items_per_s_batch1": round(ref, 1),
                "items_per_s_batch64": round(ours, 1),
                "seconds_per_100_items": round(100 / ours, 3),
                "ratio": round(ours / ref, 2),
                "items_per_s_full_split": round(full, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
