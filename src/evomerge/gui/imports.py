"""The library's heavy modules (torch, transformers, the plug-in registries, the run), imported
once, under a lock, by whichever GUI callback needs them first.

The first page is served without them (bench/gui_start.py). Gradio then runs callbacks in
worker threads; two of them importing transformers' lazy modules at the same moment fail
("cannot import name ..."), so every callback that reaches into the library calls
``library()`` first: the first waits for the imports, the others find them done.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_DONE = False


def library() -> None:
    """Import the config loader, every registry and the run's entry points (a second call
    returns at once)."""
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if not _DONE:
            from .. import loader, preflight  # noqa: F401
            from ..fitness import estimators  # noqa: F401
            from ..merge import methods  # noqa: F401
            from ..report import plots  # noqa: F401
            from ..search import algorithms, experiment  # noqa: F401

            _DONE = True
