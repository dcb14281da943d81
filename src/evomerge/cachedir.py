"""Where evomerge keeps what it can rebuild (the demo family, respondents' scores, resolved
task files): ``$EVOMERGE_CACHE``, else ``~/.cache/evomerge``. A leaf, so any layer may ask."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))
