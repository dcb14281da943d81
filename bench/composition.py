"""Composition on the demo family (issue: a skill that no parent has).

On the composed task's held-out split (``greek_add``: sums with carries written in Greek
numerals, which no member of the family is trained on), at one evaluation budget:

- the base and each parent (the math specialist ``add`` and the language specialist
  ``greek``), and the default (untuned) merge of each method: uniform weights, mergekit's
  default densities;
- the evolved merge of ``examples/demo.yaml`` for task_arithmetic, ties and dare_ties, at
  global and at layer granularity, over ``--seeds`` seeds (the search's and DARE's).

Each row gives the mean and spread (sample standard deviation) over the seeds of the
held-out score on the composed task, and on each parent's own skill (checks). The
reference measured in the same run is the best parent on the composed task: the gap to
it, in points, is the issue's target (+20). Ends with one JSON line.

    .venv/bin/python bench/composition.py [--seeds 3] [--generations 8] [--population 12]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
TARGET, SKILLS = "greek_add", ("add", "greek")
METHODS = ("task_arithmetic", "ties", "dare_ties")
GRANULARITIES = ("global", "layer")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def points(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and spread, in points (percent), per task over the seeds' rows."""
    out = {}
    for task in (TARGET, *SKILLS):
        values = [100 * r[task] for r in rows]
        out[task] = {
            "mean": round(statistics.fmean(values), 2),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        }
    return out


def one_run(out: Path, method: str, granularity: str, seed: int, population: int, generations: int) -> dict:
    config = load_config(ROOT / "examples" / "demo.yaml")
    config = config.model_copy(
        update={
            "seed": seed,
            "merge": config.merge.model_copy(update={"method": method}),
            "search": config.search.model_copy(
                update={"granularity": granularity, "population_size": population, "generations": generations}
            ),
            "output": config.output.model_copy(update={"save_best": False}),
        }
    )
    run_dir = out / f"{method}-{granularity}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = run_experiment(config, run_dir)
    return {t.name: t.scores for t in result.tests} | {"evaluations": result.evaluations}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-composition-"))
    os.environ["EVOMERGE_RESPONDENTS_CACHE"] = str(out / "respondents")
    started = time.perf_counter()

    baselines: dict[str, dict[str, float]] = {}
    evolved: dict[str, list[dict[str, float]]] = {}
    evaluations = 0
    for method in METHODS:
        for granularity in GRANULARITIES:
            for seed in range(args.seeds):
                tests = one_run(out, method, granularity, seed, args.population, args.generations)
                evaluations = tests.pop("evaluations")
                evolved.setdefault(f"evolved {method} ({granularity})", []).append(tests["best"])
                for name, scores in tests.items():
                    if name != "best" and (name.startswith("default") or name in ("base",) or ":" in name):
                        baselines.setdefault(name, scores)  # deterministic: the same in every run
            print(f"   {method} {granularity}: {points(evolved[f'evolved {method} ({granularity})'])}", flush=True)

    rows = {name: points([scores]) for name, scores in baselines.items()}
    rows |= {name: points(runs) for name, runs in evolved.items()}
    parents = {n: v for n, v in rows.items() if n.startswith("endpoint:")}
    best_parent = max(parents, key=lambda n: parents[n][TARGET]["mean"])
    reference = parents[best_parent][TARGET]["mean"]

    print(f"\ncomposed task {TARGET} (held-out, % exact match), {args.seeds} seeds, "
          f"{evaluations} evaluations a search; checks: each parent's own skill")  # fmt: skip
    print(f"{'candidate':34} {TARGET:>16} {'vs best parent':>15} " + " ".join(f"{s:>16}" for s in SKILLS))
    for name, r in rows.items():
        cells = " ".join(f"{r[s]['mean']:7.1f} ± {r[s]['sd']:5.1f}" for s in SKILLS)
        gap = r[TARGET]["mean"] - reference
        print(f"{name:34} {r[TARGET]['mean']:7.1f} ± {r[TARGET]['sd']:5.1f} {gap:+15.1f} {cells}")
    best_evolved = max(evolved, key=lambda n: rows[n][TARGET]["mean"])
    gap = rows[best_evolved][TARGET]["mean"] - reference
    seconds = time.perf_counter() - started
    print(f"\nbest evolved: {best_evolved}, {gap:+.1f} points over the best parent ({best_parent}, "
          f"{reference:.1f}); target +20. {seconds:.0f}s, peak RSS {peak_rss_gib():.2f} GiB")  # fmt: skip
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "composition",
                "task": TARGET,
                "seeds": args.seeds,
                "evaluations_per_search": evaluations,
                "rows": rows,
                "best_parent": best_parent,
                "best_evolved": best_evolved,
                "gap_points_over_best_parent": round(gap, 2),
                "target_gap_points": 20,
                "seconds": round(seconds, 1),
                "peak_rss_gib": round(peak_rss_gib(), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
