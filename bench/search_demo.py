"""The demo search, measured (issues: the search; fast evaluation; cheaper respondents).

Runs ``examples/mix.yaml`` (task-arithmetic merges of the demo family's three
specialists, scored on the target task "mix") several ways per seed (``--seeds``, 3 by
default), each in a fresh run dir with an empty respondent cache:

- GA with mp-IRT as the example says (90 anchors, 10% of the 900 search items; 10
  respondents, each scored on every item),
- the same GA with mp-IRT on 45 anchors and the random respondents scored on 30% of the
  items each (``fitness.respondent_items``; the base and the endpoints on every item),
- the same GA with full evaluation (all 900 items per candidate): the reference,

and, for the first seed, CMA-ES with mp-IRT reusing the first run's respondents (the
same models and task: ``fitness.reuse_respondents``).

For each it prints the held-out test table (the winner against every endpoint, the
base and the default merge), the wall time split into setup (loading, respondents, IRT
fit; the respondents also on their own), search and held-out test, the generations
(items scored) of the respondents and of the search, and the search bookkeeping share
per generation: ``(wall - merge - evaluation) / wall``. Against full evaluation, per seed then mean and spread: the
generations (respondents included, the unit the issues count), the wall time up to the
held-out test and with it, the respondents' generations over the search's, the winner's
held-out score, and the scoring seconds alone (respondents + the candidates' scoring,
against full evaluation's candidates' scoring): the wall-time ratio the run would reach
if merging, loading, the IRT fit and the bookkeeping cost nothing. Ends with one JSON line.

    .venv/bin/python bench/search_demo.py [--out runs/bench-search] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

from evomerge.fitness import build
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


class RespondentClock:
    """The respondent phase's seconds: ``build.collect_responses`` timed where the run calls it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._collect = build.collect_responses

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._collect(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


#: The cheaper variant (fitness.respondent_items): 45 anchors, each random respondent scored
#: on 30% of the search items, the base and the endpoints on all: 5,400 generations in the
#: search, 5,220 by the respondents (4 x 900 + 6 x 270).
CHEAP = {"anchors": 45, "respondent_items": 0.3}


def measure(name: str, out: Path, seed: int = 0, respondents_of: str | None = None, **changes: dict) -> dict:
    """One run in ``out/name``, with a respondents' cache of its own (empty: a cold start),
    or that of the run ``respondents_of`` (its respondents are reused)."""
    config = load_config(ROOT / "examples" / "mix.yaml")
    config = config.model_copy(update={k: getattr(config, k).model_copy(update=v) for k, v in changes.items()})
    config = config.model_copy(update={"seed": seed, "fitness": config.fitness.model_copy(update={"seed": seed})})
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cache = out / f"respondents-{respondents_of or name}"
    if respondents_of is None:
        shutil.rmtree(cache, ignore_errors=True)
    os.environ["EVOMERGE_RESPONDENTS_CACHE"] = str(cache)
    clock, respondents_clock = Clock(), RespondentClock()
    build.collect_responses = respondents_clock
    started = time.perf_counter()
    try:
        result = run_experiment(config, run_dir, callbacks=[clock])
    finally:
        build.collect_responses = respondents_clock._collect
    total = time.perf_counter() - started
    store = RunStore.in_dir(run_dir)
    generations = store.generations()
    shares = [(g.seconds["wall"] - g.seconds["merge"] - g.seconds["eval"]) / g.seconds["wall"] for g in generations]
    evaluation = sum(g.seconds["eval"] for g in generations)  # the candidates' scoring alone
    items = sum(len(next(iter(e.items.values()))) for e in store.evaluations())
    store.close()
    respondents_file = run_dir / "respondents-mix.json"
    respondents = json.loads(respondents_file.read_text())["respondents"] if respondents_file.exists() else {}
    scored = sum(v is not None for r in respondents.values() for v in r["scores"])  # null: not scored
    respondent_items = scored if respondents_of is None else 0
    setup, search, test = clock.start - started, clock.end - clock.start, started + total - clock.end
    tests = {t.name: t.scores["mix"] for t in result.tests}
    baselines = {k: v for k, v in tests.items() if k != "best"}
    print(f"\n== {name}: {result.evaluations} evaluations, {items} items scored in the search, "
          f"{respondent_items} by the respondents ({len(respondents)}); stop: {result.stop_reason}")  # fmt: skip
    print(f"   run {total:.1f}s: setup {setup:.1f}s (loading, respondents {respondents_clock.seconds:.1f}s, IRT fit), "
          f"search {search:.1f}s, held-out test {test:.1f}s; peak RSS {peak_rss_gib():.2f} GiB")  # fmt: skip
    merging = sum(g.seconds["merge"] for g in generations)
    print(f"   the search's candidates: scoring {evaluation:.1f}s, merging {merging:.1f}s")
    print(f"   bookkeeping share of a generation: at most {100 * max(shares):.2f}%, "
          f"{100 * sum(shares) / len(shares):.2f}% on average")  # fmt: skip
    for t in result.tests:
        estimate = f"  (search estimate {t.search_scores['mix']:.4f})" if t.search_scores else ""
        print(f"   {t.name:26} {t.kind:9} test {t.scores['mix']:.4f}{estimate}")
    return {
        "seconds": round(total, 1),
        "setup_seconds": round(setup, 1),
        "respondents_seconds": round(respondents_clock.seconds, 2),
        "search_seconds": round(search, 1),
        "search_scoring_seconds": round(evaluation, 2),
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
        "peak_rss_gib": round(peak_rss_gib(), 2),  # of this process so far: every run before it too
    }


def ratios(irt: dict, full: dict) -> dict:
    """The mp-IRT run against full evaluation, end to end (respondents included)."""
    irt_items = irt["items_scored"] + irt["respondent_items"]
    return {
        "generations_full_over_mpirt": full["items_scored"] / irt_items,
        "wall_full_over_mpirt_before_test": (full["setup_seconds"] + full["search_seconds"])
        / (irt["setup_seconds"] + irt["search_seconds"]),
        "wall_full_over_mpirt": full["seconds"] / irt["seconds"],
        "respondents_over_search_generations": irt["respondent_items"] / irt["items_scored"],
        "setup_over_search_seconds": irt["setup_seconds"] / irt["search_seconds"],
        "respondents_over_search_seconds": irt["respondents_seconds"] / irt["search_seconds"],
        # the ratio if merging, loading, the IRT fit and the search's bookkeeping cost nothing:
        # scoring alone (the respondents' and the candidates') against full evaluation's
        "scoring_full_over_mpirt": full["search_scoring_seconds"]
        / (irt["respondents_seconds"] + irt["search_scoring_seconds"]),
        "test_points_full_minus_mpirt": 100 * (full["best_test"] - irt["best_test"]),
    }


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 3), "std": round(statistics.pstdev(values), 3)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"seeds": {}}
    for seed in args.seeds:
        figures["seeds"][seed] = {
            "ga_mpirt": measure(f"ga-mpirt-s{seed}", args.out, seed),
            "ga_mpirt_cheap": measure(f"ga-mpirt-cheap-s{seed}", args.out, seed, fitness=CHEAP),
            "ga_full": measure(f"ga-full-s{seed}", args.out, seed, fitness={"estimator": "full", "anchors": None}),
        }
        if seed == args.seeds[0]:  # reuses the respondents of the first run: the same models and task
            figures["cmaes_mpirt_reuse"] = measure(
                "cmaes-mpirt-reuse", args.out, seed, f"ga-mpirt-s{seed}", search={"algorithm": "CMAES", "options": {}}
            )
    for path in args.out.glob("respondents-*"):
        shutil.rmtree(path)
    summary = {}
    for variant in ("ga_mpirt", "ga_mpirt_cheap"):
        per_seed = [ratios(f[variant], f["ga_full"]) for f in figures["seeds"].values()]
        summary[variant] = {key: spread([r[key] for r in per_seed]) for key in per_seed[0]}
        summary[variant]["best_test"] = spread([f[variant]["best_test"] for f in figures["seeds"].values()])
    summary["ga_full"] = {"best_test": spread([f["ga_full"]["best_test"] for f in figures["seeds"].values()])}
    figures["end_to_end"] = summary
    cheap, before = summary["ga_mpirt_cheap"], summary["ga_mpirt"]
    n = len(args.seeds)
    print(
        f"\nMean (spread) over {n} seeds, mp-IRT GA against the full-evaluation GA, end to end, respondents included:"
    )
    for label, s in (
        ("examples/mix.yaml (90 anchors, respondents on every item)", before),
        ("45 anchors, random respondents on 30% of the items each", cheap),
    ):
        gens, wall = s["generations_full_over_mpirt"], s["wall_full_over_mpirt_before_test"]
        gap, best = s["test_points_full_minus_mpirt"], s["best_test"]
        print(
            f"  {label}: {gens['mean']:.2f}x (±{gens['std']:.2f}) fewer generations; {wall['mean']:.2f}x "
            f"(±{wall['std']:.2f}) less wall time up to the held-out test, {s['wall_full_over_mpirt']['mean']:.2f}x "
            f"with it; respondents/search generations {s['respondents_over_search_generations']['mean']:.2f}, "
            f"seconds {s['respondents_over_search_seconds']['mean']:.2f}; scoring alone "
            f"{s['scoring_full_over_mpirt']['mean']:.2f}x (±{s['scoring_full_over_mpirt']['std']:.2f}) less; "
            f"winner's test {best['mean']:.4f} (±{best['std']:.4f}), {gap['mean']:+.2f} points (±{gap['std']:.2f}) "
            "below full evaluation's"
        )
    full = summary["ga_full"]["best_test"]
    print(f"  full evaluation: winner's test {full['mean']:.4f} (±{full['std']:.4f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
