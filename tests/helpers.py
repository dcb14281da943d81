"""What several test modules share, in one place: the small demo experiment, its data, the
CLI run in this process, and the real-process helpers (a run started, a resume).

The CLI runs in the test's own process where the process is not the point: starting one
costs seconds of imports (torch, transformers) on this 2-core machine. Real processes stay
where they are the point: SIGKILL, SIGINT, the run lock, a full disk, the GUI server, Ray.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml
from typer.testing import CliRunner

from evomerge.search.store import TIME_COLUMNS

#: The small experiment's population (its GA runs POP x 3 by default).
POP = 6


def small_split(demo_family: Path, task: str) -> tuple[Path, Path]:
    """A demo family task's search and test files cut to every 5th search item and every
    10th test item (mix: 180 and 90), every skill kept: real generation at a fraction of the
    cost, for tests of plumbing. Written once per family into the temp folder (the family's
    own folder is never written)."""
    key = hashlib.sha256(str(demo_family.resolve()).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "evomerge-test-tasks" / key / task
    paths = (folder / "search.jsonl", folder / "test.jsonl")
    for path, step in zip(paths, (5, 10), strict=True):
        if not path.exists():
            lines = (demo_family / "data" / task / path.name).read_text().splitlines()[::step]
            folder.mkdir(parents=True, exist_ok=True)
            scratch = path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text("\n".join(lines) + "\n")
            scratch.replace(path)  # atomic: a parallel test never reads half a file
    return paths


def small_mix(demo_family: Path) -> tuple[Path, Path]:
    """The mix task (every skill's items) cut small: 180 search items, 90 test items."""
    return small_split(demo_family, "mix")


def small_config(demo_family: Path, **search: object) -> dict:
    """The demo experiment at a test's budget, on the small mix task: mp-IRT on 60 anchors
    fitted on 3 random merges besides the base and the endpoints, GA POP x 3."""
    search_file, test_file = small_mix(demo_family)
    return {
        "models": {
            "base": "demo:models/base",
            "endpoints": ["demo:models/add", "demo:models/greek", "demo:models/cyrillic"],
        },
        "merge": {"method": "task_arithmetic"},
        "tasks": [
            {
                "name": "mix",
                "search": str(search_file),
                "test": str(test_file),
                "extractor": "exact",
                "strict": True,
                "max_new_tokens": 24,
                "batch_size": 128,
            }
        ],
        "fitness": {"estimator": "mpirt", "anchors": 60, "respondents": 3},
        "search": {"algorithm": "GA", "population_size": POP, "generations": 3, **search},
        "seed": 0,
    }


def csv_without_times(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(path.open())]


def cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``evomerge ARGS`` in this process, as a finished process reads: exit code, stdout,
    stderr (an uncaught exception's traceback on stderr, exit code 1, as Python prints it).
    ``input`` is its stdin. The environment, the working directory and the ``evomerge``
    logger's level are restored afterwards."""
    from evomerge.cli import app

    saved_env, saved_cwd, level = dict(os.environ), Path.cwd(), logging.getLogger("evomerge").level
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=True)
    finally:
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logging.getLogger("evomerge").setLevel(level)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["evomerge", *args], result.exit_code, result.stdout, stderr)


def cli_process(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``evomerge ARGS`` in a process of its own, for where the process is the point."""
    command = [sys.executable, "-m", "evomerge", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def start_run(demo_family: Path, run_dir: Path, generations: int = 3, **popen: object) -> subprocess.Popen:
    """`evomerge run` of the small config into ``run_dir``, in a process of its own."""
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(yaml.safe_dump(small_config(demo_family, generations=generations)))
    command = [sys.executable, "-m", "evomerge", "run", str(config), "--run-dir", str(run_dir), "--no-progress"]
    return subprocess.Popen(command, **popen)  # type: ignore[call-overload]


def evaluations_so_far(run_dir: Path) -> int:
    """The evaluations a running run has committed (0 before its store has a schema).
    Only an existing store is opened: connecting would create the file under the run."""
    if not (run_dir / "run.sqlite").exists():
        return 0
    try:
        return sqlite3.connect(run_dir / "run.sqlite").execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def resume_cli(run_dir: Path) -> subprocess.CompletedProcess:
    """`evomerge resume RUN_DIR` (in this process: the resume's own process is not the
    point); it must succeed."""
    out = cli("resume", str(run_dir), "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    return out
