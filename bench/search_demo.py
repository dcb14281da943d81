"""The demo search, measured (issues: the search; fast evaluation).

Runs ``examples/mix.yaml`` (task-arithmetic merges of the demo family's three
specialists, scored on the target task "mix") four ways, each in a fresh run dir:

- GA with mp-IRT on 90 anchors (10% of the 900 search items), its respondents scored
  from scratch (an empty respondent cache),
- the same GA with full evaluation (all 900 items per candidate): the reference,
- CMA-ES with mp-IRT on 90 anchors, reusing the GA's respondents (the same models and
  task: ``fitness.reuse_respondents``),

For each it prints the held-out test table (the winner against every endpoint, the
base and the default merge), the wall time split into setup (loading, respondents, IRT
fit), search and held-out test, the generations (items scored) of the respondents and of
the search, and the search bookkeeping share per generation: ``(wall - merge -
evaluation) / wall``. The end-to-end cost of the IRT run against full evaluation is
given in generations (respondents included, the unit the issue counts) and in wall time
(respondents included; with and without the held-out test both runs share). Ends with
one JSON line.

    .venv/bin/python bench/search_demo.py [--out runs/bench-search]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.loop import Callback
from evomerge.search.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


class Clock(Callback):
    """When the search starts and ends: what comes before is setup (loading, respondents,
    IRT fit), what comes after is the held-out test."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_start(self, searcher, replayed: int) -> None:
        self.start = time.perf_counter()

    def on_end(self, searcher, reason: str) -> None:
        self.end = time.perf_counter()


def measure(name: str, out: Path, **changes: dict) -> dict:
    config = load_config(ROOT / "examples" / "mix.yaml")
    config = config.model_copy(update={k: getattr(config, k).model_copy(update=v) for k, v in changes.items()})
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    clock = Clock()
    started = time.perf_counter()
    result = run_experiment(config, run_dir, callbacks=[clock])
    total = time.perf_counter() - started
    store = RunStore.in_dir(run_dir)
    generations = store.generations()
    shares = [(g.seconds["wall"] - g.seconds["merge"] - g.seconds["eval"]) / g.seconds["wall"] for g in generations]
    items = sum(len(next(iter(e.items.values()))) for e in store.evaluations())
    store.close()
    respondents_file = run_dir / "respondents-mix.json"
    respondents = json.loads(respondents_file.read_text())["respondents"] if respondents_file.exists() else {}
    respondent_items = sum(len(r["scores"]) for r in respondents.values()) if "reuse" not in name else 0
    setup, search, test = clock.start - started, clock.end - clock.start, started + total - clock.end
    tests = {t.name: t.scores["mix"] for t in result.tests}
    baselines = {k: v for k, v in tests.items() if k != "best"}
    print(f"\n== {name}: {result.evaluations} evaluations, {items} items scored in the search, "
          f"{respondent_items} by the respondents ({len(respondents)}); stop: {result.stop_reason}")  # fmt: skip
    print(f"   run {total:.1f}s: setup {setup:.1f}s (loading, respondents, IRT fit), search {search:.1f}s, "
          f"held-out test {test:.1f}s; peak RSS {peak_rss_gib():.2f} GiB")  # fmt: skip
    print(f"   bookkeeping share of a generation: at most {100 * max(shares):.2f}%, "
          f"{100 * sum(shares) / len(shares):.2f}% on average")  # fmt: skip
    for t in result.tests:
        estimate = f"  (search estimate {t.search_scores['mix']:.4f})" if t.search_scores else ""
        print(f"   {t.name:26} {t.kind:9} test {t.scores['mix']:.4f}{estimate}")
    return {
        "seconds": round(total, 1),
        "setup_seconds": round(setup, 1),
        "search_seconds": round(search, 1),
        "test_seconds": round(test, 1),
        "evaluations": result.evaluations,
        "items_scored": items,
        "respondent_items": respondent_items,
        "best_test": round(tests["best"], 4),
        "best_search_estimate": round(result.tests[0].search_scores["mix"], 4),
        "best_baseline_test": round(max(baselines.values()), 4),
        "beats_every_baseline": tests["best"] > max(baselines.values()),
        "bookkeeping_share_max": round(max(shares), 4),
        "bookkeeping_share_mean": round(sum(shares) / len(shares), 4),
    }


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["EVOMERGE_RESPONDENTS_CACHE"] = tempfile.mkdtemp(prefix="respondents-")  # a cold start
    figures = {
        "ga_mpirt": measure("ga-mpirt", args.out),
        "ga_full": measure("ga-full", args.out, fitness={"estimator": "full", "anchors": None}),
        "cmaes_mpirt_reuse": measure("cmaes-mpirt-reuse", args.out, search={"algorithm": "CMAES", "options": {}}),
    }
    shutil.rmtree(os.environ["EVOMERGE_RESPONDENTS_CACHE"])
    irt, full = figures["ga_mpirt"], figures["ga_full"]
    irt_items = irt["items_scored"] + irt["respondent_items"]
    ratios = {
        "generations_full_over_mpirt": round(full["items_scored"] / irt_items, 2),
        "wall_full_over_mpirt_before_test": round(
            (full["setup_seconds"] + full["search_seconds"]) / (irt["setup_seconds"] + irt["search_seconds"]), 2
        ),
        "wall_full_over_mpirt": round(full["seconds"] / irt["seconds"], 2),
        "search_items_full_over_mpirt": round(full["items_scored"] / irt["items_scored"], 2),
    }
    figures["end_to_end"] = ratios
    print(
        f"\nmp-IRT GA: test {irt['best_test']:.4f} after {irt_items} generations "
        f"({irt['respondent_items']} by respondents, {irt['items_scored']} in the search); full-evaluation GA: "
        f"test {full['best_test']:.4f} after {full['items_scored']}.\nEnd to end, respondents included: "
        f"{ratios['generations_full_over_mpirt']}x fewer generations; "
        f"{ratios['wall_full_over_mpirt_before_test']}x less wall time up to the held-out test, "
        f"{ratios['wall_full_over_mpirt']}x with it (the same {full['test_seconds']:.0f}s in both)."
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
