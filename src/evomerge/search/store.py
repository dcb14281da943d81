"""The run store: one SQLite file in the run directory that holds everything a run did.

- ``run``: the resolved config and run facts (key/value);
- ``evaluations``: every evaluated candidate: genes, recipe, objective values, per-item
  scores, merge and evaluation seconds; one row per distinct recipe;
- ``generations``: after each ask/tell round, what was asked, the population the
  algorithm holds, the best so far, and where the time went;
- ``tests``: the held-out scores of the winners and the baselines.

Each evaluation is committed as soon as it finishes (SQLite's journal makes a commit
atomic, so a SIGKILL loses at most the evaluation in flight). ``evaluations.csv`` is
exported from here.

The layout's version is SQLite's ``user_version`` (``SCHEMA_VERSION``). A store of a
newer version is refused; a store of an older one is brought up to date when opened
(version 0, before versions: evaluations gain ``state``, ``error`` and ``position``).
Rows are read by column name, so adding a column never shifts what a reader sees.

Evaluations are read in the order the algorithm asked for them (generation, then
``position`` in its ask), whatever order they finished and were committed in, so a
parallel executor that stores each result as it arrives gives the same
``evaluations.csv`` as a sequential one; the CSV's ``id`` is that rank.
"""

from __future__ import annotations

