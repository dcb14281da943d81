"""Joining a running Ray cluster, as docs/runs.md says to: `ray start --head` in this test
(a multi-process cluster on a free port, its own temp folder), then `evomerge run` with
``search.ray.address: auto`` and with ``host:port`` right after the cluster starts. Both
equal the local executor's run. The test then ends its own cluster's processes, and no
process of it is left (`ray stop` would end every Ray cluster on the machine, a
developer's own too).

A driver joining by ``host:port`` used to be refused with Ray's ``InvalidAuthToken`` when
the cluster had token authentication on (Ray 2.5x+ turns it on when a token exists)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import POP, csv_without_times, small_config

pytestmark = pytest.mark.slow  # starts a Ray cluster: `make check` skips it, `make test` (CI) runs it

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp: Path) -> list[int]:
    """PIDs whose command line names the cluster's temp folder, and every process they
    started (Ray's workers rename themselves ``ray::IDLE``: only their parent names it)."""
    named, parents = [], {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(temp).encode() in (entry / "cmdline").read_bytes():
                    named.append(int(entry.name))
                # the field after the parenthesised name: state, then the parent's PID
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), list(named)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(child for child, parent in parents.items() if parent == pid)
    return sorted(found)


def _stop_cluster(temp: Path) -> list[int]:
    """Kills the cluster's processes (SIGKILL, as `ray stop --force`); what is left after 30 s."""
    deadline = time.time() + 30
    while _cluster_processes(temp) and time.time() < deadline:
        for pid in _cluster_processes(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    return _cluster_processes(temp)


@pytest.fixture
def ray_head():
    """A head node started by the `ray` CLI; Ray's socket paths must stay short, hence /tmp."""
    from evomerge.search.ray_executor import import_ray

    import_ray().shutdown()  # a Ray this process started (another module's) is not the one to join
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = _free_port()
    start = [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
             "--disable-usage-stats", "--temp-dir", str(temp)]  # fmt: skip
    started = subprocess.run(start, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield port, temp
    finally:
        left = _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"Ray processes left after SIGTERM and SIGKILL: {left}"


def test_a_run_joins_a_started_cluster_by_auto_and_by_address(ray_head, finished_run, demo_family, tmp_path):
    """One generation each (the 3-generation local run's first generation is a 1-generation
    run's: the store replays a run's generations in order, see resume with a larger budget)."""
    port, _ = ray_head
    local = csv_without_times(finished_run.run_dir / "evaluations.csv")
    for address in ("auto", f"127.0.0.1:{port}"):
        config = small_config(demo_family, generations=1)
        config["search"]["executor"] = "ray"
        config["search"]["ray"] = {"workers": 2, "address": address}
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(config))
        run_dir = tmp_path / address.replace(":", "-")
        command = [sys.executable, "-m", "evomerge", "run", str(path), "--run-dir", str(run_dir), "--no-progress"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"address {address}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        rows = csv_without_times(run_dir / "evaluations.csv")
        assert len(rows) == POP and rows == local[:POP]
