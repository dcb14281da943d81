"""The report's figures read at a glance: whole-number generations, heatmap labels that
contrast with their cell, no label over another, and a Pareto plot that shows the
baselines and names its members as `export --member` does. Drawn from synthetic store
rows; each figure is kept (matplotlib's own object) to inspect what was drawn."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from evomerge.report import plots
from evomerge.search.store import EvaluationRow, GenerationRow
from evomerge.search.store import TestRow as StoredTest


@pytest.fixture
def drawn(monkeypatch) -> list[plt.Figure]:
    """The figures the plot functions draw, captured as they are saved (then closed)."""
    figures: list[plt.Figure] = []
    save = plots._save

    def keep(fig: plt.Figure, out):
        figures.append(fig)
        fig.canvas.draw()  # ticks and texts as they are rendered
        return save(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def evaluation(k: int, objectives: list[float], genes: dict[str, float] | None = None) -> EvaluationRow:
    return EvaluationRow(k, 0, f"d{k}", [0.0], genes or {}, "", objectives, {}, 0.0, 0.0)


def test_generations_are_whole_numbers(drawn, tmp_path):
    rows = [GenerationRow(g, [], 6 * (g + 1), {}, {"best": [0.5 + g / 10], "mean": [0.4]}, {}, 1.0) for g in range(3)]
    plots.fitness_per_generation(rows, ["mix"], [True], tmp_path / "f.png")
    ax = drawn[0].axes[0]
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_heatmap_labels_contrast_with_their_cell(drawn, tmp_path):
    genes = {"weight[add]@all": 0.02, "weight[greek]@all": 0.98}  # viridis: dark purple, then yellow
    plots.genes_heatmap(evaluation(1, [0.5], genes), tmp_path / "g.png")
    colors = {t.get_text(): t.get_color() for t in drawn[0].axes[0].texts}
    assert colors == {"0.02": "white", "0.98": "black"}


def test_estimates_plot_labels_by_legend_not_by_overlapping_text(drawn, tmp_path):
    names = ["best", "endpoint:add", "endpoint:greek", "base", "default task_arithmetic"]
    tests = [
        StoredTest(n, "best" if n == "best" else "endpoint", "", {"mix": 0.6 + k / 1000}, {"mix": 0.6}, 1.0)
        for k, n in enumerate(names)
    ]  # five candidates within 0.005 of each other: labels beside the points would overlap
    plots.estimates_vs_test(tests, ["mix"], tmp_path / "e.png")
    ax = drawn[0].axes[0]
    assert not ax.texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [*names, "estimate = test"]


def test_pareto_plot_names_members_and_draws_the_baselines(drawn, tmp_path):
    rows = [evaluation(k, [a, b]) for k, (a, b) in enumerate([(0.2, 0.9), (0.5, 0.6), (0.9, 0.1), (0.3, 0.3)])]
    front = rows[:3]
    baselines = [
        StoredTest("endpoint:greek", "endpoint", "", {}, {"greek": 0.95, "cyrillic": 0.2}, 1.0),
        StoredTest("endpoint:cyrillic", "endpoint", "", {}, {"greek": 0.2, "cyrillic": 0.95}, 1.0),
        StoredTest("base", "base", "", {}, {"greek": 0.1, "cyrillic": 0.1}, 1.0),
        StoredTest("default task_arithmetic", "default", "", {}, {"greek": 0.3, "cyrillic": 0.3}, 1.0),
    ]
    plots.pareto_front(rows, front, ["greek", "cyrillic"], tmp_path / "p.png", baselines)
    ax = drawn[0].axes[0]
    labels = {t.get_text(): t.xy for t in ax.texts}
    assert labels == {f"pareto:{k}": (r.objectives[0], r.objectives[1]) for k, r in enumerate(front)}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["evaluated", "Pareto front", *[b.name for b in baselines]]


def test_members_at_one_point_share_a_label_and_many_candidates_are_grouped(drawn, tmp_path):
    rows = [evaluation(k, [0.5, 0.5]) for k in range(4)] + [evaluation(4, [0.9, 0.1])]
    plots.pareto_front(rows, rows, ["greek", "cyrillic"], tmp_path / "p.png")
    assert sorted(t.get_text() for t in drawn[0].axes[0].texts) == ["pareto:0, pareto:1 +2", "pareto:4"]
    tests = [StoredTest(f"pareto:{k}", "pareto", "", {"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}, 1.0) for k in range(8)]
    tests.append(StoredTest("base", "base", "", {"a": 0.3, "b": 0.3}, {"a": 0.3, "b": 0.3}, 1.0))
    plots.estimates_vs_test(tests, ["a", "b"], tmp_path / "e.png")  # 18 points: a legend by kind
    assert [t.get_text() for t in drawn[1].axes[0].get_legend().get_texts()] == ["pareto", "base", "estimate = test"]
