"""Experiment trackers, offline: a real run logs to TensorBoard event files, an MLflow
file store and a wandb offline run inside its run directory."""

from __future__ import annotations

import sys

import pytest

from evomerge.config import ConfigError
from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.trackers import TrackerError
from helpers import POP, small_config

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


def test_a_run_logs_to_every_tracker_offline(demo_family, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = small_config(demo_family, generations=2)
    config["output"] = {"trackers": ["tensorboard", "mlflow", "wandb"], "tracker_project": "demo-test"}
    run = run_experiment(load_config(config), tmp_path / "run")
    assert run.evaluations == 2 * POP

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("evaluation/mix")] == list(range(1, 2 * POP + 1))
    assert [e.step for e in events.Scalars("generation/best/mix")] == [0, 1]
    assert "gene/weight[add]@all" in scalars
    best_test = next(t.scores["mix"] for t in run.tests if t.name == "best")
    assert events.Scalars("test/best/mix")[0].value == pytest.approx(best_test)

    from mlflow.tracking import MlflowClient

    client = MlflowClient((run.run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("demo-test")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "run" and logged.data.params["search.algorithm"] == "GA"
    history = client.get_metric_history(logged.info.run_id, "evaluation/mix")
    assert len(history) == 2 * POP and logged.data.metrics["test/best/mix"] == pytest.approx(best_test)
    assert "gene/weight:add:all" in logged.data.metrics

    (offline,) = (run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    written = offline.read_bytes()  # protobuf records: metric names are stored as text
    assert all(key in written for key in (b"evaluation/mix", b"generation/best/mix", b"test/best/mix", b"demo-test"))


def test_tracker_names_are_checked_and_a_missing_extra_is_named(demo_family, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"(?i)did you mean 'wandb'"):
        load_config({**small_config(demo_family), "output": {"trackers": ["wandbb"]}})
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed: import fails
    config = load_config({**small_config(demo_family), "output": {"trackers": ["mlflow"]}})
    with pytest.raises(TrackerError, match=r"pip install 'evomerge\[mlflow\]'"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run" / "run.sqlite").exists()
