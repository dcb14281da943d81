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
from matplotlib.ticker import MaxNLocator

from ..merge.layerpath import LayerPath
from ..search.store import EvaluationRow, GenerationRow, TestRow

_GENE = re.compile(r"^(?P<row>.+?)@(?P<group>.+)$")


def literal_text() -> AbstractContextManager:
    """Draw every string as written: matplotlib would read "$...$" in a task name as math
    (and fail on a lone "$")."""
    return plt.rc_context({"text.parse_math": False})


def fitness_per_generation(
    generations: Sequence[GenerationRow], names: Sequence[str], maximize: Sequence[bool], out: Path
) -> Path | None:
    """Best so far and the generation's mean, per objective (one above the other: the
    figure stays readable in a 400 px wide column)."""
    if not generations:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(5.5, 3.4 * len(names)), squeeze=False)
    x = [g.generation for g in generations]
    for k, (name, up) in enumerate(zip(names, maximize, strict=True)):
        ax = axes[k, 0]
        ax.plot(x, [g.best["best"][k] for g in generations], marker="o", label="best so far")
        ax.plot(x, [g.best["mean"][k] for g in generations], marker=".", linestyle="--", label="generation mean")
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole numbers
        ax.set_ylabel(f"{name} ({'higher' if up else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fitness per generation (search estimates)")
    return _save(fig, out)


#: A run as ``fitness_of_runs`` draws it: its name, generations, objective names, maximize.
RunCurves = tuple[str, Sequence[GenerationRow], Sequence[str], Sequence[bool]]


