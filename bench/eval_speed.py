"""Evaluation speed on the demo family, same items, same run.

- ours: ``GenerationScorer`` on the live model at batch sizes 1, 16 and 64;
- lm-eval: the same task (a local YAML over the same items) through lm-eval's ``HFLM``
  loading the checkpoint from disk, as a per-candidate pipeline that saves merges does,
  timed with and without the load;
- ours through lm-eval: ``LMEvalScorer`` (the task built once, HFLM around the live model);
- strict exact match three ways (``settled_speed``), on the 900 "mix" search items and
  on 45 of them (a cheap IRT candidate's anchors), batch 128, for the base and each
  specialist: whole answers decoded then judged; decoded and cut once settled; and
  ``GenerationScorer.score`` (the forced check: one forward over prompt + answer, the
  rest decoded, cut). The same scores, the time of each (best of 3).

Targets (issue 4): batch 16 at least 3x batch 1; ours no slower than lm-eval at the
same batch size. Ends with one JSON line.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from evomerge.demo import build_demo_family, load_member, read_manifest
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.evaluate import GenerationScorer
from evomerge.evaluate.lmeval import LMEvalScorer, jsonl_task_yaml


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def settled_speed(family: Path) -> dict[str, dict[str, float]]:
    """Strict exact match three ways, time over ``score``'s, per item count, summed over
    the models: whole answers decoded, answers decoded and cut once settled, and ``score``
    (one forward over prompt + answer per batch, the few it cannot settle decoded, cut)."""
    items = as_task_items(load_jsonl(family / "data" / "mix" / "search.jsonl"))
    scorer = GenerationScorer("exact", strict=True, max_new_tokens=24, batch_size=128)

    def decoded(model, tok, part, cut: bool) -> list[float]:
        texts = scorer.completions(model, tok, part, cut=cut)
        return [scorer.judge(c, it) for c, it in zip(texts, part, strict=True)]

    totals: dict[int, dict[str, float]] = {}
    for name in ("base", "add", "greek", "cyrillic"):
        model, tok = load_member(family, name)
        for n in (len(items), 45):
            part = items[:: len(items) // n][:n]
            whole_s, whole = timed(functools.partial(decoded, model, tok, part, False), 3)
            cut_s, cut = timed(functools.partial(decoded, model, tok, part, True), 3)
            score_s, scores = timed(functools.partial(scorer.score, model, tok, part), 3)
            assert whole == cut == scores, f"{name}: cutting or the forced check changed a score"
            total = totals.setdefault(n, {"whole": 0.0, "cut": 0.0, "score": 0.0})
            for key, seconds in (("whole", whole_s), ("cut", cut_s), ("score", score_s)):
                total[key] += seconds
            print(
                f"{name:8} {n:3d} items: whole answers {whole_s * 1000:4.0f} ms, cut once settled "
                f"{cut_s * 1000:4.0f} ms, score() {score_s * 1000:4.0f} ms"
            )
    out = {}
    for n, t in totals.items():
        out[str(n)] = {
            "whole_over_score": round(t["whole"] / t["score"], 2),
            "cut_over_score": round(t["cut"] / t["score"], 2),
        }
        print(
            f"{n} items, 4 models: whole answers decoded take {t['whole'] / t['score']:.2f}x score()'s time, "
            f"cut once settled {t['cut'] / t['score']:.2f}x"
        )
    return out


def main() -> None:
    family = build_demo_family()
    manifest = read_manifest(family)
    data = family / manifest["tasks"]["add"]["test"]
    max_new = manifest["spec"]["max_new_tokens"]
    model, tok = load_member(family, "add")
    items = as_task_items(load_jsonl(data))
    n = len(items)
    print(f"threads: {torch.get_num_threads()}  items: {n} (the add skill's test split)  max_new_tokens: {max_new}")

    ours = {}
    for batch in (1, 16, 64):
        scorer = GenerationScorer("exact", strict=True, max_new_tokens=max_new, batch_size=batch)
        seconds, scores = timed(lambda s=scorer: s.score(model, tok, items), repeat=1 if batch == 1 else 2)
        ours[batch] = (seconds, scores)
        print(f"ours, batch {batch:3d}: {n / seconds:8.1f} items/s  ({seconds:.2f}s)  accuracy {sum(scores) / n:.3f}")

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        task_yaml = Path(tmp) / "demo_add_bench.yaml"
        task_yaml.write_text(jsonl_task_yaml("demo_add_bench", data, max_new_tokens=max_new))
        adapter = LMEvalScorer(task_yaml, batch_size=16)
        task_dict = adapter.task_dict()  # built once, as in a search
        ids = list(range(n))

        def lmeval_from_disk() -> float:
            t0 = time.perf_counter()
            lm = HFLM(pretrained=str(family / "models" / "add"), batch_size=16, add_bos_token=True, device="cpu")
            load = time.perf_counter() - t0
            evaluator.evaluate(lm, task_dict, samples={adapter.name: ids}, log_samples=True, verbosity="ERROR")
            return load

        total, load = timed(lmeval_from_disk)
        lm_eval_only = total - float(load)
        print(f"lm-eval HFLM from disk, batch 16: {n / total:8.1f} items/s incl. load ({total:.2f}s, load {load:.2f}s)")
        print(f"lm-eval HFLM, evaluation only   : {n / lm_eval_only:8.1f} items/s")
        adapter_s, adapter_scores = timed(lambda: adapter.score(model, tok, adapter.items()), repeat=2)
        print(f"our lm-eval adapter (live model), batch 16: {n / adapter_s:8.1f} items/s")
        assert adapter_scores == ours[16][1], "lm-eval and our scorer disagree on the same items"

    cut = settled_speed(family)

    b1, b16 = ours[1][0], ours[16][0]
    print(f"batch 16 vs batch 1: {b1 / b16:.1f}x")
    print(f"ours (batch 16) vs lm-eval's evaluation alone (batch 16): {lm_eval_only / b16:.2f}x faster")
    print(
        json.dumps(
            {
                "bench": "eval_speed",
                "items": n,
                "ours_items_per_s": {str(b): round(n / s, 1) for b, (s, _) in ours.items()},
                "batch16_vs_batch1": round(b1 / b16, 2),
                "lmeval_items_per_s_incl_load": round(n / total, 1),
                "lmeval_items_per_s_eval_only": round(n / lm_eval_only, 1),
                "ours_vs_lmeval_same_batch": round(lm_eval_only / b16, 2),
                "adapter_items_per_s": round(n / adapter_s, 1),
                "strict_exact_seconds_over_score": cut,
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
