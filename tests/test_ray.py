"""The Ray executor on a real local Ray (2 CPUs, one torch thread per worker): the demo
experiment at a test's budget equals the local run; a worker killed with ``ray.kill``
mid-run is replaced and nothing is lost or repeated; bad settings are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from evomerge.search.loop import Callback
from evomerge.search.ray_executor import RayExecutorError, import_ray
from evomerge.search.store import RunStore
from helpers import csv_without_times, small_config

pytestmark = pytest.mark.slow  # starts Ray: `make check` skips it, `make test` (CI) runs it


@pytest.fixture(scope="module")
def ray_cluster():
    ray = import_ray()
    ray.shutdown()  # a Ray left by another test: this module's has 2 CPUs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def local_run(finished_run):
    """The same small experiment on the local executor (run once for the session)."""
    return finished_run


def same_evaluations(a, b) -> bool:
    return csv_without_times(a.run_dir / "evaluations.csv") == csv_without_times(b.run_dir / "evaluations.csv")


def ray_config(demo_family: Path, **ray) -> dict:
    config = small_config(demo_family)
    config["search"]["executor"] = "ray"
    config["search"]["ray"] = {"workers": 2, **ray}
    return config


def test_a_ray_run_equals_the_local_run(ray_cluster, local_run, demo_family, tmp_path, own_respondents):
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


def test_a_candidate_that_kills_every_worker_is_failed_after_the_retries(ray_cluster, demo_family):
    """Two of four candidates end their worker's process (``os._exit``) each time they are
    merged: after ``retries`` fresh workers they come back failed; the others are scored."""
    import numpy as np

    from evomerge.search.executors import EXECUTORS
    from evomerge.search.local_executor import close
    from evomerge.search.objectives import FunctionObjective
    from evomerge.search.problem import MergeProblem
    from evomerge.search.space import SearchSpace

    models = demo_family / "models"
    config = load_config(
        {
            "models": {"base": str(models / "base"), "endpoints": [str(models / "add"), str(models / "greek")]},
            "search": {"executor": "ray", "ray": {"workers": 2, "retries": 1}},
        },
        resolve_demo=False,
    )
    executor = EXECUTORS["ray"].create(None, None, None, config)
    endpoints = [str(models / "add"), str(models / "greek")]
    space = SearchSpace("task_arithmetic", endpoints, str(models / "base"), num_layers=2)
    recipes = [space.decode(x) for x in np.random.default_rng(0).random((4, space.n_var))]

    def total(m, t):
        return float(sum(p.float().sum() for p in m.parameters()))

    try:
        totals = sorted(
            e.measurement.values[0]
            for _, e in executor.evaluate(MergeProblem(space, [FunctionObjective(total)]), recipes)
        )
        threshold = totals[2]

        def deadly(m, t):
            import os

            value = total(m, t)
            if value < threshold:
                os._exit(1)  # the worker process dies, as on a segfault or the OOM killer
            return value

        results = dict(executor.evaluate(MergeProblem(space, [FunctionObjective(deadly)]), recipes))
    finally:
        close(executor)
    failed = [e for e in results.values() if e.error is not None]
    assert len(failed) == 2 and all(e.error.startswith("WorkerDied: 2 workers died on it") for e in failed)
    assert sorted(e.measurement.values[0] for e in results.values() if e.error is None) == totals[2:]
    assert executor.retried == 2  # each deadly candidate sent once more; those queued behind it are not blamed


def test_respondents_on_a_share_of_the_items_are_scored_on_the_workers_as_here(ray_cluster, demo_family, tmp_path):
    """fitness.respondent_items on Ray: each respondent's part of the items is sent with it,
    and the workers' scores are the ones this process gives."""
    import numpy as np

    from evomerge.evaluate import evaluator_for
    from evomerge.fitness import collect_responses, random_recipe, respondent_set
    from evomerge.merge.engine import Merger
    from evomerge.merge.run import load_live_model, load_live_tokenizer
    from evomerge.models.pool import ModelPool
    from evomerge.search.executors import EXECUTORS
    from evomerge.search.local_executor import close

    config = load_config(ray_config(demo_family))
    m = config.models
    evaluator = evaluator_for(config.tasks[0])
    who = respondent_set(m.endpoints, m.base, 1, lambda rng: random_recipe("task_arithmetic", m.endpoints, m.base, rng))
    executor = EXECUTORS["ray"].create(None, None, None, config)
    try:
        there = collect_responses(evaluator, None, None, None, who, executor=executor, share=0.4, seed=3)
    finally:
        close(executor)
    merger = Merger(ModelPool.open(m.base, m.endpoints))
    model, tokenizer = load_live_model(merger), load_live_tokenizer(merger)
    here = collect_responses(evaluator, model, tokenizer, merger, who, share=0.4, seed=3)
    assert executor.respondents_scored == len(who) == 5
    assert np.array_equal(np.isnan(there.scores), np.isnan(here.scores))
    # the base and 3 endpoints on the small task's 180 items, the random merge on 40%
    assert (~np.isnan(here.scores)).sum(axis=1).tolist() == [180] * 4 + [72]
    assert np.array_equal(np.nan_to_num(there.scores, nan=-1), np.nan_to_num(here.scores, nan=-1))
