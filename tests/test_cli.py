"""The console script: `python -m evomerge` as a process of its own once (help, version),
every command in this process (``helpers.cli``: the same code, without seconds of imports)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge import __version__
from helpers import cli, cli_process, small_config

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


run = cli


def test_help_and_version_in_a_process_of_their_own():
    out = cli_process("--help")
    assert out.returncode == 0 and "demo-models" in out.stdout
    assert cli_process("--version").stdout.strip() == f"evomerge {__version__}"


def test_demo_models_on_a_built_family_is_instant(demo_family: Path):
    out = run("demo-models", "--out", str(demo_family))
    assert out.returncode == 0, out.stderr
    assert str(demo_family) in out.stdout and "building" not in out.stdout


def test_demo_prints_the_table_and_the_gain(demo_family: Path):
    out = run("demo", "--family", str(demo_family))
    assert out.returncode == 0, out.stderr
    for word in ("base", "add", "greek", "cyrillic", "greek_add", "best_merge", "uniform_merge"):
        assert word in out.stdout
    assert "On greek_add" in out.stdout and "points against the best single model" in " ".join(out.stdout.split())


def test_demo_refuses_to_build_over_a_foreign_directory(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("precious")
    out = run("demo", "--family", str(tmp_path))
    assert out.returncode == 2
    assert "refusing to overwrite" in out.stdout and "--out" in out.stdout
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_config_schema_is_json_with_every_section():
    import json

    out = run("config-schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert {"models", "merge", "tasks", "fitness", "search", "output"} <= set(schema["properties"])


def test_run_with_overrides_then_resume_test_and_export(demo_family: Path, tmp_path: Path):
    """``--set`` shrinks the small demo experiment to one generation of 3; the run prints the
    test table, ``resume`` and ``test`` on the finished run print it again (evaluating
    nothing; resume names its phases), ``export`` writes the winner."""
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_config(demo_family)))
    args = [
        "run",
        str(config),
        "--no-progress",
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        "search.generations=1",
        "--set",
        "search.population_size=3",
        "--set",
        "fitness={estimator: mean, anchors: 20}",
    ]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    assert "held-out test scores (3 evaluations" in out.stdout and "endpoint:greek" in out.stdout
    again = run("resume", str(tmp_path / "r"))  # with progress: the phases the GUI's monitor names
    assert again.returncode == 0, again.stderr
    assert "(3 evaluations" in again.stdout
    assert "loading the models" in again.stderr and "saving the winner and the report" in again.stderr
    tested = run("test", str(tmp_path / "r"))
    assert tested.returncode == 0 and "default task_arithmetic" in tested.stdout
    exported = run("export", str(tmp_path / "r"), "--out", str(tmp_path / "e"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "e" / "model.safetensors").exists() and (tmp_path / "e" / "mergekit_config.yml").exists()
    bad = run("run", str(DEMO_CONFIG), "--set", "search.generation=2")
    assert bad.returncode == 2 and "did you mean 'generations'" in bad.stdout
    missing = run("resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "holds no run" in missing.stdout
