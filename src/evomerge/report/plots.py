"""The run's figures, drawn from the run store alone (no model is loaded), as PNGs.

Each function takes what the store holds and a path, draws one figure with matplotlib's
Agg backend (no display needed) and returns the path, or None when the run has nothing
to show for it (no Pareto front in a single-objective run, no numeric genes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..search.store import EvaluationRow, GenerationRow, TestRow

_GENE = re.compile(r"^(?P<row>.+?)@(?P<group>.+)$")


def literal_text() -> AbstractContextManager:
    """Draw every string as written: matplotlib would read "$...$" in a task name as math
    (and fail on a lone "$")."""
    return plt.rc_context({"text.parse_math": False})


def fitness_per_generation(
    generations: Sequence[GenerationRow], names: Sequence[str], maximize: Sequence[bool], out: Path
) -> Path | None:
    """Best so far and the generation's mean, per objective."""
    if not generations:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    x = [g.generation for g in generations]
    for k, (name, up) in enumerate(zip(names, maximize, strict=True)):
        ax = axes[0, k]
        ax.plot(x, [g.best["best"][k] for g in generations], marker="o", label="best so far")
        ax.plot(x, [g.best["mean"][k] for g in generations], marker=".", linestyle="--", label="generation mean")
        ax.set_xlabel("generation")
        ax.set_ylabel(f"{name} ({'higher' if up else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fitness per generation (search estimates)")
    return _save(fig, out)


def pareto_front(
    rows: Sequence[EvaluationRow], front: Sequence[EvaluationRow], names: Sequence[str], out: Path
) -> Path | None:
    """Every evaluation on the first two objectives, the front highlighted."""
    if len(names) < 2 or not rows:
        return None
    f = np.array([r.objectives[:2] for r in rows])
    p = np.array(sorted(r.objectives[:2] for r in front))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(f[:, 0], f[:, 1], s=14, alpha=0.4, label="evaluated")
    ax.plot(p[:, 0], p[:, 1], marker="o", color="C3", label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Pareto front" + (f" (objectives 1-2 of {len(names)})" if len(names) > 2 else ""))
    return _save(fig, out)


def genes_heatmap(best: EvaluationRow, out: Path) -> Path | None:
    """The winner's genes: one row per parameter and model, one column per group
    (all, module groups, or layer groups)."""
    cells: dict[tuple[str, str], float] = {}
    for name, value in best.genes.items():
        match = _GENE.match(name)
        if match and isinstance(value, (int, float)):
            cells[(match["row"], match["group"])] = float(value)
    if not cells:
        return None
    rows = list(dict.fromkeys(r for r, _ in cells))
    groups = list(dict.fromkeys(g for _, g in cells))
    grid = np.full((len(rows), len(groups)), np.nan)
    for (r, g), v in cells.items():
        grid[rows.index(r), groups.index(g)] = v
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(groups) + 3), 0.5 * len(rows) + 1.8))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(groups)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title("Evolved genes of the winner")
    return _save(fig, out)


def estimates_vs_test(tests: Sequence[TestRow], names: Sequence[str], out: Path) -> Path | None:
    """The search's estimate of each tested candidate against its held-out score."""
    points = [(t, n) for t in tests for n in names if t.search_scores and n in t.search_scores]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    labels: dict[tuple[float, float], list[str]] = {}  # candidates at the same point share one label
    for t, n in points:
        xy = (round(t.search_scores[n], 3), round(t.scores[n], 3))  # type: ignore[index]
        labels.setdefault(xy, []).append(t.name + (f" ({n})" if len(names) > 1 else ""))
        ax.scatter(*xy, s=30, color="C3" if t.kind in ("best", "pareto") else "C0")
    for xy, who in labels.items():
        text = who[0] + (f" +{len(who) - 1} more" if len(who) > 1 else "")  # the table lists them all
        ax.annotate(text, xy, fontsize=7, xytext=(4, 2), textcoords="offset points")
    values = [v for xy in labels for v in xy]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle=":", label="estimate = test")
    ax.set_xlabel("search estimate (anchors)")
    ax.set_ylabel("held-out test score")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Estimated vs held-out score")
    return _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