def fitness_of_runs(runs: Sequence[RunCurves], out: Path) -> Path | None:
    """Several runs' best so far on one plot per objective, to compare them; objectives a
    run lacks are left out of it."""
    names: dict[str, bool] = {}
    for _, _, objectives, maximize in runs:
        for name, up in zip(objectives, maximize, strict=True):
            names.setdefault(name, up)
    if not names or not any(generations for _, generations, _, _ in runs):
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(5.5, 3.4 * len(names)), squeeze=False)
    for k, (name, up) in enumerate(names.items()):
        ax = axes[k, 0]
        for run, generations, objectives, _ in runs:
            if name in objectives and generations:
                at = list(objectives).index(name)
                ax.plot([g.generation for g in generations], [g.best["best"][at] for g in generations],
                        marker="o", label=run)  # fmt: skip
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{name} ({'higher' if up else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Best so far per generation (search estimates)")
    return _save(fig, out)


def pareto_front(
    rows: Sequence[EvaluationRow],
    front: Sequence[EvaluationRow],
    names: Sequence[str],
    out: Path,
    baselines: Sequence[TestRow] = (),
) -> Path | None:
    """Every evaluation on the first two objectives, the front highlighted and its members
    labelled as ``evomerge export --member`` names them (``pareto:K``), and the baselines
    (endpoints, base, default merge) at their search estimates: a front that a specialist
    dominates is visibly no success."""
    if len(names) < 2 or not rows:
        return None
    f = np.array([r.objectives[:2] for r in rows])
    p = np.array(sorted(r.objectives[:2] for r in front))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(f[:, 0], f[:, 1], s=14, alpha=0.35, color="C0", label="evaluated")
    ax.plot(p[:, 0], p[:, 1], marker="o", color="C3", label="Pareto front")
    at: dict[tuple[float, float], list[int]] = {}  # members with the same estimates share one label
    for k, member in enumerate(front):
        at.setdefault((member.objectives[0], member.objectives[1]), []).append(k)
    for xy, members in at.items():
        text = ", ".join(f"pareto:{k}" for k in members[:2]) + (f" +{len(members) - 2}" if len(members) > 2 else "")
        ax.annotate(text, xy, fontsize=7, color="C3", xytext=(5, 4), textcoords="offset points")
    markers = {"endpoint": "s", "base": "D", "default": "^"}
    colors = iter(["C2", "C4", "C5", "C6", "C8", "C9", "C7"])
    for t in baselines:
        if t.kind not in markers or not t.search_scores or not all(n in t.search_scores for n in names[:2]):
            continue
        color = next(colors, "C7") if t.kind == "endpoint" else {"base": "k", "default": "C1"}[t.kind]
        x, y = (t.search_scores[n] for n in names[:2])
        ax.scatter(x, y, s=60, marker=markers[t.kind], color=color, label=t.name, zorder=3, alpha=0.85)
    ax.set_xlabel(f"{names[0]} (search estimate)")
    ax.set_ylabel(f"{names[1]} (search estimate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
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
                ink = _ink_on(tuple(image.cmap(image.norm(grid[i, j]))))
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color=ink, fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title("Evolved genes of the winner")
    return _save(fig, out)


def layer_path(path: LayerPath, out: Path) -> Path:
    """A path as a picture: one row per source model, one column per hop, a line through
    the hops in order; each hop is labelled with its layer and coloured by its stream scale."""
    models = list(dict.fromkeys([path.head, *(h.model for h in path.hops)]))
    labels = [_short(m) for m in models]
    x = np.arange(len(path.hops))
    y = np.array([models.index(h.model) for h in path.hops])
    scales = np.array([h.scale for h in path.hops])
    fig, ax = plt.subplots(figsize=(min(20.0, max(5.0, 0.45 * len(x) + 2.5)), 0.8 * len(models) + 1.8))
    ax.plot(x, y, color="#999", linewidth=1, zorder=1)
    low, high = min(scales.min(), 1.0), max(scales.max(), 1.0)
    points = ax.scatter(x, y, c=scales, cmap="coolwarm", vmin=low, vmax=high if high > low else low + 1e-6,
                        s=260, edgecolors="black", linewidths=0.5, zorder=2)  # fmt: skip
    for i, hop in enumerate(path.hops):
        ink = _ink_on(tuple(points.cmap(points.norm(np.array(hop.scale)))))
        ax.text(i, y[i], str(hop.layer), ha="center", va="center", fontsize=8, color=ink, zorder=3)
    ax.set_yticks(range(len(models)), labels)
    ax.set_ylim(len(models) - 0.5, -0.5)
    ax.set_xlabel("hop (the hidden state flows left to right; the number is the source's layer)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(points, ax=ax, label="scale on the stream entering the hop")
    ax.set_title(f"The winner's layer path: {len(path.hops)} layers; embeddings and head from {_short(path.head)}")
    return _save(fig, out)


def _short(model: str) -> str:
    """A model's folder name (a run's winner, ``RUN/best``, by its run's name)."""
    p = Path(model)
    return f"{p.parent.name} (winner)" if p.name == "best" else p.name


def estimates_vs_test(tests: Sequence[TestRow], names: Sequence[str], out: Path) -> Path | None:
    """The search's estimate of each tested candidate against its held-out score. Each
    candidate has its own marker and a legend entry, so no label covers another (with
    more than 12 points, one entry per kind: best, pareto, endpoint, base, default)."""
    points = [(t, n) for t in tests for n in names if t.search_scores and n in t.search_scores]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shapes = "o^sDvP*Xh<>p"
    values: list[float] = []
    by_kind = len(points) > 12  # a legend of every Pareto member x objective would not be read
    kinds = ["best", "pareto", "endpoint", "base", "default"]
    shown: set[str] = set()
    for k, (t, n) in enumerate(points):
        xy = (t.search_scores[n], t.scores[n])  # type: ignore[index]
        values += xy
        size = 70 if t.kind in ("best", "pareto") else 40
        if by_kind:
            style = kinds.index(t.kind) if t.kind in kinds else len(kinds)
            label = None if t.kind in shown else t.kind
            shown.add(t.kind)
            ax.scatter(xy[0], xy[1], s=size, marker=shapes[style], color=f"C{style}", label=label)
        else:
            label = t.name + (f" ({n})" if len(names) > 1 else "")
            ax.scatter(xy[0], xy[1], s=size, marker=shapes[k % len(shapes)], color=f"C{k % 10}", label=label)
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle=":", label="estimate = test")
    ax.set_xlabel("search estimate (anchors)")
    ax.set_ylabel("held-out test score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title("Estimated vs held-out score")
    return _save(fig, out)


def _ink_on(rgba: Sequence[float]) -> str:
    """Black on a light cell, white on a dark one (relative luminance, WCAG weights)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # a legend beside the axes stays in
    plt.close(fig)
    return out
