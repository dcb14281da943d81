"""The demo search, measured (issue: the search).

Runs ``examples/demo.yaml`` (task-arithmetic merges of the demo family's three
specialists, scored on the target task "mix") three ways, each in a fresh run dir:

- GA with mp-IRT on 90 anchors (10% of the 900 search items),
- the same GA with full evaluation (all 900 items per candidate): the reference,
- CMA-ES with mp-IRT on 90 anchors.

For each it prints the held-out test table (the winner against every endpoint, the
base and the default merge), the wall time, the evaluations and items scored, and
the search bookkeeping share per generation: ``(wall - merge - evaluation) / wall``
(ask/tell, decoding, dedup lookups, store writes). Ratios are against the full-
evaluation run of the same session. Ends with one JSON line.

    .venv/bin/python bench/search_demo.py [--out runs/bench-search]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from evomerge.config import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, out: Path, **changes: dict) -> dict:
    config = load_config(ROOT / "examples" / "demo.yaml")
    config = config.model_copy(update={k: getattr(config, k).model_copy(update=v) for k, v in changes.items()})
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = run_experiment(config, run_dir)
    total = time.perf_counter() - started
    store = RunStore.in_dir(run_dir)
    generations = store.generations()
    shares = [(g.seconds["wall"] - g.seconds["merge"] - g.seconds["eval"]) / g.seconds["wall"] for g in generations]
    search_s = sum(g.seconds["wall"] for g in generations)
    items = sum(len(next(iter(e.items.values()))) for e in store.evaluations())
    store.close()
    test = {t.name: t.scores["mix"] for t in result.tests}
    baselines = {k: v for k, v in test.items() if k != "best"}
    print(f"\n== {name}: {result.evaluations} evaluations, {items} items scored, stop: {result.stop_reason}")
    print(f"   run {total:.0f}s (search {search_s:.0f}s); bookkeeping share of a generation's wall time:")
    print(f"   at most {100 * max(shares):.2f}%, {100 * sum(shares) / len(shares):.2f}% on average")
    for t in result.tests:
        estimate = f"  (search estimate {t.search_scores['mix']:.4f})" if t.search_scores else ""
        print(f"   {t.name:26} {t.kind:9} test {t.scores['mix']:.4f}{estimate}")
    return {
        "seconds": round(total, 1),
        "search_seconds": round(search_s, 1),
        "evaluations": result.evaluations,
        "items_scored": items,
        "best_test": round(test["best"], 4),
        "best_search_estimate": round(result.tests[0].search_scores["mix"], 4),
        "best_baseline_test": round(max(baselines.values()), 4),
        "beats_every_baseline": test["best"] > max(baselines.values()),
        "bookkeeping_share_max": round(max(shares), 4),
        "bookkeeping_share_mean": round(sum(shares) / len(shares), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = {
        "ga_mpirt": measure("ga-mpirt", args.out),
        "ga_full": measure("ga-full", args.out, fitness={"estimator": "full", "anchors": None}),
        "cmaes_mpirt": measure("cmaes-mpirt", args.out, search={"algorithm": "CMAES", "options": {}}),
    }
    irt, full = figures["ga_mpirt"], figures["ga_full"]
    figures["items_ratio_full_over_mpirt"] = round(full["items_scored"] / irt["items_scored"], 2)
    figures["search_time_ratio_full_over_mpirt"] = round(full["search_seconds"] / irt["search_seconds"], 2)
    print(
        f"\nmp-IRT GA: test {irt['best_test']:.4f} after scoring {irt['items_scored']} items; full-evaluation GA: "
        f"test {full['best_test']:.4f} after {full['items_scored']} items "
        f"({figures['items_ratio_full_over_mpirt']}x the items, {figures['search_time_ratio_full_over_mpirt']}x "
        "the search time)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
