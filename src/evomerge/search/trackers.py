"""Experiment trackers (``output.trackers``): a run's evaluations, generations and test
table, logged to Weights & Biases, TensorBoard or MLflow as they happen.

Each tracker is a search ``Callback`` plus ``log_tests``, registered in ``TRACKERS``;
adding one touches this file. They are optional extras (``evomerge[wandb]``,
``[tensorboard]``, ``[mlflow]``), imported only when a config names them. The run
store stays the record: a tracker that fails to log warns and the run goes on.

Where they write, by default inside the run directory, so nothing leaves the machine
unless you say so:
- ``wandb``: ``RUN_DIR/wandb``; online or offline as ``WANDB_MODE`` says (``offline``
  logs locally, ``wandb sync`` uploads later). A resume continues the same wandb run.
- ``tensorboard``: ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``).
- ``mlflow``: ``$MLFLOW_TRACKING_URI`` if set, else a file store in ``RUN_DIR/mlruns``.

Steps: per evaluation, the evaluation's number in the run (as in evaluations.csv);
per generation, the generation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EvomergeError
from ..registry import Registry
from .loop import Callback, Evaluated, Searcher
from .store import GenerationRow, TestRow

if TYPE_CHECKING:
    from ..config import ExperimentConfig

log = logging.getLogger(__name__)


class TrackerError(EvomergeError):
    """A tracker that cannot start (its extra is not installed, or its backend refuses)."""


class Tracker(Callback):
    """Logs metrics under a run named after the run directory. Subclasses implement
    ``_start``, ``_params``, ``_metrics`` and ``_close``."""

    extra: str = ""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.project = config.output.tracker_project
        self.evaluations = 0
        self.broken = False
        self._start(run_dir.name, _flat(config.model_dump(mode="json", by_alias=True)))

    # -- what a backend implements ---------------------------------------------------------

    def _start(self, name: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def _metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- the search's events -------------------------------------------------------------

    def on_start(self, searcher: Searcher, replayed: int) -> None:
        self.evaluations = searcher.store.count()

    def on_evaluation(self, searcher: Searcher, done: Evaluated) -> None:
        self.evaluations += 1
        e, m = done.evaluation, done.evaluation.measurement
        values = {"evaluation/generation": float(done.generation), "evaluation/merge_s": e.merge_s}
        values["evaluation/eval_s"] = e.eval_s
        if m is not None:
            values.update({f"evaluation/{n}": v for n, v in zip(searcher.problem.names, m.values, strict=True)})
        values.update({f"gene/{n}": v for n, v in searcher.problem.space.values(done.x).items()})
        self._safe(self._metrics, values, self.evaluations)

    def on_generation(self, searcher: Searcher, row: GenerationRow, replayed: bool) -> None:
        if replayed:
            return
        values = {"generation/evaluations": float(row.evaluations), "generation/elapsed_s": row.elapsed_s}
        for kind in ("best", "mean"):  # over the run so far, and this generation's mean
            for name, value in zip(searcher.problem.names, row.best.get(kind) or [], strict=False):
                if value is not None:
                    values[f"generation/{kind}/{name}"] = float(value)
        self._safe(self._metrics, values, row.generation)

    def log_tests(self, rows: Sequence[TestRow]) -> None:
        """The held-out table: one metric per candidate and objective (``test/best/mix``)."""
        values = {f"test/{r.name}/{objective}": v for r in rows for objective, v in r.scores.items()}
        self._safe(self._metrics, values, self.evaluations)

    def finish(self) -> None:
        """After the test table (not ``close``, which the searcher calls when it stops)."""
        self._safe(self._close)

    def _safe(self, call: Any, *args: Any) -> None:
        """Logging is a copy of what the run store holds: a failure warns once, never stops."""
        if self.broken:
            return
        try:
            call(*args)
        except Exception as err:  # a tracker's backend may raise anything (network, disk, auth)
            self.broken = True
            log.warning("tracker %s stopped logging (the run goes on): %s", type(self).__name__, err)


TRACKERS: Registry[type[Tracker]] = Registry("tracker", TrackerError)


def _flat(raw: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``section.key`` params (lists as their text)."""
    if isinstance(raw, dict):
        out: dict[str, Any] = {}
        for key, value in raw.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): raw if isinstance(raw, (int, float, str, bool)) or raw is None else str(raw)}


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerError(f"output.trackers names {extra}: install it with pip install 'evomerge[{extra}]'") from None


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """Weights & Biases: online, or offline with WANDB_MODE=offline (files in RUN_DIR/wandb)."""

    def _start(self, name: str, params: dict[str, Any]) -> None:
        wandb = _require("wandb", "wandb")
        run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]  # a resume continues it
        self.run = wandb.init(
            project=self.project, name=name, id=run_id, resume="allow", dir=str(self.run_dir), config=params
        )

    def _metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values)  # wandb's own step: it must grow, and evaluations and generations interleave

    def _close(self) -> None:
        self.run.finish()


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files in RUN_DIR/tensorboard."""

    def _start(self, name: str, params: dict[str, Any]) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def _metrics(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def _close(self) -> None:
        self.writer.close()


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    """MLflow: $MLFLOW_TRACKING_URI, else a file store in RUN_DIR/mlruns."""

    def _start(self, name: str, params: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store needs no database
            self.mlflow.set_tracking_uri((self.run_dir / "mlruns").resolve().as_uri())
        self.mlflow.set_experiment(self.project)
        self.mlflow.start_run(run_name=name)
        self.mlflow.log_params({k[:250]: str(v)[:6000] for k, v in params.items()})

    def _metrics(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({_mlflow_name(k): v for k, v in values.items()}, step=step)

    def _close(self) -> None:
        self.mlflow.end_run()


def _mlflow_name(key: str) -> str:
    """MLflow allows letters, digits and ``_-. :/`` in names: ``weight[add]@all`` is ``weight:add:all``."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("]", "").replace("[", ":").replace("@", ":"))


def open_trackers(config: ExperimentConfig, run_dir: Path) -> list[Tracker]:
    """The config's trackers, started (a missing extra is a TrackerError before the search)."""
    return [TRACKERS[name](config, run_dir) for name in config.output.trackers]
