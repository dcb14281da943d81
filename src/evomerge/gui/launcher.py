"""Runs the GUI starts, stops and resumes: each is ``python -m evomerge run`` in a process of
its own (a new session, so the GUI's worker threads never hold a model and Ctrl-C semantics
stay the CLI's). Stop sends SIGINT, which leaves every finished evaluation stored; Resume is
``evomerge resume`` on the same directory."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import EvomergeError
from ..search.monitor import is_running, lock_holder
from ..search.rundir import RunDir
from .paths import run_dir as run_dir_of

log = logging.getLogger(__name__)


class Launcher:
    """The runs this GUI started, by run directory."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    def start(self, raw: dict[str, Any], name: str) -> Path:
        from ..loader import resolve_relative_paths

        run_dir = run_dir_of(self.runs, name)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise EvomergeError(f"{run_dir} exists already; choose another run name (or Resume it on Monitor)")
        resolve_relative_paths(raw, Path.cwd())  # paths typed in the form are from where the GUI runs
        self.runs.mkdir(parents=True, exist_ok=True)
        config = self.runs / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        return self._spawn(run_dir, ["run", str(config), "--run-dir", str(run_dir)])

    def resume(self, run_dir: Path) -> Path:
        if not RunDir(run_dir).holds_run():
            raise EvomergeError(f"no run named {run_dir.name!r} under {self.runs}; check the name on Runs")
        if self.running(run_dir) or is_running(run_dir):
            raise EvomergeError(f"{run_dir.name} is running")
        return self._spawn(run_dir, ["resume", str(run_dir)])

    def stop(self, run_dir: Path, timeout: float = 60) -> str:
        """SIGINT, as Ctrl-C: the run stops after storing what finished (exit 130). A run this
        GUI did not start (the CLI's, an earlier GUI's) is reached through its lock's PID.
        Says what happened: ``stopped``, ``not running``, or ``still running`` when the
        process has not ended within ``timeout`` (it is never killed: it would lose the
        candidate or the test in progress)."""
        proc = self.processes.get(run_dir)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return "still running"
            return "stopped"
        pid = lock_holder(run_dir)
        if pid is None:
            return "not running"
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while is_running(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        return "still running" if is_running(run_dir) else "stopped"

    def running(self, run_dir: Path) -> bool:
        proc = self.processes.get(run_dir)
        return proc is not None and proc.poll() is None

    def failure(self, run_dir: Path) -> str | None:
        """Why a run this GUI started ended with an error (a missing model, a bad data file):
        its ``error:`` line from the log, or None if it runs, finished or was stopped."""
        proc = self.processes.get(run_dir)
        if proc is None or proc.poll() in (None, 0, 130, 143):  # finished, or stopped (Ctrl-C, SIGTERM)
            return None
        log_path = self.log(run_dir)
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        return f"{said} (exit {proc.returncode}; the whole output is in {log_path})"

    def log(self, run_dir: Path) -> Path:
        return self.runs / f"{run_dir.name}.log"

    def _spawn(self, run_dir: Path, args: list[str]) -> Path:
        """The run in a session of its own: Ctrl-C on the GUI's terminal does not stop it (the
        GUI, restarted, still reaches it through its lock); its output goes to RUNS/NAME.log."""
        command = [sys.executable, "-m", "evomerge", *args, "--no-progress"]
        with self.log(run_dir).open("ab") as log_file:  # the child keeps its own copy
            self.processes[run_dir] = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        return run_dir
