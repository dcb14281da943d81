"""Whole runs on the demo family's target task: search, store, test phase, saving,
reproducibility, and resume after a SIGKILL, through the library, the CLI and
``evomerge.evolve``. Every candidate is really merged and really generates."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

import evomerge
from evomerge.config import ConfigError
from evomerge.loader import load_config
from evomerge.search.experiment import ResumeError, RunExistsError, export_run, resume_run, run_experiment
from evomerge.search.store import RunStore
from helpers import (
    POP,
    cli,
    cli_process,
    csv_without_times,
    evaluations_so_far,
    resume_cli,
    small_config,
    small_mix,
    start_run,
)

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


@pytest.fixture
def finished(finished_run):
    """The small demo run, finished once for the whole test session: read it, never write it
    (copy it first)."""
    return finished_run


def test_a_run_stores_everything_and_tests_the_winner_against_the_baselines(finished):
    run_dir = finished.run_dir
    assert finished.stop_reason == "3 generations" and finished.evaluations == 18
    for name in (
        "config.yaml",
        "run.sqlite",
        "evaluations.csv",
        "results.json",
        "respondents-mix.json",
        "best/model.safetensors",
    ):
        assert (run_dir / name).exists(), name
    rows = csv_without_times(run_dir / "evaluations.csv")
    assert len(rows) == 18 and {"weight[add]@all", "weight[greek]@all", "mix", "generation"} <= set(rows[0])
    stored = list(sqlite3.connect(run_dir / "run.sqlite").execute("SELECT items FROM evaluations"))
    assert all(len(json.loads(items)["mix"]) == 60 for (items,) in stored)  # per-item scores of the anchors

    results = json.loads((run_dir / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names == ["best", "endpoint:add", "endpoint:greek", "endpoint:cyrillic", "base", "default task_arithmetic"]
    test = {r["name"]: r["test"]["mix"] for r in results["rows"]}
    assert all(0 <= v <= 1 for v in test.values())
    assert test["best"] > test["default task_arithmetic"]  # even 18 candidates beat a uniform merge here
    best = results["rows"][0]
    assert best["search_estimate"]["mix"] == max(float(r["mix"]) for r in rows)
    assert yaml.safe_load(best["recipe"])["merge_method"] == "task_arithmetic"


def test_the_saved_winner_loads_and_equals_the_live_merge(finished):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(finished.run_dir / "best")
    AutoTokenizer.from_pretrained(finished.run_dir / "best")
    live = dict(finished.load().named_parameters())
    for name, p in saved.named_parameters():
        assert torch.equal(p, live[name]), name


def test_the_winner_model_card_has_the_test_table_and_how_to_reproduce(finished, tmp_path):
    from evomerge.models.save import model_card
    from evomerge.search.experiment import export_run

    results = json.loads((finished.run_dir / "results.json").read_text())
    for card in (
        (finished.run_dir / "best" / "README.md").read_text(),
        (export_run(finished.run_dir, tmp_path / "exported") / "README.md").read_text(),
    ):
        assert "## Held-out test" in card and "`evomerge run config.yaml`" in card and "seed 0" in card
        for row in results["rows"]:  # every tested candidate, with its score as results.json has it
            assert f"| {row['name']} | {row['kind']} | {row['test']['mix']:.4f} |" in card
        assert "base_model" not in card.split("---")[1]  # local checkpoints: no hub metadata to link
    hub = model_card("merge_method: ties\n", models=["mistralai/Mistral-7B-v0.1", "org/math-7b", "/local/path"])
    assert "base_model:\n- mistralai/Mistral-7B-v0.1\n- org/math-7b\nbase_model_relation: merge\n" in hub


def test_same_seed_same_evaluations(finished, demo_family, tmp_path):
    again = run_experiment(load_config(small_config(demo_family)), tmp_path / "b")
    assert csv_without_times(again.run_dir / "evaluations.csv") == csv_without_times(
        finished.run_dir / "evaluations.csv"
    )
    other = run_experiment(load_config({**small_config(demo_family), "seed": 1}), tmp_path / "c")
    assert csv_without_times(other.run_dir / "evaluations.csv") != csv_without_times(
        finished.run_dir / "evaluations.csv"
    )


def test_a_run_directory_is_never_overwritten(finished, demo_family):
    with pytest.raises(RunExistsError, match="evomerge resume"):
        run_experiment(load_config(small_config(demo_family)), finished.run_dir)


def test_resume_refuses_a_changed_config_and_shows_the_difference(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished.run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["search"]["population_size"] = 7
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ResumeError, match=r"(?s)differs.*-  population_size: 6.*\+  population_size: 7"):
        resume_run(copy)
    with pytest.raises(ResumeError, match="holds no run"):
        resume_run(tmp_path / "nowhere")


def test_resuming_a_finished_run_repeats_nothing(finished):
    before = csv_without_times(finished.run_dir / "evaluations.csv")
    again = resume_run(finished.run_dir)
    assert again.evaluations == 18 and csv_without_times(finished.run_dir / "evaluations.csv") == before
    assert [t.scores for t in again.tests] == [t.scores for t in finished.tests]


def test_resume_with_a_larger_budget_extends_a_finished_run_as_if_started_with_it(finished, demo_family, tmp_path):
    """`evomerge resume RUN --set search.generations=4` on the finished 3-generation run
    equals a run started with 4 generations: same evaluations, winner and test table."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished.run_dir, copy)
    with pytest.raises(ResumeError, match="only the budget"):
        resume_run(copy, budget=["search.population_size=7"])
    with pytest.raises(ResumeError, match="not cut it"):
        resume_run(copy, budget=["search.generations=2"])
    assert resume_run(copy).evaluations == 18  # the refusals changed nothing

    out = cli("resume", str(copy), "--no-progress", "--set", "search.generations=4")
    assert out.returncode == 0, out.stdout + out.stderr
    longer = run_experiment(load_config(small_config(demo_family, generations=4)), tmp_path / "longer")
    assert longer.evaluations == 24
    assert csv_without_times(copy / "evaluations.csv") == csv_without_times(longer.run_dir / "evaluations.csv")
    extended = json.loads((copy / "results.json").read_text())
    fresh = json.loads((longer.run_dir / "results.json").read_text())
    assert extended["stop_reason"] == fresh["stop_reason"] == "4 generations"
    assert [(r["name"], r["recipe"], r["test"]) for r in extended["rows"]] == [
        (r["name"], r["recipe"], r["test"]) for r in fresh["rows"]
    ]
    assert yaml.safe_load((copy / "config.yaml").read_text())["search"]["generations"] == 4
    assert (copy / "best" / "model.safetensors").exists()


