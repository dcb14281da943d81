"""What a run directory says about its run, read while it goes (the GUI's monitor and
runs pages read this; the run itself never waits on it).

Reading takes no lock: SQLite lets a reader see every committed evaluation while the
writer goes on. Whether a run is running is whether a process holds its ``.lock``.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass, field
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

    @property
    def evaluations(self) -> list[EvaluationRow]:
        """The candidates that were scored (failed ones left out)."""
        return [r for r in self.every if r.ok]

    @property
    def best(self) -> list[float | None]:
        return list(self.generations[-1].best["best"]) if self.generations else []

    @property
    def elapsed_s(self) -> float:
        return self.generations[-1].elapsed_s if self.generations else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the mean pace so far, when the budget is in generations."""
        done = len(self.generations)
        if self.state != "running" or not done or not self.planned_generations:
            return None
        return max(0.0, self.elapsed_s / done * (self.planned_generations - done))

    def summary(self) -> str:
        best = ", ".join("-" if b is None else f"{b:.4f}" for b in self.best) or "-"
        total = f"/{self.planned_generations}" if self.planned_generations else ""
        eta = "" if self.eta_s is None else f" | about {self.eta_s:.0f} s left"
        return (
            f"{self.state} | generation {len(self.generations)}{total} | {len(self.evaluations)} evaluations"
            f" | best {best} | {self.elapsed_s:.0f} s{eta}"
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
        )
    finally:
        store.close()
    return status


def list_runs(root: Path | str) -> list[RunStatus]:
    """Every run directory directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and RunDir(d).holds_run()]
    return [run_status(d) for d in sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True)]


def _yaml(text: str | None) -> dict[str, Any]:

    return (load_yaml(text) or {}) if text else {}
