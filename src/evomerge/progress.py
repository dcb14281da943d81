"""Progress bars for a run's long phases besides the search (scoring respondents, the
held-out test): each with done/total, elapsed time and an ETA.

They show only while a run asked for progress (``evomerge run`` without
``--no-progress``): ``showing()`` turns them on for its block, so the library stays
quiet when called from Python, and nothing is passed down through every function.
``reporting(listener)`` also tells a listener of every phase and step, bars or not: the
run stores them, and the GUI's monitor shows the phase a run is in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_SHOWING: ContextVar[bool] = ContextVar("evomerge_progress", default=False)

#: Told (phase, steps done, steps in all) at a phase's start and after each step.
Listener = Callable[[str, int, int], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("evomerge_phase_listener", default=None)


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Tell ``listener`` of every phase inside this block, and of each of its steps."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def announce(description: str, done: int = 0, total: int = 0) -> None:
    """A phase's start or step, for the listener. A phase without a bar (loading the
    models, saving the winner) is also said on a line of its own while bars show, so the
    command line names the same phases as the GUI's monitor."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(description, done, total)
    if _SHOWING.get() and total == 0 and description != "done":
        from rich.console import Console

        Console(stderr=True).print(f"[dim]{description}[/dim]")


@contextmanager
def showing(enabled: bool = True) -> Iterator[None]:
    """Let ``phase`` bars show inside this block (when ``enabled``)."""
    token = _SHOWING.set(enabled)
    try:
        yield
    finally:
        _SHOWING.reset(token)


class Phase:
    """One bar; ``advance()`` after each finished step. The bar is a no-op while bars are
    off; the listener (``reporting``) hears each step either way."""

    def __init__(self, description: str, total: int, bar: Any = None, task: Any = None) -> None:
        self.description, self.total, self.done = description, total, 0
        self.bar, self.task = bar, task
        announce(description, 0, total)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(self.task, advance=steps)
        announce(self.description, self.done, self.total)


@contextmanager
def phase(description: str, total: int) -> Iterator[Phase]:
    """A bar for ``total`` steps, shown while ``showing()`` is on and there is work to do."""
    if not _SHOWING.get() or total <= 0:
        yield Phase(description, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with bar:
        yield Phase(description, total, bar, bar.add_task(description, total=total))