def test_a_run_stored_with_relative_paths_still_resumes(finished, demo_family, tmp_path, monkeypatch):
    """Runs stored before paths were made absolute hold paths relative to where they ran."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished.run_dir, copy)
    monkeypatch.chdir(demo_family.parent)
    relative = (copy / "config.yaml").read_text().replace(str(demo_family), demo_family.name)
    assert relative != (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(relative)
    store = RunStore.in_dir(copy)
    store.set("config", store.get("config").replace(str(demo_family), demo_family.name))
    store.close()
    assert resume_run(copy).evaluations == 18


def test_the_cli_shows_a_bar_with_an_eta_for_respondents_and_the_test(demo_family, tmp_path, own_respondents):
    """Minutes of respondent scoring and the held-out test showed nothing without -v."""
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(small_config(demo_family, generations=1)))
    out = cli_process("run", str(config), "--run-dir", str(tmp_path / "r"))  # third-party bars: a fresh process's
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    respondents = next(line for line in lines if line.startswith("scoring respondents (mix)"))
    test = next(line for line in lines if line.startswith("held-out test"))
    assert "7/7" in respondents and "6/6" in test and all("eta" in line for line in (respondents, test))
    assert "Loading weights" not in out.stdout + out.stderr  # third-party bars stay off without -v


def test_sigkill_mid_generation_then_resume_equals_an_uninterrupted_run(finished, demo_family, tmp_path):
    """The CLI is killed with SIGKILL in the middle of generation 1; ``evomerge resume``
    finishes the run. No evaluation is lost or repeated, and the results equal the
    uninterrupted run with the same seed (``finished``)."""
    run_dir = tmp_path / "killed"
    proc = start_run(demo_family, run_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            killed_at = evaluations_so_far(run_dir)
            if killed_at >= POP + 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert POP < killed_at < 2 * POP, f"killed after {killed_at} evaluations, not mid generation 1"
    assert not (run_dir / "results.json").exists()
    assert f"process {proc.pid} " in (run_dir / ".lock").read_text()  # the killed holder: the kernel freed its lock

    out = resume_cli(run_dir)
    assert "held-out test scores" in out.stdout and "default task_arithmetic" in out.stdout
    rows = csv_without_times(run_dir / "evaluations.csv")
    assert len(rows) == 18 and len({r["digest"] for r in rows}) == 18
    assert rows == csv_without_times(finished.run_dir / "evaluations.csv")
    generations = [RunStore.in_dir(d).generations() for d in (run_dir, finished.run_dir)]
    assert [(g.asked, g.evaluations, g.best, g.state) for g in generations[0]] == [
        (g.asked, g.evaluations, g.best, g.state) for g in generations[1]
    ]
    resumed = json.loads((run_dir / "results.json").read_text())["rows"]
    uninterrupted = json.loads((finished.run_dir / "results.json").read_text())["rows"]
    assert [(r["name"], r["recipe"], r["test"]) for r in resumed] == [
        (r["name"], r["recipe"], r["test"]) for r in uninterrupted
    ]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_says_how_to_resume_and_exits_130_or_143(stop, finished, demo_family, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, a scheduler) in the middle of generation 1: a
    one-line hint naming ``evomerge resume`` and the run directory, exit code 130 (143),
    no temp file left, and a resume that ends with the uninterrupted run's evaluations.
    The run is started with SIGINT ignored, as a script's `evomerge run ... &` starts it:
    it still stops."""
    run_dir, scratch = tmp_path / "interrupted", tmp_path / "tmp"
    scratch.mkdir()
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731  (in the child, before exec)
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = start_run(
        demo_family, run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore, env=env
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if evaluations_so_far(run_dir) >= POP + 2:
            proc.send_signal(stop)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if stop == signal.SIGINT else 143), (proc.returncode, err[-2000:])
    said = " ".join(out.split())
    assert f"Continue with: evomerge resume {run_dir}" in said, out
    assert ("terminated (SIGTERM)" in said) == (stop == signal.SIGTERM), out
    assert "Traceback" not in err
    assert "Loading weights" not in err and "it/s" not in err  # third-party progress bars stay quiet without -v
    assert list(scratch.iterdir()) == [] and not list(run_dir.glob(".*.tmp"))  # no temp file left
    resume_cli(run_dir)
    assert csv_without_times(run_dir / "evaluations.csv") == csv_without_times(finished.run_dir / "evaluations.csv")


