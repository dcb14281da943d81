"""Every example config runs end to end on the demo family, at a small budget (one
generation of four; fewer anchors and respondents; the demo data's tasks cut to a fifth of
their search items and a tenth of their test items) set through the CLI's overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from helpers import cli, small_split

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "calibrate-demo.yaml")
SMALL = ["search.generations=1", "search.population_size=4", "fitness.anchors=20"]


def test_the_four_modes_are_there():
    assert {p.stem for p in EXAMPLES} >= {"demo", "single-lmeval", "multi-objective", "multi-lmeval"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_end_to_end(example: Path, demo_family, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths in a config are relative to its folder: any directory will do
    raw = load_config(example)
    small = SMALL + (["fitness.respondents=2"] if raw.fitness.estimator != "mean" else [])
    for i, task in enumerate(raw.tasks):  # the demo data's tasks cut small (the lm-eval tasks are as written)
        if task.search is not None and Path(task.search).is_relative_to(demo_family):
            search, test = small_split(demo_family, Path(task.search).parent.name)
            small += [f"tasks.{i}.search={search}", f"tasks.{i}.test={test}"]
    config = load_config(example, small)
    result = run_experiment(config, tmp_path / example.stem)
    results = json.loads((result.run_dir / "results.json").read_text())
    names = [t.name for t in config.tasks]
    assert [o["name"] for o in results["objectives"]] + results["checks"] == names
    kinds = {r["kind"] for r in results["rows"]}
    baselines = {"endpoint"} if config.search.space == "path" else {"endpoint", "default"}  # a path has no default
    assert kinds >= baselines and kinds & {"best", "pareto"}
    rates = [t.name for t in config.tasks if t.scorer not in ("loss", "perplexity")]  # the others are NLLs
    for row in results["rows"]:
        assert set(row["test"]) == set(names) and all(0 <= row["test"][n] <= 1 for n in rates)
    assert (result.run_dir / "report.html").exists()


def test_the_example_merge_config_runs_as_is(demo_family, tmp_path, monkeypatch):
    """`demo:` paths work in a merge config too (they did only in experiment configs)."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    out = tmp_path / "merged"
    done = cli("merge", str(ROOT / "examples" / "merges" / "demo-ties.yaml"), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6
    assert str(demo_family / "models" / "greek") in (out / "mergekit_config.yml").read_text()
