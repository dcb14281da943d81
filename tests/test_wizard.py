"""`evomerge init`: driven through its prompts as a user would (stdin of the real
console script), and from flags alone; the configs it writes validate and run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment
from helpers import cli

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

ROOT = Path(__file__).resolve().parents[1]


def init(*args: str, answers: str = "") -> subprocess.CompletedProcess:
    return cli("init", *args, input=answers, cwd=ROOT)


def test_init_through_its_prompts_writes_a_config_that_runs(demo_family, tmp_path):
    out = tmp_path / "exp.yaml"
    answers = "\n".join(
        [
            "demo:models/base",  # base
            "demo:models/greek, demo:models/cyrillic",  # endpoints
            "multi",  # objectives
            "data",  # source
            "greek, cyrillic",  # objective names
            "",  # greek data: the default demo files
            "",  # cyrillic data: the default demo files
            "ties",  # method
            "NSGA2",  # algorithm
            "mean",  # estimator
            "20",  # anchors
            "4",  # population
            "1",  # generations
            str(tmp_path / "run"),  # run dir
        ]
    )
    done = init("--out", str(out), answers=answers + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Objectives: single or multi" in done.stdout and "config written" in done.stdout
    raw = yaml.safe_load(out.read_text())
    assert [t["name"] for t in raw["tasks"]] == ["greek", "cyrillic"] and raw["merge"]["method"] == "ties"
    result = run_experiment(load_config(out))
    assert result.problem.names == ("greek", "cyrillic") and result.evaluations >= 1
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    ("objectives", "source", "tasks"),
    [("single", "data", ["mix"]), ("single", "lmeval", ["mix"]), ("multi", "data", ["greek", "cyrillic"]),
     ("multi", "lmeval", ["greek", "cyrillic"])],
)  # fmt: skip
def test_init_covers_the_four_modes_from_flags(objectives, source, tasks, tmp_path):
    out = tmp_path / "exp.yaml"
    done = init("--out", str(out), "--no-input", "--objectives", objectives, "--source", source)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_config(out, resolve_demo=False)
    assert [t.name for t in config.tasks] == tasks
    assert all((t.lm_eval is not None) == (source == "lmeval") for t in config.tasks)


def test_init_refuses_bad_answers_and_existing_files(tmp_path):
    bad = init("--out", str(tmp_path / "a.yaml"), "--no-input", "--algorithm", "GAA")
    assert bad.returncode == 2 and "did you mean 'GA'" in bad.stdout and not (tmp_path / "a.yaml").exists()
    (tmp_path / "b.yaml").write_text("mine")
    kept = init("--out", str(tmp_path / "b.yaml"), "--no-input")
    assert kept.returncode == 2 and (tmp_path / "b.yaml").read_text() == "mine"


def test_init_without_data_for_a_task_says_which_flag_gives_it(tmp_path):
    """`init --no-input --task gsm8k` and Enter at the data question were IndexError tracebacks."""
    out = tmp_path / "a.yaml"
    no_data = init("--out", str(out), "--no-input", "--task", "gsm8k")
    assert no_data.returncode == 2 and "Traceback" not in no_data.stdout + no_data.stderr
    assert "--data gsm8k=" in no_data.stdout and not out.exists()
    answers = "\n".join(["", "", "single", "data", "mine", ""])  # Enter at "Data for 'mine'"
    entered = init("--out", str(out), answers=answers + "\n")
    assert entered.returncode == 2 and "Traceback" not in entered.stdout + entered.stderr
    assert "--data mine=" in entered.stdout and not out.exists()


def test_init_data_flag_answers_the_data_question(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n' * 10)
    out = tmp_path / "a.yaml"
    done = init("--out", str(out), "--no-input", "--task", "qa", "--data", f"qa={data}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(out.read_text())["tasks"] == [{"name": "qa", "data": str(data)}]
    unnamed = init("--out", str(tmp_path / "b.yaml"), "--no-input", "--data", f"{data}, {data}")
    assert unnamed.returncode == 0, unnamed.stdout + unnamed.stderr
    task = yaml.safe_load((tmp_path / "b.yaml").read_text())["tasks"][0]
    assert task["name"] == "mix" and task["search"] == task["test"] == str(data)


def test_init_never_pairs_a_real_base_with_the_demo_models_or_data(tmp_path):
    """`--base mistralai/...` used to get the demo's endpoints and toy data without a word."""
    out = tmp_path / "a.yaml"
    no_endpoints = init("--out", str(out), "--no-input", "--base", "mistralai/Mistral-7B-v0.1")
    assert no_endpoints.returncode == 2 and "--endpoints" in no_endpoints.stdout
    endpoints = "org/math-7b, org/jp-7b"
    no_data = init("--out", str(out), "--no-input", "--base", "mistralai/Mistral-7B-v0.1", "--endpoints", endpoints)
    assert no_data.returncode == 2 and "--task" in no_data.stdout and not out.exists()
    toy = init(
        "--out", str(out), "--no-input", "--base", "mistralai/Mistral-7B-v0.1", "--endpoints", endpoints,
        "--task", "mix", "--data", "mix=demo:data/mix/search.jsonl",
    )  # fmt: skip
    assert toy.returncode == 2 and "only the demo's models" in toy.stdout and not out.exists()
