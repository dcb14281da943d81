"""What a run directory says about its run, read while it goes (the GUI's monitor and
runs pages read this; the run itself never waits on it).

Reading takes no lock: SQLite lets a reader see every committed evaluation while the
writer goes on. Whether a run is running is whether a process holds its ``.lock``.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..yamltext import load_yaml
from .lock import LOCK_FILE
from .rundir import RunDir
from .store import EvaluationRow, GenerationRow, RunStore, TestRow


@dataclass
class RunStatus:
    """One look at a run: where it is, its best so far, and its test table once tested."""

    path: Path
    state: str  # running | finished | interrupted | empty
    objectives: list[str] = field(default_factory=list)
    maximize: list[bool] = field(default_factory=list)
    generations: list[GenerationRow] = field(default_factory=list)
    every: list[EvaluationRow] = field(default_factory=list)  # failed ones too, in evaluations.csv's order
    tests: list[TestRow] = field(default_factory=list)
    planned_generations: int | None = None
    stop_reason: str | None = None
    phase: dict[str, Any] | None = None  # what the run's process does now (progress.reporting)

    @property
    def evaluations(self) -> list[EvaluationRow]:
        """The candidates that were scored (failed ones left out)."""
        return [r for r in self.every if r.ok]

    @property
    def best(self) -> list[float | None]:
        return list(self.generations[-1].best["best"]) if self.generations else []

    @cached_property
    def front(self) -> list[EvaluationRow]:
        """The best evaluation, or the Pareto front (as ``best`` and ``pareto:K`` name them);
        one look at a run reads it several times (status line, genes, candidates)."""
        from .loop import winners

        return winners(self.evaluations, self.maximize)

    @cached_property
    def _ids(self) -> dict[int, int]:
        return {r.id: n for n, r in enumerate(self.every, 1)}

    def evaluation_id(self, row: EvaluationRow) -> int:
        """``row``'s ``id:N``: its rank in evaluations.csv, failed evaluations included."""
        return self._ids[row.id]

    @property
    def stopped_in(self) -> str:
        """The phase a run that is not running stopped in before its end (``held-out test
        2/6``), or "" when it ended, or stopped during the search (where resume is exact)."""
        if self.state == "running" or not self.phase:
            return ""
        name = str(self.phase.get("name", ""))
        return "" if name in ("done", "searching") or name.startswith("scoring respondents") else self.phase_text_of()

    @property
    def generations_elapsed_s(self) -> float:
        """The search's own seconds, over its finished generations."""
        return self.generations[-1].elapsed_s if self.generations else 0.0

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds since the running process started the run (loading, respondents
        and the test included); once stopped, the search's own time."""
        if self.state == "running" and self.phase:
            return max(0.0, time.time() - float(self.phase["since"]))
        return self.generations_elapsed_s

    @property
    def phase_text(self) -> str:
        """``scoring respondents (mix) 3/7``, ``held-out test 2/6``, ``searching``, ... while
        running; ``loading the models`` before the run has stored a phase."""
        if self.state != "running":
            return ""
        return self.phase_text_of() if self.phase else "loading the models"

    def phase_text_of(self) -> str:
        phase = self.phase or {}
        total = int(phase.get("total") or 0)
        return str(phase.get("name", "")) + (f" {phase.get('done', 0)}/{total}" if total else "")

    @property
    def eta_s(self) -> float | None:
        """Seconds left in the phase that can tell: the search at its mean time per
        generation (then the held-out test), or the test at its pace so far."""
        if self.state != "running":
            return None
        phase = self.phase or {}
        name = str(phase.get("name", ""))
        if name.startswith("held-out test"):
            done, total = int(phase.get("done", 0)), int(phase.get("total", 0))
            spent = time.time() - float(phase.get("at", time.time()))
            return None if not done else max(0.0, spent / done * (total - done))
        done = len(self.generations)
        if name not in ("", "searching") or not done or not self.planned_generations:
            return None
        return max(0.0, self.generations_elapsed_s / done * (self.planned_generations - done))

    def best_text(self) -> str:
        """The best so far: one candidate's score, or with several objectives each objective's
        best and the candidate that reached it (they are different candidates)."""
        if len(self.objectives) < 2:
            return "best " + (", ".join("-" if b is None else f"{b:.4f}" for b in self.best) or "-")
        rows = self.evaluations
        if not rows:
            return "best -"
        parts = []
        for k, (name, up) in enumerate(zip(self.objectives, self.maximize, strict=True)):
            values = [r.objectives[k] for r in rows]
            row = rows[values.index(max(values) if up else min(values))]  # the earliest on ties
            parts.append(f"{name} {row.objectives[k]:.4f} (id:{self.evaluation_id(row)})")
        return f"Pareto front of {len(self.front)} | best per objective: " + ", ".join(parts)

    def state_text(self) -> str:
        """The state, and for a run stopped before its end the phase it stopped in."""
        where = self.stopped_in
        if not where:
            return self.state
        return f"interrupted | stopped during the {where}; Resume finishes it"

    def summary(self) -> str:
        best = self.best_text()
        total = f"/{self.planned_generations}" if self.planned_generations else ""
        doing = self.phase_text
        eta = (
            ""
            if self.eta_s is None
            else f" | about {self.eta_s:.0f} s left"
            + (" in the search, then the held-out test" if doing == "searching" else "")
        )
        return (
            f"{self.state_text()} | {doing + ' | ' if doing else ''}generation {len(self.generations)}{total} | "
            f"{len(self.evaluations)} evaluations | {best} | {self.elapsed_s:.0f} s"
            + ("" if self.state == "running" else " of search")  # stopped: the search's own time
            + eta
        )


