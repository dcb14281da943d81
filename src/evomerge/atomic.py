"""Files written whole or not at all: a reader (the GUI's monitor, a resume after a crash)
never sees half a file. A leaf: the run store needs it without the models' torch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a uniquely named temp file beside ``path``; on success it replaces ``path`` in one
    rename, so a reader never sees half a file and two writers never share a temp name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_file(path, encoding="utf-8") as f:
        f.write(text)
