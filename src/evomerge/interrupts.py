"""Ctrl-C and SIGTERM for the command line: both stop a run the same way, cleanly.

SIGTERM (``kill``, a scheduler's stop, a container's shutdown) would end the process at
once, leaving temp files and no word on how to go on. It is raised instead as
``Terminated``, a ``KeyboardInterrupt``, where Ctrl-C's would be: every ``finally`` and
temp-file clean-up runs, every finished evaluation is already stored, and the command
prints how to resume and exits 143 (130 for Ctrl-C), as a shell reports the signal.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's ``KeyboardInterrupt`` is."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def install() -> None:
    """SIGTERM raised as ``Terminated``; SIGINT restored where it arrives ignored (started
    in the background: `cmd &` in a script, some launchers), or neither Ctrl-C, `kill -INT`
    nor the GUI's Stop would stop a run. Interrupting is always safe: resume is exact."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)


def _code(stop: KeyboardInterrupt) -> int:
    return 143 if isinstance(stop, Terminated) else 130


@contextlib.contextmanager
def hint(console: Console, run_dir: Path) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block: say how to go on with the run, and exit."""
    try:
        yield
    except KeyboardInterrupt as stop:
        from .search.rundir import RunDir

        what = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        if RunDir(run_dir).holds_run():
            console.print(
                f"{what}; every finished evaluation is stored in {escape(str(run_dir))}. "
                f"Continue with: evomerge resume {escape(str(run_dir))}",
                soft_wrap=True,
            )
        else:
            console.print(f"{what} before the run started; nothing was stored")
        raise typer.Exit(code=_code(stop)) from None


@contextlib.contextmanager
def exit_code() -> Iterator[None]:
    """Exit 130 on Ctrl-C, 143 on SIGTERM, after the block's clean-ups; also when the block
    catches the interrupt itself and returns (Gradio's server loop does)."""
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)
        _terminate(signum, frame)

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield
    except KeyboardInterrupt as stop:
        raise typer.Exit(code=_code(stop)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        raise typer.Exit(code=143)
