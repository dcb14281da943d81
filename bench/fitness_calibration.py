"""Fitness estimators against full evaluation on the demo family (issue: cheap fitness).

30 random task-arithmetic merges of the three specialists are scored on all 900 items
of the demo's target task ("mix") and estimated from anchors by every estimator at
2.5%, 5% and 10% of the split, five anchor seeds each. The reference is random
subsampling (``mean`` over random anchors) at the same number of items, from the same
run; the ratio is its MAE over the best IRT estimator's.

    .venv/bin/python bench/fitness_calibration.py [--out runs/bench-calibration]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from evomerge.fitness.calibrate import calibrate
from evomerge.loader import load_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-calibration")
    parser.add_argument("--merges", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    config = load_config(ROOT / "examples" / "calibrate-demo.yaml")
    rows = calibrate(config, args.out, merges=args.merges, repeats=args.repeats)
    report = json.loads((args.out / "calibration.json").read_text())
    task = report["tasks"]["mix"]
    print(f"{args.merges} merges, full scores {task['full_scores']['min']:.3f}..{task['full_scores']['max']:.3f}")
    print(f"{'items':>6} {'estimator':28} {'MAE (points)':>14} {'Spearman':>9}")
    for r in rows:
        print(f"{r.anchors:6d} {r.estimator + ' (' + r.selection + ')':28} {100 * r.mae:8.2f} ± {100 * r.mae_std:4.2f} "
              f"{r.spearman:9.3f}")  # fmt: skip
    figures = {}
    for s in task["summary"]:
        ratio = s["random_mae"] / s["best_irt_mae"]
        print(
            f"{s['anchors']} items: random subsampling MAE {100 * s['random_mae']:.2f} (Spearman "
            f"{s['random_spearman']:.3f}); best IRT {s['best_irt']} MAE {100 * s['best_irt_mae']:.2f} "
            f"(Spearman {s['best_irt_spearman']:.3f}); random/IRT = {ratio:.2f}x"
        )
        figures[str(s["anchors"])] = {
            "random_mae": round(s["random_mae"], 4),
            "random_spearman": round(s["random_spearman"], 3),
            "best_irt": s["best_irt"],
            "best_irt_mae": round(s["best_irt_mae"], 4),
            "best_irt_spearman": round(s["best_irt_spearman"], 3),
            "random_over_irt_mae": round(ratio, 2),
        }
    print(f"table and plot: {args.out}/calibration.csv, calibration.png")
    seconds = round(time.perf_counter() - started, 1)
    print(json.dumps({"bench": "fitness_calibration", "search_items": task["search_items"], "merges": args.merges,
                      "repeats": args.repeats, "by_anchor_count": figures, "seconds": seconds}))  # fmt: skip


if __name__ == "__main__":
    main()