import csv
import errno
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import EvomergeError, StorageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    x TEXT NOT NULL,
    genes TEXT NOT NULL,
    recipe TEXT NOT NULL,
    objectives TEXT NOT NULL,
    items TEXT NOT NULL,
    merge_s REAL NOT NULL,
    eval_s REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok',
    error TEXT,
    position INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    asked TEXT NOT NULL,
    evaluations INTEGER NOT NULL,
    state TEXT NOT NULL,
    best TEXT NOT NULL,
    seconds TEXT NOT NULL,
    elapsed_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tests (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    position INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    scores TEXT NOT NULL,
    search_scores TEXT,
    seconds REAL NOT NULL
);
"""
SCHEMA_VERSION = 1
#: Columns added since version 0, with their definitions (the migration adds them).
_ADDED_COLUMNS = {
    "evaluations": {"state": "TEXT NOT NULL DEFAULT 'ok'", "error": "TEXT", "position": "INTEGER NOT NULL DEFAULT 0"}
}
#: Columns of evaluations.csv that hold times, which differ between identical runs.
TIME_COLUMNS = ("merge_s", "eval_s")
#: A candidate's state: evaluated, or raised (its error stored, search.on_error applied).
OK, FAIL = "ok", "fail"


class RunStoreError(EvomergeError):
    """A run store that cannot be opened or does not match the run."""


@dataclass(frozen=True)
class EvaluationRow:
    id: int
    generation: int
    digest: str
    x: list[float]
    genes: dict[str, float]
    recipe: str
    objectives: list[float]
    items: dict[str, dict[str, float]]
    merge_s: float
    eval_s: float
    state: str = OK
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == OK


@dataclass(frozen=True)
class GenerationRow:
    generation: int
    asked: list[str]  # recipe digests, in the order the algorithm asked
    evaluations: int  # evaluations in the store after this generation
    state: dict[str, Any]  # the algorithm's population (X, F) and counters
    best: dict[str, Any]
    seconds: dict[str, float]  # ask, evaluate (merge + eval), store, tell, wall
    elapsed_s: float  # search wall time up to here, across resumes


@dataclass(frozen=True)
class TestRow:
    name: str
    kind: str  # best, pareto, endpoint, base, default
    recipe: str  # mergekit YAML
    scores: dict[str, float]  # objective (then check) -> held-out score
    search_scores: dict[str, float] | None  # the search's estimate, for evolved candidates
    seconds: float


def test_columns(tests: Sequence[TestRow], objectives: Sequence[str]) -> list[str]:
    """A test table's score columns: the objectives, then the checks (``objective: false``
    tasks) that the rows hold, in their order."""
    return [*objectives, *(n for n in (tests[0].scores if tests else {}) if n not in objectives)]


class RunStore:
    FILE = "run.sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                self.db.close()
                raise RunStoreError(
                    f"{self.path} was written by a newer evomerge (store version {version}; this one reads up to "
                    f"{SCHEMA_VERSION}). Upgrade evomerge (pip install -U evomerge) to open this run."
                )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            if version < SCHEMA_VERSION:
                self._migrate()
        except sqlite3.DatabaseError as err:
            raise RunStoreError(
                f"{self.path} is not a readable run store ({err}): the file is damaged (a copy cut short, a full "
                f"disk, a disk error), so its evaluations cannot be read. evaluations.csv "
                "beside it keeps those exported so far; start a new run in another directory (or remove this one "
                "to reuse its name)"
            ) from err

    def _migrate(self) -> None:
        """Bring a store written before ``SCHEMA_VERSION`` up to date, in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        for table, columns in _ADDED_COLUMNS.items():
            have = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.execute("COMMIT")

    @classmethod
    def in_dir(cls, run_dir: Path | str) -> RunStore:
        return cls(Path(run_dir) / cls.FILE)

    def close(self) -> None:
        self.db.close()

    # -- run facts -------------------------------------------------------------------

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM run WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO run VALUES (?, ?)", (key, json.dumps(value)))

    def unset(self, key: str) -> None:
        self.db.execute("DELETE FROM run WHERE key = ?", (key,))

    # -- evaluations -----------------------------------------------------------------

    def add_evaluation(
        self,
        generation: int,
        digest: str,
        x: Sequence[float] | np.ndarray,
        genes: dict[str, float],
        recipe: str,
        objectives: Sequence[float],
        items: dict[str, dict[str, float]],
        merge_s: float,
        eval_s: float,
        *,
        error: str | None = None,
        position: int = 0,
    ) -> None:
        """Store one evaluation; with ``error``, a FAIL row (no objective values) that a
        later evaluation of the same recipe replaces in place (its id stays)."""
        self.db.execute(
            "INSERT INTO evaluations "
            "(generation, digest, x, genes, recipe, objectives, items, merge_s, eval_s, state, error, position) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE SET "
            "generation = excluded.generation, x = excluded.x, genes = excluded.genes, recipe = excluded.recipe, "
            "objectives = excluded.objectives, items = excluded.items, merge_s = excluded.merge_s, "
            "eval_s = excluded.eval_s, state = excluded.state, error = excluded.error",
            (
                generation,
                digest,
                json.dumps([float(v) for v in x]),
                json.dumps(genes),
                recipe,
                json.dumps([float(v) for v in objectives]),
                json.dumps(items),
                merge_s,
                eval_s,
                OK if error is None else FAIL,
                error,
                position,
            ),
        )

    def objectives_of(self, digests: Sequence[str], *, failed: bool = False) -> dict[str, list[float] | None]:
        """The stored objective values of those ``digests`` that were evaluated (``failed``:
        and of those that failed, as None)."""
        found: dict[str, list[float] | None] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT digest, objectives, state FROM evaluations WHERE digest IN ({marks})", chunk
            ):
                if row["state"] == OK:
                    found[row["digest"]] = json.loads(row["objectives"])
                elif failed:
                    found[row["digest"]] = None
        return found

    def evaluations(self, *, failed: bool = False) -> Iterator[EvaluationRow]:
        """Every evaluation in the order stored (``failed``: FAIL rows too)."""
        for row in self.db.execute("SELECT * FROM evaluations ORDER BY generation, position, id"):
            if row["state"] != OK and not failed:
                continue
            yield EvaluationRow(
                id=row["id"],
                generation=row["generation"],
                digest=row["digest"],
                x=json.loads(row["x"]),
                genes=json.loads(row["genes"]),
                recipe=row["recipe"],
                objectives=json.loads(row["objectives"]),
                items=json.loads(row["items"]),
                merge_s=row["merge_s"],
                eval_s=row["eval_s"],
                state=row["state"],
                error=row["error"],
            )

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    # -- generations -----------------------------------------------------------------

    def add_generation(self, row: GenerationRow) -> None:
        self.db.execute(
            "INSERT INTO generations (generation, asked, evaluations, state, best, seconds, elapsed_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.generation,
                json.dumps(row.asked),
                row.evaluations,
                json.dumps(row.state),
                json.dumps(row.best),
                json.dumps(row.seconds),
                row.elapsed_s,
            ),
        )

    def generations(self) -> list[GenerationRow]:
        return [
            GenerationRow(
                generation=r["generation"],
                asked=json.loads(r["asked"]),
                evaluations=r["evaluations"],
                state=json.loads(r["state"]),
                best=json.loads(r["best"]),
                seconds=json.loads(r["seconds"]),
                elapsed_s=r["elapsed_s"],
            )
            for r in self.db.execute("SELECT * FROM generations ORDER BY generation")
        ]

    # -- tests -----------------------------------------------------------------------

    def add_test(self, row: TestRow, position: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO tests (name, kind, position, recipe, scores, search_scores, seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                row.kind,
                position,
                row.recipe,
                json.dumps(row.scores),
                None if row.search_scores is None else json.dumps(row.search_scores),
                row.seconds,
            ),
        )

    def tests(self) -> list[TestRow]:
        return [
            TestRow(
                name=r["name"],
                kind=r["kind"],
                recipe=r["recipe"],
                scores=json.loads(r["scores"]),
                search_scores=None if r["search_scores"] is None else json.loads(r["search_scores"]),
                seconds=r["seconds"],
            )
            for r in self.db.execute("SELECT * FROM tests ORDER BY position")
        ]

    # -- export ----------------------------------------------------------------------

    def export_csv(self, path: Path | str, gene_names: Sequence[str], objective_names: Sequence[str]) -> Path:
        """One row per evaluation: genes and objective values by name, then times, then
        the state (ok or fail) and a failed candidate's error (its objectives left empty)."""
        path = Path(path)
        with atomic_file(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["id", "generation", "digest", *gene_names, *objective_names, *TIME_COLUMNS, "state", "error"]
            )
            for rank, e in enumerate(self.evaluations(failed=True), 1):
                values = [repr(v) for v in e.objectives] if e.ok else [""] * len(objective_names)
                writer.writerow(
                    [
                        rank,
                        e.generation,
                        e.digest,
                        *(e.genes[g] for g in gene_names),
                        *values,
                        f"{e.merge_s:.4f}",
                        f"{e.eval_s:.4f}",
                        e.state,
                        e.error or "",
                    ]
                )
        return path


