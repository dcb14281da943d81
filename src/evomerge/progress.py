"""Progress bars for a run's long phases besides the search (scoring respondents, the
held-out test): each with done/total, elapsed time and an ETA.

They show only while a run asked for progress (``evomerge run`` without
``--no-progress``): ``showing()`` turns them on for its block, so the library stays
quiet when called from Python, and nothing is passed down through every function.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_SHOWING: ContextVar[bool] = ContextVar("evomerge_progress", default=False)


@contextmanager
def showing(enabled: bool = True) -> Iterator[None]:
    """Let ``phase`` bars show inside this block (when ``enabled``)."""
    token = _SHOWING.set(enabled)
    try:
        yield
    finally:
        _SHOWING.reset(token)


class Phase:
    """One bar; ``advance()`` after each finished step. A no-op while bars are off."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self.bar, self.task = bar, task

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=steps)


@contextmanager
def phase(description: str, total: int) -> Iterator[Phase]:
    """A bar for ``total`` steps, shown while ``showing()`` is on and there is work to do."""
    if not _SHOWING.get() or total <= 0:
        yield Phase()
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
        yield Phase(bar, bar.add_task(description, total=total))
