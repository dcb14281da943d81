"""What a run checks first about its inputs, checked before it starts: each model folder
exists and is a checkpoint, each data file parses and has what its scorer needs. The GUI
runs this on Launch, so that a typo in a path is said under its field instead of as a
failed run on the Monitor a minute later.

Cheap by design: no tensor is read (a checkpoint's config.json and its weights' index or
headers only) and nothing is downloaded (a hub id is checked only when the hub is off, in
the local cache, since that is all the run could use then).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import ExperimentConfig
from .errors import EvomergeError
from .models.checkpoint import Checkpoint

#: (dotted config key, message), as the loader's problems.
Problems = list[tuple[str, str]]


def preflight(config: ExperimentConfig) -> Problems:
    """The problems the run would stop at while loading its models and data, one per input."""
    problems: Problems = []
    m = config.models
    refs = [("models.base", m.base)] if m.base else []
    refs += [(f"models.endpoints.{i}", e) for i, e in enumerate(m.endpoints)]
    for key, ref in refs:
        message = _model_problem(ref, allow_pickle=m.allow_pickle, trust_remote_code=m.trust_remote_code)
        if message:
            problems.append((key, message))
    for i, task in enumerate(config.tasks or []):
        message = _task_problem(task)
        if message:
            problems.append((f"tasks.{i}", message))
    return problems


def _model_problem(ref: str, *, allow_pickle: bool, trust_remote_code: bool) -> str | None:
    path = Path(ref).expanduser()
    if not path.is_dir() and not _looks_like_a_path(ref):  # a hub id: the run downloads it
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
            return None
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(ref, local_files_only=True)
        except Exception:  # the hub client raises many types; all mean "not in the cache"
            return f"{ref}: no such folder here, and the hub is off (HF_HUB_OFFLINE) with no copy of it in the cache"
        return None
    if not path.is_dir():
        return f"{ref}: no such folder{_near(path)}"
    try:
        Checkpoint(ref, path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    except EvomergeError as err:
        return str(err)
    return None


def _looks_like_a_path(ref: str) -> bool:
    """What ``checkpoint.resolve`` takes for a local path rather than a hub id (org/name)."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or Path(ref).exists()


def _near(path: Path) -> str:
    """Where the nearest existing folder above ``path`` is, to see the typo."""
    for parent in path.absolute().parents:
        if parent.is_dir():
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))[:8]
            return f" ({parent} holds: {', '.join(names)})" if names and parent != Path("/") else ""
    return ""


def _task_problem(task: Any) -> str | None:
    """The task's data loaded as the run loads it (lm-eval's registered tasks are lm-eval's)."""
    from .evaluate.evaluator import evaluator_for

    if task.lm_eval is not None:
        if task.lm_eval.endswith((".yaml", ".yml")) and not Path(task.lm_eval).expanduser().is_file():
            return f"task {task.name}: lm_eval task file {task.lm_eval} not found"
        return None
    try:
        evaluator_for(task)
    except EvomergeError as err:
        return str(err)
    return None
