"""The Ray executor on a real local Ray (2 CPUs, one torch thread per worker): the demo
experiment at a test's budget equals the local run; a worker killed with ``ray.kill``
mid-run is replaced and nothing is lost or repeated; bad settings are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.config import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.loop import Callback
from evomerge.search.ray_executor import RayExecutorError, import_ray
from evomerge.search.store import RunStore
from test_search_run import csv_without_times, small_config

pytestmark = pytest.mark.slow  # starts Ray: `make check` skips it, `make test` (CI) runs it


@pytest.fixture(scope="module")
def ray_cluster():
    ray = import_ray()
    ray.shutdown()  # a Ray left by another test: this module's has 2 CPUs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(demo_family, tmp_path_factory):
    return run_experiment(load_config(small_config(demo_family)), tmp_path_factory.mktemp("local") / "run")


def same_evaluations(a, b) -> bool:
    return csv_without_times(a.run_dir / "evaluations.csv") == csv_without_times(b.run_dir / "evaluations.csv")


def ray_config(demo_family: Path, **ray) -> dict:
    config = small_config(demo_family)
    config["search"]["executor"] = "ray"
    config["search"]["ray"] = {"workers": 2, **ray}
    return config


def test_a_ray_run_equals_the_local_run(ray_cluster, local_run, demo_family, tmp_path):
    """Respondents, candidates and the held-out tests all on the workers; the driver writes."""

    class Executor(Callback):
        def on_start(self, searcher, replayed):
            self.executor = searcher.executor

    seen = Executor()
    run = run_experiment(load_config(ray_config(demo_family)), tmp_path / "ray", callbacks=[seen])
    assert seen.executor.respondents_scored == 7  # the base, 3 endpoints and 3 random merges
    assert csv_without_times(run.run_dir / "evaluations.csv") == csv_without_times(
        local_run.run_dir / "evaluations.csv"
    )
    assert [(t.name, t.scores) for t in run.tests] == [(t.name, t.scores) for t in local_run.tests]


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost_or_repeated(
    ray_cluster, local_run, demo_family, tmp_path
):
    class KillOnce(Callback):
        killed = 0
        executor = None

        def on_evaluation(self, searcher, done):
            if searcher.store.count() == 5 and not self.killed:
                self.executor = searcher.executor
                ray_cluster.kill(searcher.executor.actors[1])  # busy with the next candidate, or about to be
                KillOnce.killed += 1

    watch = KillOnce()
    run = run_experiment(load_config(ray_config(demo_family)), tmp_path / "killed", callbacks=[watch])
    assert watch.killed == 1 and watch.executor.retried >= 1
    store = RunStore.in_dir(run.run_dir)
    rows = list(store.evaluations(failed=True))
    assert len(rows) == 18 and len({r.digest for r in rows}) == 18 and all(r.ok for r in rows)
    assert csv_without_times(run.run_dir / "evaluations.csv") == csv_without_times(
        local_run.run_dir / "evaluations.csv"
    )


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayExecutorError, match=r'pip install "evomerge\[ray\]"'):
        import_ray()


def test_an_unreachable_address_is_a_clear_error_and_writes_nothing(demo_family, tmp_path):
    config = ray_config(demo_family, address="127.0.0.1:9")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "evomerge", "run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot reach Ray at search.ray.address '127.0.0.1:9'" in done.stdout
    assert not (tmp_path / "run").exists()


def test_a_driver_killed_mid_generation_resumes_to_the_same_results(ray_cluster, local_run, demo_family, tmp_path):
    """The CLI driving 2 Ray workers is killed with SIGKILL in generation 1 (its own local Ray
    goes with it); ``resume`` on this process's Ray finishes with the local run's results."""
    import os
    import signal
    import sqlite3
    import time

    from evomerge.search.experiment import resume_run

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(ray_config(demo_family)))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge", "run", str(config), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at, deadline = 0, time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                db = sqlite3.connect(run_dir / "run.sqlite")
                killed_at = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
                db.close()
            except sqlite3.OperationalError:  # not there yet
                killed_at = 0
            if killed_at >= 8:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 6 <= killed_at < 12 and not (run_dir / "results.json").exists()
    resumed = resume_run(run_dir)
    assert resumed.evaluations == 18 and same_evaluations(resumed, local_run)
    assert [(t.name, t.scores) for t in resumed.tests] == [(t.name, t.scores) for t in local_run.tests]
