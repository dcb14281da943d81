"""Candidates per minute on the demo family: the local executor, Ray with 1 worker, Ray with 2.

The demo task (``mix``) scored on 90 random anchors per candidate (``estimator: mean``,
so no IRT respondents), task-arithmetic weights searched by a GA, 8 candidates x 5
generations; one torch thread per evaluator (the local run too), so that 2 workers on
this 2-core machine measure parallel evaluation and not a thread split. Throughput is
taken over generations 2-5 (the first one includes Ray's start and the workers' model
loading, which is reported apart). Peak RSS: this process (the driver), and each
worker's VmHWM read from /proc before it is stopped.

Targets (issue 17): 2 workers >= 1.6x one worker's candidates per minute; Ray's overhead
per candidate with 1 worker <= 5% over the local executor. Ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).parent))
from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.loop import Callback
from evomerge.search.store import RunStore
from scale import GiB, peak_rss

GENERATIONS, POPULATION = 5, 8


def config(executor: str, workers: int) -> dict:
    return {
        "models": {"base": "demo:models/base", "endpoints": [f"demo:models/{m}" for m in ("add", "greek", "cyrillic")]},
        "tasks": [
            {
                "name": "mix",
                "search": "demo:data/mix/search.jsonl",
                "test": "demo:data/mix/test.jsonl",
                "extractor": "exact",
                "strict": True,
                "max_new_tokens": 24,
                "batch_size": 128,
            }
        ],
        "fitness": {"estimator": "mean", "anchors": 90},
        "search": {
            "algorithm": "GA",
            "population_size": POPULATION,
            "generations": GENERATIONS,
            "executor": executor,
            "ray": {"workers": workers, "cpus_per_worker": 1},
        },
        "output": {"save_best": False},
        "seed": 0,
    }


class WorkerPeaks(Callback):
    """Each Ray worker's peak RSS, read at the end of the search (the workers stop after)."""

    peaks: list[int]

    def on_end(self, searcher, reason):
        pids = searcher.executor.worker_pids() if hasattr(searcher.executor, "worker_pids") else []
        self.peaks = [vmhwm(pid) for pid in pids]


def vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(executor: str, workers: int, root: Path) -> dict:
    peaks = WorkerPeaks()
    start = time.perf_counter()
    run = run_experiment(load_config(config(executor, workers)), root / f"{executor}{workers}", callbacks=[peaks])
    total = time.perf_counter() - start
    store = RunStore.in_dir(run.run_dir)
    gens = store.generations()
    later = gens[1:]
    evaluations = gens[-1].evaluations - gens[0].evaluations
    seconds = sum(g.seconds["wall"] for g in later)
    store.close()
    return {
        "executor": executor,
        "workers": workers,
        "candidates_per_min": round(60 * evaluations / seconds, 1),
        "first_generation_s": round(gens[0].seconds["wall"], 1),
        "run_s": round(total, 1),
        "worker_peak_rss_gib": [round(p / GiB, 2) for p in getattr(peaks, "peaks", [])],
        "digests": [r.digest for r in run.winners],
    }


def main() -> None:
    import ray

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with TemporaryDirectory() as tmp:
        rows = [measure("local", 1, Path(tmp)), measure("ray", 1, Path(tmp)), measure("ray", 2, Path(tmp))]
    ray.shutdown()
    for row in rows:
        print(row)
    local, one, two = (r["candidates_per_min"] for r in rows)
    result = {
        "bench": "parallel",
        "rows": rows,
        "speedup_2_vs_1": round(two / one, 2),
        "overhead_1_vs_local": round(local / one - 1, 3),
        "driver_peak_rss_gib": round(peak_rss() / GiB, 2),
        "checks": {
            "two_workers_at_least_1.6x": two / one >= 1.6,
            "one_worker_overhead_at_most_5pct": local / one - 1 <= 0.05,
            "same_winner": len({tuple(r["digests"]) for r in rows}) == 1,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