def test_a_second_process_on_a_running_run_refuses_at_once(finished, demo_family, tmp_path):
    """While `evomerge run` works on a run directory, a `resume` and a `run` of it refuse
    within seconds (exit 2, naming the holder's PID); the first run finishes as if alone.
    It is given 12 generations, so it is still running when the second commands come (they
    run in this process, seconds apart; at 3 it could finish in between); its first 3 equal
    the 3-generation run's."""
    run_dir = tmp_path / "shared"
    first = start_run(demo_family, run_dir, 12, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = run_dir.parent / f"{run_dir.name}.yaml"  # the config start_run wrote
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not evaluations_so_far(run_dir):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before a second could start"
        for second in (["resume", str(run_dir)], ["run", str(config), "--run-dir", str(run_dir)]):
            started = time.time()
            out = cli(*second, "--no-progress")  # in this process: the first one holds the lock
            assert out.returncode == 2 and time.time() - started < 60, out.stdout + out.stderr
            assert f"in use by process {first.pid}" in out.stdout and "Traceback" not in out.stdout + out.stderr
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0
    alone = csv_without_times(finished.run_dir / "evaluations.csv")
    assert csv_without_times(run_dir / "evaluations.csv")[: len(alone)] == alone


def test_a_run_that_fails_on_its_models_leaves_nothing_and_the_fixed_config_runs(demo_family, tmp_path):
    """NaN weights are found at the first merge, after the run directory was made: it is
    removed again, so the same command with the model fixed starts afresh."""
    import shutil

    from safetensors.torch import load_file, save_file

    from evomerge.errors import CheckpointError

    broken = tmp_path / "greek-nan"
    shutil.copytree(demo_family / "models" / "greek", broken)
    state = load_file(broken / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    config = small_config(demo_family)
    config["models"]["endpoints"] = ["demo:models/add", str(broken)]
    config["search"]["generations"] = 1
    run_dir = tmp_path / "run"
    nan = r"greek-nan: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' holds 1 NaN"
    with pytest.raises(CheckpointError, match=nan):
        run_experiment(load_config(config), run_dir)
    assert not run_dir.exists()
    config["models"]["endpoints"] = ["demo:models/add", "demo:models/greek"]
    assert run_experiment(load_config(config), run_dir).evaluations == POP


def test_a_gpu_out_of_memory_mid_run_stops_with_a_clear_error_and_resumes(finished, demo_family, tmp_path):
    """A CUDA out-of-memory error in the 9th candidate (simulated: no GPU here; the error is
    the one torch raises) stops the run with a MemoryBudgetError naming what to change; the
    8 finished evaluations are stored, and resume gives the uninterrupted run."""
    from evomerge.errors import MemoryBudgetError
    from evomerge.search.problem import MergeProblem

    measure, calls = MergeProblem.measure, []

    def out_of_memory_once(self, model, tokenizer):
        calls.append(1)
        if len(calls) == 9:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return measure(self, model, tokenizer)

    run_dir = tmp_path / "oom"
    MergeProblem.measure = out_of_memory_once
    try:
        with pytest.raises(MemoryBudgetError, match=r"ran out of memory.*merge.tier.*evomerge resume"):
            run_experiment(load_config(small_config(demo_family)), run_dir, progress=False)
    finally:
        MergeProblem.measure = measure
    assert len(list(RunStore.in_dir(run_dir).evaluations())) == 8
    resumed = resume_run(run_dir, progress=False)
    assert resumed.evaluations == 18
    assert csv_without_times(run_dir / "evaluations.csv") == csv_without_times(finished.run_dir / "evaluations.csv")


def test_evolve_returns_the_winner_ready_to_use(demo_family, tmp_path):
    result = evomerge.evolve(
        ["demo:models/base", "demo:models/greek", "demo:models/cyrillic"],
        "demo:models/base",
        task=tuple(str(p) for p in small_mix(demo_family)),
        fitness="accuracy",
        eval_samples=40,
        population_size=4,
        generations=2,
        mutation_rate=0.2,
        run_dir=tmp_path / "evolve",
        task_options={"extractor": "exact", "max_new_tokens": 24, "batch_size": 128},
    )
    assert set(result.best_genes) == {"weight[greek]@all", "weight[cyrillic]@all"}
    assert 0 <= result.best_score <= 1 and "best" in result.test_scores
    saved = result.save(tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    reloaded = dict(AutoModelForCausalLM.from_pretrained(saved).named_parameters())
    assert all(torch.equal(p, reloaded[n]) for n, p in result.model.named_parameters())


def test_evolve_with_accuracy_and_loss_objectives(demo_family, tmp_path):
    """Two objectives on the same data: accuracy (maximised) and the answers' NLL (minimised)."""
    result = evomerge.evolve(
        ["demo:models/greek", "demo:models/cyrillic"],
        "demo:models/base",
        task=tuple(str(p) for p in small_mix(demo_family)),
        fitness=["accuracy", "loss"],
        eval_samples=30,
        algorithm="NSGA2",
        population_size=4,
        generations=2,
        run_dir=tmp_path / "two",
        task_options={"extractor": "exact", "max_new_tokens": 24, "batch_size": 128},
    )
    assert result.run.problem.maximize == (True, False)
    assert all(t.name.startswith("pareto:") or t.kind != "best" for t in result.run.tests)
    base = result.test_scores["base"]
    assert base["loss"] > result.test_scores["endpoint:greek"]["loss"]  # the specialist knows its answers better


def test_evolve_with_a_custom_fitness_function(demo_family, tmp_path):
    calls = []

    def fitness(model, tokenizer):
        calls.append(1)
        return -float(sum(p.pow(2).sum() for p in model.parameters()))

    result = evomerge.evolve(
        ["demo:models/greek", "demo:models/cyrillic"],
        "demo:models/base",
        fitness=fitness,
        population_size=4,
        generations=2,
        run_dir=tmp_path / "fn",
    )
    stored = [r.objectives[0] for r in result.run.winners] + [
        float(r["fitness"]) for r in csv.DictReader((result.run.run_dir / "evaluations.csv").open())
    ]
    assert result.best_score == max(stored)
    baselines = [t for t in result.run.tests if t.kind not in ("best", "pareto")]
    # each evaluation once, each test once, and each baseline's search estimate once
    assert len(calls) == result.run.evaluations + len(result.run.tests) + len(baselines)
    with pytest.raises(ConfigError, match="fitness 'acuracy'"):
        evomerge.evolve(["a", "b"], task="x.jsonl", fitness="acuracy")


def test_export_writes_the_winner_or_a_chosen_evaluation(finished, tmp_path):
    from transformers import AutoModelForCausalLM

    from evomerge.errors import EvomergeError
    from evomerge.search.experiment import export_run

    best = export_run(finished.run_dir, tmp_path / "best")
    exported = dict(AutoModelForCausalLM.from_pretrained(best).named_parameters())
    live = dict(finished.load().named_parameters())
    assert all(torch.equal(p, live[n]) for n, p in exported.items())
    assert yaml.safe_load((best / "mergekit_config.yml").read_text()) == yaml.safe_load(finished.best.recipe)
    first = export_run(finished.run_dir, tmp_path / "first", member="id:1")
    row = next(iter(RunStore.in_dir(finished.run_dir).evaluations()))
    assert yaml.safe_load((first / "mergekit_config.yml").read_text()) == yaml.safe_load(row.recipe)
    with pytest.raises(EvomergeError, match=r"pareto:0..0 or id:1..18"):
        export_run(finished.run_dir, tmp_path / "x", member="pareto:3")


def test_export_push_to_hub_uploads_the_card_and_weights(finished, tmp_path, monkeypatch):
    """The hub cannot be reached from here: HfApi's create_repo and upload_folder are replaced
    by stand-ins that record what they were given (and what the folder held at upload)."""
    import huggingface_hub
    from typer.testing import CliRunner

    from evomerge.cli import app

    calls: dict[str, object] = {}

    def create_repo(self, repo_id, *, private=False, repo_type=None, exist_ok=False):
        calls["create"] = (repo_id, private, exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None):
        folder = Path(folder_path)
        calls["upload"] = (repo_id, sorted(p.name for p in folder.iterdir()), (folder / "README.md").read_text())

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "e"
    args = ["export", str(finished.run_dir), "--out", str(out), "--push-to-hub", "me/demo-merge", "--private"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pushed to https://huggingface.co/me/demo-merge" in result.output
    assert calls["create"] == ("me/demo-merge", True, True)
    repo, files, card = calls["upload"]
    assert repo == "me/demo-merge" and {"model.safetensors", "config.json", "mergekit_config.yml"} <= set(files)
    assert "## Held-out test" in card and "| best | best |" in card

    def refused(self, *args, **kwargs):
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    again = CliRunner().invoke(app, [*args[:3], str(tmp_path / "f"), *args[4:]])
    assert again.exit_code == 2 and "huggingface-cli login" in again.output and (tmp_path / "f" / "README.md").exists()


def test_testing_an_unfinished_run_scores_its_best_so_far(finished, tmp_path):
    """A copy of the finished run with its last generation and stop reason removed, as if
    it had been killed: ``test`` scores the best so far and searches no further."""
    import shutil

    copy = tmp_path / "unfinished"
    shutil.copytree(finished.run_dir, copy, ignore=shutil.ignore_patterns("best", "results.json"))
    db = sqlite3.connect(copy / "run.sqlite")
    db.execute("DELETE FROM evaluations WHERE generation = 2")
    db.execute("DELETE FROM generations WHERE generation = 2")
    db.execute("DELETE FROM run WHERE key = 'stop_reason'")
    db.execute("DELETE FROM tests")
    db.commit()
    db.close()
    result = resume_run(copy, search=False)
    assert result.evaluations == 12 and result.stop_reason.startswith("not finished")
    assert result.tests[0].name == "best" and not (copy / "best").exists()
    assert json.loads((copy / "results.json").read_text())["evaluations"] == 12


def test_the_report_is_self_contained_with_the_test_table_and_figures(finished):
    page = (finished.run_dir / "report.html").read_text()
    assert "<table id='tests'>" in page and "default task_arithmetic" in page
    for title in ("Fitness per generation", "Evolved genes", "Estimated vs held-out score"):
        assert f"<img alt='{title}' src='data:image/png;base64," in page
    assert "Pareto front" not in page  # one objective
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for png in ("fitness.png", "genes.png", "estimates.png"):
        assert (finished.run_dir / png).stat().st_size > 5000
    results = json.loads((finished.run_dir / "results.json").read_text())
    assert all(r["search_estimate"] is not None for r in results["rows"])  # baselines are estimated too


def test_task_names_are_not_paths_and_any_text_draws(demo_family, tmp_path):
    """A name that would leave the run directory is refused by the config (exit 2, nothing
    written); a name with "$" (matplotlib's math marker) runs and its report is drawn."""
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(small_config(demo_family)))
    out = cli("run", str(config), "--run-dir", str(tmp_path / "r"), "--set", "tasks.0.name=/../../x/pwned")
    assert out.returncode == 2 and "may not contain /" in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "r").exists() and not list(tmp_path.parent.rglob("pwned*"))
    dollars = small_config(demo_family, generations=1)
    dollars["tasks"][0]["name"] = "mix $5 $"
    result = run_experiment(load_config(dollars), tmp_path / "d")
    assert (result.run_dir / "respondents-mix $5 $.json").exists()
    assert "mix $5 $" in (result.run_dir / "report.html").read_text() and (result.run_dir / "fitness.png").exists()


def test_a_full_disk_is_a_clear_error_and_resume_completes_once_there_is_space(finished, demo_family, tmp_path):
    """The run directory on a 1 MB tmpfs (mounted here; needs root): the run stops with a
    StorageError that says to free space and resume (exit 2, no traceback). With the
    filesystem grown, `evomerge resume` finishes, and nothing was lost or repeated."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        config = tmp_path / "exp.yaml"
        config.write_text(yaml.safe_dump(small_config(demo_family)))
        run_dir = disk / "run"
        full = cli_process("run", str(config), "--run-dir", str(run_dir), "--no-progress", timeout=600)
        assert full.returncode == 2, full.stdout + full.stderr
        assert "Traceback" not in full.stdout + full.stderr
        assert "No space left" in full.stdout or "full" in full.stdout, full.stdout
        assert f"evomerge resume {run_dir}" in full.stdout
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        done = cli_process("resume", str(run_dir), "--no-progress", timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = csv_without_times(run_dir / "evaluations.csv")
        assert rows == csv_without_times(finished.run_dir / "evaluations.csv")
        assert (run_dir / "best" / "model.safetensors").exists() and (run_dir / "report.html").exists()
        assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _downgrade_to_version_0(run_dir: Path) -> None:
    """Make a finished run look as the last release wrote it: no store version, evaluations
    without state and error, a config without the keys added since."""
    db = sqlite3.connect(run_dir / "run.sqlite")
    cols = "id, generation, digest, x, genes, recipe, objectives, items, merge_s, eval_s"
    db.executescript(
        f"CREATE TABLE old AS SELECT {cols} FROM evaluations; DROP TABLE evaluations; "
        "ALTER TABLE old RENAME TO evaluations; PRAGMA user_version = 0;"
    )
    raw = yaml.safe_load(json.loads(db.execute("SELECT value FROM run WHERE key = 'config'").fetchone()[0]))
    for task in raw["tasks"]:
        task.pop("language")
    raw["search"].pop("on_error")
    raw["search"].pop("executor")
    text = yaml.safe_dump(raw, sort_keys=False)
    db.execute("UPDATE run SET value = ? WHERE key = 'config'", (json.dumps(text),))
    db.commit()
    db.close()
    (run_dir / "config.yaml").write_text(text)


def test_a_run_written_before_store_versions_resumes_and_is_migrated(finished, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished.run_dir, old)
    _downgrade_to_version_0(old)
    before = csv_without_times(finished.run_dir / "evaluations.csv")
    again = resume_run(old)
    assert again.evaluations == 18 and csv_without_times(old / "evaluations.csv") == before
    db = sqlite3.connect(old / "run.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert {r[1] for r in db.execute("PRAGMA table_info(evaluations)")} >= {"state", "error"}


def test_a_store_from_a_newer_evomerge_is_refused(finished, tmp_path):
    import shutil

    from evomerge.search.store import RunStoreError

    new = tmp_path / "new"
    shutil.copytree(finished.run_dir, new)
    db = sqlite3.connect(new / "run.sqlite")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    with pytest.raises(RunStoreError, match=r"newer evomerge \(store version 7; this one reads up to 1\)\. Upgrade"):
        resume_run(new)
    with pytest.raises(RunStoreError, match="newer evomerge"):
        export_run(new, tmp_path / "out")


def test_a_candidate_that_raises_is_stored_as_fail_and_resume_retries_it(finished, demo_family, tmp_path):
    """search.on_error stop (the default): the 9th candidate raises; the run stops naming it,
    evaluations.csv and the report show it as FAIL with its error, and resume retries it
    and ends where the uninterrupted run ended."""
    from evomerge.search.loop import CandidateFailedError
    from evomerge.search.problem import MergeProblem

    measure, calls = MergeProblem.measure, []

    def fails_once(self, model, tokenizer):
        calls.append(1)
        if len(calls) == 9:
            raise ValueError("a broken candidate")
        return measure(self, model, tokenizer)

    run_dir = tmp_path / "fail"
    MergeProblem.measure = fails_once
    try:
        with pytest.raises(CandidateFailedError, match=r"failed: ValueError: a broken candidate.*FAIL"):
            run_experiment(load_config(small_config(demo_family)), run_dir)
    finally:
        MergeProblem.measure = measure
    rows = list(csv.DictReader((run_dir / "evaluations.csv").open()))
    assert [r["state"] for r in rows] == ["ok"] * 8 + ["fail"] and rows[-1]["mix"] == ""
    assert rows[-1]["error"] == "ValueError: a broken candidate"
    from evomerge.report import write_report

    assert "a broken candidate" in write_report(run_dir).read_text()
    resumed = resume_run(run_dir)
    assert resumed.evaluations == 18
    assert csv_without_times(run_dir / "evaluations.csv") == csv_without_times(finished.run_dir / "evaluations.csv")


def test_a_check_task_is_tested_beside_the_objective_but_never_searched_on(demo_family, tmp_path):
    """``objective: false``: a column of the test table (and results.json, the report, the
    model card), no column of evaluations.csv, no respondents, no search estimate."""
    config = small_config(demo_family, generations=1)
    config["fitness"] = {"estimator": "full"}
    greek = {**config["tasks"][0], "name": "greek", "objective": False}
    greek |= {"search": "demo:data/greek/search.jsonl", "test": "demo:data/greek/test.jsonl"}
    config["tasks"].append(greek)
    result = run_experiment(load_config(config), tmp_path / "run")
    assert result.problem.names == ("mix",) and result.problem.test_names == ("mix", "greek")
    rows = {t.name: t for t in result.tests}
    assert set(rows["best"].scores) == {"mix", "greek"} and set(rows["best"].search_scores) == {"mix"}
    # The greek specialist's own skill, measured as a check: above every other model's.
    greek_scores = {name: t.scores["greek"] for name, t in rows.items() if name.startswith("endpoint:")}
    assert max(greek_scores, key=greek_scores.get) == "endpoint:greek"
    assert "greek" not in csv_without_times(tmp_path / "run" / "evaluations.csv")[0]
    assert not (tmp_path / "run" / "respondents-greek.json").exists()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["checks"] == ["greek"] and [o["name"] for o in results["objectives"]] == ["mix"]
    assert "greek (check)" in (tmp_path / "run" / "report.html").read_text()
    assert "| candidate | kind | mix | greek |" in (tmp_path / "run" / "best" / "README.md").read_text()


def test_a_config_whose_tasks_are_all_checks_is_refused(demo_family):
    config = small_config(demo_family)
    config["tasks"][0]["objective"] = False
    with pytest.raises(ConfigError, match="every task is a check"):
        load_config(config)


def test_the_monitor_shows_the_phase_and_wall_clock_time_of_a_running_run(demo_family, tmp_path):
    """The GUI's monitor used to show "0 evaluations | 0 s" while respondents were scored and
    "about 0 s left" through the held-out test, and counted only the search's time. While
    the search runs it now says `searching`, with the time since the run's process started
    it (respondents included) and the search's ETA; stopped, the phase is not shown."""
    from evomerge.search.loop import Callback
    from evomerge.search.monitor import run_status

    seen: list[tuple[str, str, float, float]] = []

    class Look(Callback):
        def on_evaluation(self, searcher, done):
            status = run_status(searcher.store.path.parent)
            seen.append((status.state, status.phase_text, status.elapsed_s, status.generations_elapsed_s))

    started = time.time()
    run = run_experiment(load_config(small_config(demo_family, generations=2)), tmp_path / "r", callbacks=[Look()])
    assert seen and {s[:2] for s in seen} == {("running", "searching")}
    assert all(0 <= search <= wall <= time.time() - started for _, _, wall, search in seen)
    final = run_status(run.run_dir)
    assert final.state == "finished" and final.phase_text == "" and "searching" not in final.summary()
    assert final.phase["name"] == "done" and final.state_text() == "finished"  # its last phase, stored


def test_a_run_stopped_during_its_held_out_test_is_labelled_so():
    """It was shown as `finished` with no test table (its search had finished)."""
    from evomerge.search.monitor import RunStatus

    phase = {"name": "held-out test", "done": 2, "total": 6, "since": 0.0, "at": 0.0}
    status = RunStatus(Path("r"), "finished", phase=phase)
    assert status.state_text() == "interrupted | stopped during the held-out test 2/6; Resume finishes it"
    assert status.summary().startswith("interrupted | stopped during the held-out test 2/6")
    assert RunStatus(Path("r"), "finished", phase={**phase, "name": "done"}).state_text() == "finished"
    searching = RunStatus(Path("r"), "interrupted", phase={**phase, "name": "searching"})
    assert searching.state_text() == "interrupted"  # resume replays the search: nothing to say
    assert RunStatus(Path("r"), "running").phase_text == "loading the models"  # no phase stored yet


def test_a_held_out_test_in_progress_gives_its_own_eta():
    from evomerge.search.monitor import RunStatus

    now = time.time()
    status = RunStatus(Path("r"), "running", phase={"name": "held-out test", "done": 2, "total": 6, "since": now - 100,
                                                    "at": now - 20})  # fmt: skip
    assert status.phase_text == "held-out test 2/6" and 35 < status.eta_s < 45 and status.elapsed_s >= 100
    assert "held-out test 2/6 | generation 0" in status.summary()