def is_running(run_dir: Path | str) -> bool:
    """Whether a process holds the run's lock (taken by run, resume and test)."""
    lock = Path(run_dir) / LOCK_FILE
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lock_holder(run_dir: Path | str) -> int | None:
    """The PID of the process running ``run_dir`` (it writes itself into the lock), or None
    when none runs it: so that a run started elsewhere (the CLI, an earlier GUI) can be stopped."""
    if not is_running(run_dir):
        return None
    found = re.match(r"process (\d+)", (Path(run_dir) / LOCK_FILE).read_text(errors="replace"))
    return int(found[1]) if found else None


def activity(run_dir: Path | str) -> tuple[Any, ...]:
    """What changes whenever the run does: its store's files (SQLite's WAL takes each commit)
    and whether it runs. Cheap (a few stat calls): a monitor reads the run again only when
    this has changed."""
    rd = RunDir(Path(run_dir))
    files = [rd.store_file, rd.store_file.with_name(rd.store_file.name + "-wal")]
    stats = [(st.st_mtime_ns, st.st_size) if (st := _stat(f)) else None for f in files]
    return (*stats, is_running(rd.path))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def run_status(run_dir: Path | str) -> RunStatus:
    rd = RunDir(Path(run_dir))
    running = is_running(rd.path)
    if not rd.store_file.exists():
        return RunStatus(rd.path, "running" if running else "empty")
    store = RunStore(rd.store_file)
    try:
        config: dict[str, Any] = _yaml(store.get("config"))
        status = RunStatus(
            rd.path,
            "running" if running else ("finished" if store.get("stop_reason") else "interrupted"),
            objectives=store.get("objectives") or [],
            maximize=store.get("maximize") or [],
            generations=store.generations(),
            every=list(store.evaluations(failed=True)),
            tests=store.tests(),
            planned_generations=(config.get("search") or {}).get("generations"),
            stop_reason=store.get("stop_reason"),
            phase=store.get("phase"),
        )
    finally:
        store.close()
    return status


def run_dirs(root: Path | str) -> list[Path]:
    """Every run directory directly under ``root``, newest first by when it started (its
    ``config.yaml``, written once): the folder's own time changes whenever its store is
    read, and a list ordered by it reordered itself under the user's click."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and RunDir(d).holds_run()]

    def started(d: Path) -> tuple[float, str]:
        config = RunDir(d).config
        return (config.stat().st_mtime if config.exists() else 0.0), d.name

    return sorted(dirs, key=started, reverse=True)


def list_runs(root: Path | str) -> list[RunStatus]:
    """Every run under ``root`` (as ``run_dirs`` orders them), read."""
    return [run_status(d) for d in run_dirs(root)]


def _yaml(text: str | None) -> dict[str, Any]:

    return (load_yaml(text) or {}) if text else {}
