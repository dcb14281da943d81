"""What the Monitor, Runs, Compare and Try pages do with the runs under the runs directory:
watch one, stop and resume it, list them, show one's results (inline report, CSV and log),
export or try one of its candidates, and compare several side by side.

Runs and candidates are picked from lists, never typed: a typed name that matched nothing
used to show an empty run, and Resume on it started a process that failed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..errors import EvomergeError
from ..search.monitor import RunStatus, activity, list_runs, run_dirs, run_status
from ..search.rundir import RunDir
from .form import field_text
from .imports import library
from .launcher import Launcher
from .paths import output_folder
from .paths import run_dir as run_dir_of
from .views import Figures, best_genes, evaluations_table, member_names, test_table

#: What the Stop button says, by what happened to the run.
STOPPED = {
    "stopped": "Stopped; every finished evaluation is stored. Resume continues it.",
    "not running": "Not running.",
    "still running": "Asked to stop (Ctrl-C), but it is still running a minute later; the monitor shows "
    "when it ends, and Stop may be pressed again.",
}


class RunPages:
    """The callbacks of the pages that read runs; ``loaded`` holds the one model Try keeps."""

    def __init__(self, runs: Path, launcher: Launcher, figures: Figures) -> None:
        self.runs, self.launcher, self.figures = runs, launcher, figures
        self.loaded: dict[tuple[str, str], Any] = {}

    def names(self) -> list[str]:
        """The runs under the runs directory, newest first, and those this GUI started."""
        started = [p.name for p in self.launcher.processes if p.parent == self.runs.resolve()]
        return list(dict.fromkeys([*(d.name for d in run_dirs(self.runs)), *started]))

    def run_choices(self) -> Any:
        """A run picker's choices, read again (a run started elsewhere appears); its value kept."""
        import gradio as gr

        return gr.update(choices=self.names())

    def follow(self, name: str | None) -> Any:
        """A run picker showing ``name`` (the Monitor's, when a run is picked on Runs)."""
        import gradio as gr

        return gr.update(choices=self.names(), value=name) if field_text(name) else gr.update()

    # Monitor

    def watch(self, name: str | None, seen: Any) -> tuple[Any, ...]:
        """The monitor, read again only when the run has changed since this page last looked
        (``seen``, kept per browser page): the timer asks every second."""
        library()  # before any import of the library's heavy modules (imports.py)
        import gradio as gr

        off = (gr.update(interactive=False), gr.update(interactive=False))
        if not field_text(name):
            return "No run selected.", None, gr.update(visible=False), None, None, None, *off, None
        try:
            run_dir = run_dir_of(self.runs, name)
        except EvomergeError as err:
            return str(err), None, gr.update(visible=False), None, None, None, *off, None
        now = (run_dir, activity(run_dir), self.launcher.running(run_dir), self.launcher.failure(run_dir))
        if now == seen:
            return (*(gr.update() for _ in range(8)), seen)
        status = run_status(run_dir)
        if now[2] and status.state != "running":
            status.state = "running"  # started, its lock not taken yet
        summary = status.summary() + (f"\n\n**The run's process failed.** {html.escape(now[3])}" if now[3] else "")
        running = status.state == "running"
        buttons = (gr.update(interactive=running), gr.update(interactive=not running and status.state != "empty"))
        return (summary, self.figures.fitness(status), self.figures.pareto(status), best_genes(status),
                evaluations_table(status), test_table(status), *buttons, now)  # fmt: skip

    def stop(self, name: str | None) -> str:
        try:
            return STOPPED[self.launcher.stop(run_dir_of(self.runs, name))]
        except EvomergeError as err:
            return str(err)

    def resume(self, name: str | None) -> str:
        try:
            self.launcher.resume(run_dir_of(self.runs, name))
        except EvomergeError as err:
            return str(err)
        return f"Resumed **{field_text(name)}**."

    # Runs

    def table_of_runs(self) -> Any:
        """Every run: name, state, evaluations, best (a front's bests need the search's modules)."""
        library()  # before any import of the library's heavy modules (imports.py)
        import pandas as pd

        rows = [[s.path.name, s.state_text(), len(s.evaluations), s.best_text()] for s in list_runs(self.runs)]
        return pd.DataFrame(rows, columns=["run", "state", "evaluations", "best"])

    def refresh(self) -> tuple[Any, ...]:
        """The list of runs and the page's run picker, read again."""
        return self.table_of_runs(), self.run_choices()

    @staticmethod
    def pick(listing: Any, event: Any) -> str:
        """The run on the row clicked, as the browser showed it (the table may have been
        refreshed since this listing was sent)."""
        row = getattr(event, "row_value", None)
        return str(row[0]) if row else str(listing.iloc[event.index[0], 0])

    def details(self, name: str | None) -> tuple[Any, ...]:
        """The chosen run's status, test table, report (inline and to download), its
        evaluations.csv and log to download, and its candidates to export or try."""
        library()  # before any import of the library's heavy modules (imports.py)
        import gradio as gr

        nothing = ("", None, "", None, None, None, gr.update(choices=[], value=None))
        if not field_text(name):
            return nothing
        try:
            status = run_status(run_dir_of(self.runs, name))
        except EvomergeError as err:
            return (str(err), *nothing[1:])
        rd = RunDir(status.path)
        members = member_names(status)
        log = self.launcher.log(status.path)
        return (
            status.summary(),
            test_table(status),
            inline_report(rd.report),
            str(rd.report) if rd.report.exists() else None,
            str(rd.evaluations_csv) if rd.evaluations_csv.exists() else None,
            str(log) if log.exists() else None,
            gr.update(choices=members, value=members[0][1] if members else None),
        )

    def export(self, name: str | None, member: str | None, out: str, force: bool) -> str:
        library()  # before any import of the library's heavy modules (imports.py)
        from ..search.experiment import export_run

        try:
            folder = output_folder(out)
            path = export_run(run_dir_of(self.runs, name), folder, member=field_text(member) or None, force=force)
        except EvomergeError as err:
            said = str(err).replace("another --out", "another folder").replace("pass --force", "tick Overwrite")
            return f"**Not exported.** {html.escape(said)}"
        return f"Exported to `{path}` (HF checkpoint, mergekit_config.yml, model card)."

    # Compare

    def compare(self, names: list[str] | None) -> tuple[Any, ...]:
        """Two or more runs side by side: best so far on one plot per objective, their test
        tables in one (a column says whose), and their winners' genes."""
        library()  # before any import of the library's heavy modules (imports.py)
        import pandas as pd

        statuses: list[RunStatus] = []
        for name in names or []:
            try:
                statuses.append(run_status(run_dir_of(self.runs, name)))
            except EvomergeError:
                continue
        if len(statuses) < 2:
            return "Pick two or more runs.", None, None, None
        tests = [pd.concat([pd.DataFrame({"run": [s.path.name] * len(s.tests)}), test_table(s)], axis=1)
                 for s in statuses if s.tests]  # fmt: skip
        genes: dict[str, dict[str, float]] = {}
        for s in statuses:
            front = s.front
            if front:
                which = "best" if len(s.objectives) < 2 else "pareto:0"
                head = f"{s.path.name} {which} (id:{s.evaluation_id(front[0])})"
                genes[head] = {g: round(v, 4) for g, v in front[0].genes.items()}
        said = " | ".join(f"{s.path.name}: {s.state_text()}, {s.best_text()}" for s in statuses)
        return (
            html.escape(said),
            self.figures.compare(statuses),
            pd.concat(tests, ignore_index=True) if tests else None,
            pd.DataFrame(genes).rename_axis("gene").reset_index() if genes else None,
        )

    # Try a model

    def try_members(self, target: str | None) -> Any:
        """A run's candidates (an exported model's folder has none to choose)."""
        library()  # before any import of the library's heavy modules (imports.py)
        import gradio as gr

        try:
            status = run_status(run_dir_of(self.runs, target))
        except EvomergeError:
            return gr.update(choices=[], value=None, interactive=False)
        members = member_names(status)
        return gr.update(choices=members, value=members[0][1] if members else None, interactive=True)

    def try_model(self, target: str | None, member: str | None, prompt: str, max_new_tokens: float) -> tuple[str, str]:
        """The completion, and which model gave it."""
        library()  # before any import of the library's heavy modules (imports.py)
        from ..evaluate.generation import generate
        from ..search.experiment import load_exported, load_member

        if not field_text(prompt):
            return "", "Type a prompt."
        key = (field_text(target), field_text(member) or "best")
        is_run = "/" not in key[0] and RunDir(self.runs / key[0]).holds_run()  # else a model folder, by its path
        source = f"run {key[0]}, candidate {key[1]}, merged in memory" if is_run else f"exported model {key[0]}"
        try:
            if key not in self.loaded:
                self.loaded.clear()  # one model in memory at a time
                if is_run:
                    self.loaded[key] = load_member(run_dir_of(self.runs, key[0]), key[1])
                else:
                    self.loaded[key] = load_exported(output_folder(key[0]))
            model, tokenizer = self.loaded[key]
            text = generate(model, tokenizer, [prompt], max_new_tokens=int(max_new_tokens or 32), stop=())[0]
        except EvomergeError as err:
            return "", f"error: {html.escape(str(err))}"
        return text, f"From {source}."


def inline_report(report: Path) -> str:
    """report.html in a frame of its own (its styles and scripts stay in it)."""
    if not report.exists():
        return "<p>No report yet: it is written when the run ends (or stops).</p>"
    page = html.escape(report.read_text(errors="replace"), quote=True)
    return f'<iframe id="report-frame" srcdoc="{page}" style="width:100%;height:720px;border:0"></iframe>'