@contextmanager
def storage_errors(path: Path, *, run: bool = True) -> Iterator[None]:
    """A run directory (``run``) or an output folder that cannot be written (a full disk, no
    permission, a busy mount point) or read (a damaged store) as a ``StorageError`` saying
    what to do. SQLite commits each evaluation in a transaction and outputs are written
    atomically, so what was stored before stays whole and nothing partial is left."""
    from safetensors import SafetensorError

    try:
        yield
    except (sqlite3.Error, SafetensorError, OSError) as err:
        code = getattr(err, "errno", None)
        said = "" if isinstance(err, OSError) else str(err)  # SQLite's and safetensors' errors carry no errno
        full = code in (errno.ENOSPC, errno.EDQUOT) or "full" in said or "No space" in said
        denied = code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in said
        busy = code == errno.EBUSY
        if isinstance(err, OSError) and not (full or denied or busy):
            raise
        where = "run directory (--run-dir / output.run_dir)" if run else "output folder (--out)"
        if full and run:
            advice = (
                f"free some space, then continue with `evomerge resume {path}`: every finished evaluation is stored"
            )
        elif full:
            advice = "free some space (or choose another --out) and try again; nothing partial was left"
        elif denied:
            advice = f"make it writable or choose another {where}"
        elif busy:
            advice = f"it is a mount point or in use: give a folder inside it, or another {where}"
        else:
            advice = f"{RunStore.FILE} is damaged; the run cannot be read (start a new run in another directory)"
        raise StorageError(f"{path}: {err}. {advice[0].upper()}{advice[1:]}") from err
