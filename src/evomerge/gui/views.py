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
        self.compared = 0  # the Compare page's pictures, numbered
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

        if len(status.objectives) < 2:
            return gr.update(visible=False, value=None)
        if not status.evaluations:
            return gr.update(visible=True, value=None)
        state = (len(status.evaluations), len(status.tests))
        front = status.front
        drawn = self._draw(status.path, "pareto", state, lambda out: plots.pareto_front(
            status.evaluations, front, status.objectives, out, status.tests))  # fmt: skip
        return gr.update(visible=True, value=drawn)

    def compare(self, statuses: list[RunStatus]) -> str | None:
        """Several runs' best so far, one plot per objective; drawn each time it is asked."""
        from ..report import plots

        self.compared += 1
        out = self.folder / f"compare-{self.compared}.png"
        runs = [(s.path.name, s.generations, s.objectives, s.maximize) for s in statuses]
        with plots.literal_text():
            path = plots.fitness_of_runs(runs, out)
        (self.folder / f"compare-{self.compared - 1}.png").unlink(missing_ok=True)
        return None if path is None else str(path)

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
    """The held-out scores, then what the search estimated for each candidate on its
    objectives (the gap between the two is what the estimator costs)."""
    import pandas as pd  # a Gradio dependency

    columns = test_columns(status.tests, status.objectives)
    rows = [
        [t.name, t.kind, *(round(t.scores[n], 4) for n in columns),
         *(None if t.search_scores is None else round(t.search_scores.get(n, float("nan")), 4)
           for n in status.objectives)]
        for t in status.tests
    ]  # fmt: skip
    estimates = [f"search estimate: {n}" for n in status.objectives]
    return pd.DataFrame(rows, columns=["candidate", "kind", *columns, *estimates])


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


def member_names(status: RunStatus) -> list[tuple[str, str]]:
    """``(label, id:N)`` for each member ``best``/``pareto:K`` (numbered as the run numbers
    them now), then each other evaluation, newest first: the label shows its scores, and the
    value names the evaluation itself, so a front that changes under the user's choice
    does not change what was chosen."""
    front = status.front
    single = len(status.objectives) < 2
    out, taken = [], set()
    for k, row in enumerate(front):
        number = status.evaluation_id(row)
        taken.add(number)
        out.append((f"{'best' if single else f'pareto:{k}'} (id:{number}): {_scores(status, row)}", f"id:{number}"))
    for number, row in list(enumerate(status.every, 1))[::-1]:
        if row.ok and number not in taken:
            out.append((f"id:{number}: {_scores(status, row)}", f"id:{number}"))
    return out


def _scores(status: RunStatus, row: Any) -> str:
    return ", ".join(f"{n} {v:.4f}" for n, v in zip(status.objectives, row.objectives, strict=True))


def best_genes(status: RunStatus, most: int = 8) -> Any:
    """The winner's genes; with several objectives one column per Pareto member (the first
    ``most``), headed by its name and id, so no member stands for the front."""
    import pandas as pd

    front = status.front[:most]
    if not front:
        return pd.DataFrame([], columns=["gene", "best so far"])
    single = len(status.objectives) < 2
    heads = ["best so far"] if single else [f"pareto:{k} (id:{status.evaluation_id(r)})" for k, r in enumerate(front)]
    rows = [[name, *(round(r.genes.get(name, float("nan")), 4) for r in front)] for name in front[0].genes]
    return pd.DataFrame(rows, columns=["gene", *heads])
