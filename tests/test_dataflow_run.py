"""A layer-path run (search.space: path) end to end: parameter space, then data flow from
its winner; killed with SIGKILL in the DFS stage and resumed; exported; drawn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from evomerge.config import ConfigError
from evomerge.loader import load_config
from evomerge.merge.candidate import candidate_from_yaml
from evomerge.merge.layerpath import LayerPath
from evomerge.search.experiment import export_run, load_member, run_experiment
from helpers import csv_without_times, evaluations_so_far, resume_cli

pytestmark = pytest.mark.slow
POP = 8


def task(name: str, **options: object) -> dict:
    return {
        "name": name,
        "search": f"demo:data/{name.removesuffix('_loss')}/search.jsonl",
        "test": f"demo:data/{name.removesuffix('_loss')}/test.jsonl",
        "batch_size": 128,
        **options,
    }


def stage(kind: str, from_run: Path | None = None) -> dict:
    """PS: task arithmetic of add and greek; DFS: a path through greek's and add's layers
    (model A: ``from_run``'s winner when given). Both climb greek_add's answer loss."""
    config: dict = {
        "models": {"endpoints": ["demo:models/greek", "demo:models/add"]},
        "tasks": [
            task("greek_add_loss", scorer="loss"),
            task("greek", objective=False, extractor="exact", strict=True, max_new_tokens=24),
        ],
        "fitness": {"estimator": "full"},
        "search": {"algorithm": "CMAES", "population_size": POP, "generations": 3},
        "seed": 0,
    }
    if kind == "ps":
        config["models"]["base"] = "demo:models/base"
        config["search"] |= {"algorithm": "GA", "population_size": 4, "generations": 2}
    else:
        config["search"] |= {"space": "path", "path": {"repeats": 1, "scales": "slot", "from_run": str(from_run)}}
    return config


@pytest.fixture(scope="module")
def ps_then_dfs(demo_family, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataflow")
    ps = run_experiment(load_config(stage("ps")), root / "ps")
    dfs = run_experiment(load_config(stage("dfs", ps.run_dir)), root / "dfs")
    return ps, dfs


def test_dfs_starts_from_the_ps_winner_and_saves_an_ordinary_checkpoint(ps_then_dfs):
    ps, dfs = ps_then_dfs
    # paths that differ only in genes off the path are one candidate: evaluated once
    assert POP < dfs.evaluations <= 3 * POP and dfs.stop_reason == "3 generations"
    best = candidate_from_yaml(dfs.best.recipe)
    assert isinstance(best, LayerPath) and best.head == str(ps.run_dir / "best")
    rows = {t.name: t for t in dfs.tests}
    assert {"best", "model A:ps", "source:greek", "source:add"} <= set(rows) | {"best"}
    # model A's own path is the PS winner itself: its test row equals the PS run's best
    ps_best = next(t for t in ps.tests if t.name == "best")
    assert rows["model A:ps"].scores["greek_add_loss"] == pytest.approx(ps_best.scores["greek_add_loss"])
    assert rows["best"].scores["greek_add_loss"] <= rows["model A:ps"].scores["greek_add_loss"] + 1e-9
    # best/ loads with no remote code and gives the live path's logits
    saved = AutoModelForCausalLM.from_pretrained(dfs.run_dir / "best", trust_remote_code=False).eval()
    assert saved.config.num_hidden_layers == len(best.hops)
    ids = torch.tensor([[5, 9, 17, 3, 22, 8]])
    with torch.no_grad():
        live = dfs.load()(input_ids=ids).logits
        assert torch.allclose(saved(input_ids=ids).logits, live, atol=1e-4)
    assert "layer path of" in (dfs.run_dir / "best" / "README.md").read_text()
    assert (dfs.run_dir / "path.png").is_file() and "Evolved layer path" in (dfs.run_dir / "report.html").read_text()


def test_a_dfs_member_exports_and_loads_like_a_recipe_member(ps_then_dfs, tmp_path):
    _, dfs = ps_then_dfs
    out = export_run(dfs.run_dir, tmp_path / "export", member="id:3")
    model, _ = load_member(dfs.run_dir, "id:3")
    ids = torch.tensor([[7, 7, 30, 2]])
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
        assert torch.allclose(exported, model(input_ids=ids).logits, atol=1e-4)


def test_sigkill_in_the_dfs_stage_then_resume_equals_the_uninterrupted_run(ps_then_dfs, tmp_path):
    ps, dfs = ps_then_dfs
    config = tmp_path / "dfs.yaml"
    config.write_text(yaml.safe_dump(stage("dfs", ps.run_dir)))
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "evomerge", "run", str(config), "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at, deadline = 0, time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            killed_at = evaluations_so_far(run_dir)
            if killed_at >= POP:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert POP <= killed_at < dfs.evaluations, "not killed in the middle of the search"
    resume_cli(run_dir)
    assert csv_without_times(run_dir / "evaluations.csv") == csv_without_times(dfs.run_dir / "evaluations.csv")
    resumed = json.loads((run_dir / "results.json").read_text())["rows"]
    uninterrupted = json.loads((dfs.run_dir / "results.json").read_text())["rows"]
    assert [(r["name"], r["recipe"], r["test"]) for r in resumed] == [
        (r["name"], r["recipe"], r["test"]) for r in uninterrupted
    ]


def test_a_path_run_refuses_what_it_cannot_do(demo_family, tmp_path):
    config = stage("dfs", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="has no winner saved"):
        run_experiment(load_config(config), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    irt = {**config, "fitness": {"estimator": "mpirt", "anchors": 20}}
    with pytest.raises(ConfigError, match="no random merges to calibrate"):
        load_config(irt)
    ray = {**config, "search": {**config["search"], "executor": "ray"}}
    with pytest.raises(ConfigError, match="local executor"):
        load_config(ray)


def test_evolve_searches_layer_paths_from_python(demo_family, tmp_path):
    from evomerge import evolve

    data = demo_family / "data" / "greek_add"
    result = evolve(
        [str(demo_family / "models" / m) for m in ("greek", "add")],
        task=(str(data / "search.jsonl"), str(data / "test.jsonl")),
        fitness="loss",
        algorithm="CMAwM",  # CMA-ES with margin: the inclusion genes stay binary
        population_size=4,
        generations=2,
        space="path",
        path={"repeats": 1, "scales": "slot", "max_length": 8},
        run_dir=tmp_path / "run",
    )
    assert isinstance(result.recipe, LayerPath) and len(result.recipe.hops) <= 8
    inclusion = [v for name, v in zip(result.best_genes, result.run.best.x, strict=True) if name.startswith("on@")]
    assert len(inclusion) == 12 and set(inclusion) <= {0.0, 1.0}
    out = result.save(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == len(result.recipe.hops)
