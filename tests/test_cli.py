"""The console script, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from evomerge import __version__


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0 and "demo-models" in out.stdout
    assert run("--version").stdout.strip() == f"evomerge {__version__}"


def test_demo_models_on_a_built_family_is_instant(demo_family: Path):
    out = run("demo-models", "--out", str(demo_family))
    assert out.returncode == 0, out.stderr
    assert str(demo_family) in out.stdout and "building" not in out.stdout


def test_demo_prints_the_table_and_the_gain(demo_family: Path):
    out = run("demo", "--family", str(demo_family))
    assert out.returncode == 0, out.stderr
    for word in ("base", "add", "greek", "cyrillic", "best_merge", "uniform_merge"):
        assert word in out.stdout
    assert "over the best single model" in out.stdout


def test_demo_refuses_to_build_over_a_foreign_directory(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("precious")
    out = run("demo", "--family", str(tmp_path))
    assert out.returncode == 2
    assert "refusing to overwrite" in out.stdout and "--out" in out.stdout
    assert (tmp_path / "notes.txt").read_text() == "precious"
