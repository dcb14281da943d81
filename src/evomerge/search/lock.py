"""One writer per run directory: an OS file lock held while a process runs or resumes it.

Two processes writing one SQLite store would interleave their generations and collide
on the same candidates (minutes in, with a raw ``IntegrityError``). ``flock`` on
``RUN_DIR/.lock`` makes the second refuse at once. The kernel drops the lock when its
process ends, however it ends (SIGKILL included), so a dead run never leaves a stale
lock; the file's text (PID, start time) only serves the message. Reading a run
(``report``, ``export``, a GUI view) takes no lock: SQLite's WAL lets readers in.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import EvomergeError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLockedError(EvomergeError):
    """Another process is running or resuming this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block, or raise ``RunLockedError`` at once."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunLockedError(
                f"{run_dir} is in use by {holder}; wait for it to finish, or stop it (a stopped run "
                f"continues with `evomerge resume {run_dir}`). Two processes must not write one run."
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (since {started})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
