"""Layer paths on the demo family: parameter space (PS), data flow (DFS), and PS then DFS.

On the composed task (``greek_add``: sums with carries in Greek numerals, which no member
of the family can do), at one evaluation budget per method, over ``--seeds`` seeds:

- PS: a task-arithmetic merge of ``add`` and ``greek`` (per-layer weights), CMA-ES;
- DFS: a layer path through ``greek``'s layers (model A) and ``add``'s, CMA-ES from greek's own path;
- PS then DFS: PS with half the budget, then DFS with the other half, model A being PS's winner;
- two structured alternatives to DFS: one scale per slot (``DFS slot``), and CMA-ES with
  margin (``DFS CMAwM``: the inclusion genes binary, the scales continuous).

The search climbs the answer's loss on the search split (``examples/dataflow.yaml``:
every model scores 0% exact match there, a flat landscape). Held-out rows: exact match on
greek_add, the answer loss, and each parent's skill, as mean ± sd over the seeds, beside
the base and the parents. First, in a fresh process state, what a DFS candidate costs:
peak RSS after 1 and after 50 assembled-and-scored candidates, the assembly time, and a
PS candidate's merge time for reference. Ends with one JSON line.

    .venv/bin/python bench/dataflow.py [--seeds 3] [--budget 96] [--population 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evomerge.demo import build_demo_family
from evomerge.loader import load_config
from evomerge.merge.pathmodel import PathMerger
from evomerge.search.experiment import run_experiment
from evomerge.search.pathspace import PathSpace
from evomerge.search.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("greek_add", "greek_add_loss", "add", "greek")
METHODS = ("PS", "DFS", "DFS slot", "DFS CMAwM", "PS then DFS")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def candidate_cost(family: Path) -> dict[str, float]:
    """Peak RSS after 1 and after 50 DFS candidates (assembled, then a forward pass over a
    batch), and the mean assembly time over 1,000 paths."""
    sources = [str(family / "models" / m) for m in ("greek", "add")]
    merger = PathMerger.open(sources)
    space = PathSpace(sources, merger.num_layers, repeats=2, scales="matrix")
    rng = np.random.default_rng(0)
    paths = [space.decode(rng.random(space.n_var)) for _ in range(1000)]
    ids = torch.randint(3, 100, (128, 24))
    with torch.no_grad():
        merger.model(input_ids=ids)
        after = []
        for path in paths[:50]:
            merger.merge_into(merger.model, path)
            merger.model(input_ids=ids)
            after.append(peak_rss_mib())
    start = time.perf_counter()
    for path in paths:
        merger.merge_into(merger.model, path)
    assembly_ms = (time.perf_counter() - start) / len(paths) * 1000
    return {
        "peak_rss_after_1_mib": round(after[0], 1),
        "peak_rss_after_50_mib": round(after[-1], 1),
        "assembly_ms": round(assembly_ms, 4),
        "mean_hops": round(statistics.fmean(len(p.hops) for p in paths), 1),
    }


def config_for(stage: str, seed: int, evaluations: int, population: int, from_run: Path | None = None):
    config = load_config(ROOT / "examples" / "dataflow.yaml")
    search = config.search.model_copy(
        update={"population_size": population, "generations": None, "max_evaluations": evaluations}
    )
    models = config.models
    if stage == "ps":
        models = models.model_copy(update={"base": str(Path(models.endpoints[0]).parent / "base")})
        search = search.model_copy(update={"space": "recipe", "granularity": "layer"})
        merge = config.merge.model_copy(update={"method": "task_arithmetic"})
        return config.model_copy(update={"models": models, "merge": merge, "search": search, "seed": seed})
    if from_run is not None:
        search = search.model_copy(update={"path": search.path.model_copy(update={"from_run": str(from_run)})})
    return config.model_copy(update={"search": search, "seed": seed})


def run(config, run_dir: Path) -> tuple[dict[str, dict[str, float]], list[float]]:
    """The run's held-out rows by candidate, and each evaluation's merge (or assembly) seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    result = run_experiment(config, run_dir)
    store = RunDir(run_dir).open_store()
    try:
        merge_seconds = [r.merge_s for r in store.evaluations()]
    finally:
        store.close()
    return {t.name: t.scores for t in result.tests}, merge_seconds


def summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for column in COLUMNS:
        scale = 1 if column.endswith("loss") else 100
        values = [scale * r[column] for r in rows]
        out[column] = {
            "mean": round(statistics.fmean(values), 3),
            "sd": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=96, help="evaluations per method (split in half for PS->DFS)")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    family = build_demo_family()
    cost = candidate_cost(family)
    print(f"DFS candidate: assembly {cost['assembly_ms']:.3f} ms ({cost['mean_hops']} hops on average); peak RSS "
          f"{cost['peak_rss_after_1_mib']:.0f} MiB after 1 candidate, {cost['peak_rss_after_50_mib']:.0f} MiB after 50",
          flush=True)  # fmt: skip
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-dataflow-"))
    started = time.perf_counter()
    evolved: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    baselines: dict[str, dict[str, float]] = {}
    merge_s: dict[str, list[float]] = {m: [] for m in args.methods}
    half = args.budget // 2
    for seed in range(args.seeds):
        for method in args.methods:
            if method == "PS then DFS":
                run(config_for("ps", seed, half, args.population), out / f"ps-half-{seed}")
                config = config_for("dfs", seed, args.budget - half, args.population, out / f"ps-half-{seed}")
            else:
                config = config_for("ps" if method == "PS" else "dfs", seed, args.budget, args.population)
            if method == "DFS slot":  # one scale per slot, used only where the slot is on
                path = config.search.path.model_copy(update={"scales": "slot"})
                config = config.model_copy(update={"search": config.search.model_copy(update={"path": path})})
            if method == "DFS CMAwM":  # CMA-ES with margin: inclusion binary, scales continuous
                config = config.model_copy(update={"search": config.search.model_copy(update={"algorithm": "CMAwM"})})
            tests, seconds = run(config, out / f"{method.replace(' ', '-')}-{seed}")
            evolved[method].append(tests["best"])
            merge_s[method] += seconds
            baselines |= {k: v for k, v in tests.items() if k.startswith(("endpoint:", "base", "source:"))}
        print(f"   seed {seed}: " + ", ".join(f"{k} {v[-1]['greek_add_loss']:.3f}" for k, v in evolved.items()),
              flush=True)  # fmt: skip

    rows = {name: summary([scores]) for name, scores in baselines.items()}
    rows |= {name: summary(runs) for name, runs in evolved.items()}
    print(f"\nheld-out test, {args.seeds} seeds, {args.budget} evaluations a method "
          "(greek_add, skills: % exact match; greek_add_loss: NLL per answer token, lower is better)")  # fmt: skip
    print(f"{'candidate':20} " + " ".join(f"{c:>17}" for c in COLUMNS))
    for name, r in rows.items():
        print(f"{name:20} " + " ".join(f"{r[c]['mean']:8.2f} ± {r[c]['sd']:6.2f}" for c in COLUMNS))
    per_candidate = {k: round(statistics.fmean(v) * 1000, 3) for k, v in merge_s.items()}
    print(f"merge (PS) or assembly (DFS) per candidate in the runs: {per_candidate} ms")
    seconds = time.perf_counter() - started
    print(f"{seconds:.0f}s, peak RSS {peak_rss_mib():.0f} MiB")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    loss = {k: rows[k]["greek_add_loss"]["mean"] for k in evolved}
    exact = {k: rows[k]["greek_add"]["mean"] for k in evolved}
    parents = {k: v for k, v in rows.items() if k.startswith(("endpoint:", "source:"))}
    verdicts = {}
    if {"PS", "PS then DFS"} <= set(evolved):
        verdicts["ps_then_dfs_beats_ps_exact"] = exact["PS then DFS"] > exact["PS"]
        verdicts["ps_then_dfs_beats_ps_loss"] = loss["PS then DFS"] < loss["PS"]
    if "DFS" in evolved and parents:
        verdicts["dfs_beats_best_parent_exact"] = exact["DFS"] > max(p["greek_add"]["mean"] for p in parents.values())
        verdicts["dfs_beats_best_parent_loss"] = loss["DFS"] < min(
            p["greek_add_loss"]["mean"] for p in parents.values()
        )
    print(
        json.dumps(
            {
                "bench": "dataflow",
                "seeds": args.seeds,
                "budget": args.budget,
                "rows": rows,
                **verdicts,
                "candidate_cost": cost,
                "merge_ms_per_candidate": per_candidate,
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
