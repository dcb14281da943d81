"""What the Monitor and Runs pages show of a run: its figures (redrawn only when the run
changed) and its tables (the held-out test, the latest evaluations, the best genes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..search.monitor import RunStatus
from ..search.store import test_columns


class Figures:
    """The monitor's plots, drawn once per state of a run into one scratch folder (every
    browser page watching the run gets the same file); the previous picture of a run is
    removed once Gradio has its copy."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.drawn: dict[tuple[Path, str], tuple[tuple[Any, ...], Path]] = {}

    def fitness(self, status: RunStatus) -> str | None:
        """The picture's path, or None before the first generation."""
        from ..report import plots

        if not status.generations:
            return None
        state = (len(status.generations), status.state)
        return self._draw(status.path, "fitness", state, lambda out: plots.fitness_per_generation(
            status.generations, status.objectives, status.maximize, out))  # fmt: skip

    def pareto(self, status: RunStatus) -> Any:
        import gradio as gr

        from ..report import plots
        from ..search.loop import winners

        if len(status.objectives) < 2:
            return gr.update(visible=False, value=None)
        if not status.evaluations:
            return gr.update(visible=True, value=None)
        state = (len(status.evaluations), len(status.tests))
        front = winners(status.evaluations, status.maximize)
        drawn = self._draw(status.path, "pareto", state, lambda out: plots.pareto_front(
            status.evaluations, front, status.objectives, out, status.tests))  # fmt: skip
        return gr.update(visible=True, value=drawn)

    def _draw(self, run: Path, kind: str, state: tuple[Any, ...], draw: Any) -> str | None:
        from ..report import plots

        last = self.drawn.get((run, kind))
        if last is not None and last[0] == state:
            return str(last[1])
        out = self.folder / f"{run.name}-{kind}-{'-'.join(map(str, state))}.png"
        with plots.literal_text():
            path = draw(out)
        if last is not None:
            last[1].unlink(missing_ok=True)
        if path is None:
            return None
        self.drawn[(run, kind)] = (state, Path(path))
        return str(path)


def test_table(status: RunStatus) -> Any:
    import pandas as pd  # a Gradio dependency

    columns = test_columns(status.tests, status.objectives)
    rows = [[t.name, t.kind, *(round(t.scores[n], 4) for n in columns)] for t in status.tests]
    return pd.DataFrame(rows, columns=["candidate", "kind", *columns])


def evaluations_table(status: RunStatus, last: int = 200) -> Any:
    """The newest evaluations, as evaluations.csv has them (its ids are what ``id:N`` takes)."""
    import pandas as pd

    rows = []
    for number, row in list(enumerate(status.every, 1))[-last:][::-1]:
        values = [round(v, 4) for v in row.objectives] if row.ok else [None] * len(status.objectives)
        gene_values = [round(v, 4) for v in row.genes.values()]
        rows.append(
            [number, row.generation, *gene_values, *values, round(row.merge_s + row.eval_s, 2), row.error or ""]
        )
    names = list(status.every[0].genes) if status.every else []
    return pd.DataFrame(rows, columns=["id", "generation", *names, *status.objectives, "seconds", "error"])


def best_genes(status: RunStatus) -> Any:
    import pandas as pd

    from ..search.loop import winners

    rows = winners(status.evaluations, status.maximize) if status.evaluations else []
    genes = [[name, round(value, 4)] for name, value in rows[0].genes.items()] if rows else []
    return pd.DataFrame(genes, columns=["gene", "best so far"])
