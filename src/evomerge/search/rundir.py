"""A run directory's layout: the one place its file names and default location are spelled.

Everything a run writes lives under ``RUN_DIR`` (DESIGN.md): ``config.yaml`` (the
resolved config), ``run.sqlite`` (the store, the source of truth), ``evaluations.csv``
and ``results.json`` (exports), ``respondents-<task>.json`` (the IRT respondents'
scores), ``best/`` (the winner), ``report.html`` with its figures, and ``.lock`` (one
writer at a time). Modules ask a ``RunDir`` for these paths and never spell them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import EvomergeError
from .lock import LOCK_FILE, run_lock
from .store import RunStore


class RunNameError(EvomergeError):
    """A run would write a file whose name the file system refuses."""


#: Where runs go when neither the command line nor the config names a directory.
RUNS = Path("runs")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def default(cls, *, config_file: Path | str | None = None, run_dir: Path | str | None = None) -> RunDir:
        """``run_dir`` (the CLI's or ``output.run_dir``), else ``runs/<config file's name>``,
        else ``runs/evolve-<date-time>`` (API calls without a config file)."""
        if run_dir is not None:
            return cls(Path(run_dir))
        if config_file is not None:
            return cls(RUNS / Path(config_file).stem)
        return cls(RUNS / time.strftime("evolve-%Y%m%d-%H%M%S"))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def store_file(self) -> Path:
        return self.path / RunStore.FILE

    @property
    def evaluations_csv(self) -> Path:
        return self.path / "evaluations.csv"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def figure(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def respondents(self, task: str) -> Path:
        """The respondents' scores on ``task`` (reused by a resume and by calibration)."""
        from ..fitness.respondents import respondents_file  # torch: not for a look at a run (the GUI's first page)

        return self.path / respondents_file(task)

    def holds_run(self) -> bool:
        return self.store_file.is_file()

    def open_store(self) -> RunStore:
        return RunStore(self.store_file)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time (``search.lock``)."""
        with run_lock(self.path):
            yield

    def check_names(self, tasks: list[str]) -> None:
        """Refuse task names whose files (``respondents-<task>.json`` and its temp file) would
        exceed the file system's name limit, before the run directory exists."""
        existing = next(p for p in [self.path, *self.path.parents] if p.exists())
        try:
            limit = os.pathconf(existing, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # not POSIX, or the file system will not say
            limit = 255
        for task in tasks:
            longest = len(f".{self.respondents(task).name}.12345678.tmp".encode())  # atomic_file's temp name
            if longest > limit:
                raise RunNameError(
                    f"task {task[:40]!r}... is {len(task.encode())} bytes long: the file system of {existing} "
                    f"allows file names up to {limit} bytes, and the run names files after its tasks; "
                    f"give it a name of at most {limit - longest + len(task.encode())} bytes"
                )

    def first_files(self) -> list[Path]:
        """What a run writes before its first evaluation: removed again if it fails then."""
        store = self.store_file
        names = [self.config, store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")]
        return [*names, self.path / LOCK_FILE, *self.path.glob(self.respondents("*").name)]

    def __str__(self) -> str:
        return str(self.path)
