"""The one check every GUI field that names a run or a folder goes through.

A run name becomes a folder under the runs directory, and the Monitor, Runs, Resume,
Stop, Export and Try boxes each read or act on it: ``../..`` or an absolute path there
would start ``evomerge resume`` (or read, or export) outside the runs the GUI serves.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import EvomergeError


class RunNameError(EvomergeError):
    """A name that is not a plain folder name under the runs directory."""


def run_dir(runs: Path, name: str | None) -> Path:
    """``runs/NAME`` resolved, for a name of letters, digits, ``-``, ``_`` and ``.`` only."""
    name = (name or "").strip()
    if not re.fullmatch(r"[\w.-]+", name) or name.strip(".") == "":
        raise RunNameError(
            f"run name {name!r}: use letters, digits, '-', '_' and '.' (a folder under the runs directory)"
        )
    return (runs / name).resolve()


def output_folder(text: str | None) -> Path:
    """An export's folder, made absolute (a relative one is from the folder the GUI was
    started in, which the message then shows), and not an existing file."""
    text = (text or "").strip()
    if not text:
        raise RunNameError("give a folder to export to")
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise RunNameError(f"{path} is a file; give a folder")
    return path
