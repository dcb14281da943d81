"""Writing a merged model as an ordinary Hugging Face checkpoint, without losing data.

The checkpoint is written into a temporary sibling and renamed into place once
complete, so a crash leaves either nothing or a whole checkpoint. An existing
non-empty directory is refused unless the caller forces it; it is then replaced
only after the new checkpoint is complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import EvomergeError


class OutputExistsError(EvomergeError):
    """The output directory holds files, and overwriting them was not asked for."""


def write_atomically(out: Path | str, write: Callable[[Path], None], *, force: bool = False) -> Path:
    """Call ``write(tmp_dir)``, then move the result to ``out``."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} exists and is not empty; choose another --out, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(config_yaml: str, title: str = "merged model") -> str:
    return (
        f"---\nlibrary_name: transformers\ntags:\n- merge\n- evomerge\n---\n# {title}\n\n"
        "Merged in memory with [evomerge](https://github.com/evomerge/evomerge) "
        "(mergekit-compatible semantics) from this configuration:\n\n"
        f"```yaml\n{config_yaml.rstrip()}\n```\n"
    )
