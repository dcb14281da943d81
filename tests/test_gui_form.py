"""The GUI's form logic without a browser: every preset and a pasted config round-trip
through the form unchanged, where each config problem is shown, what a method's help says,
and that the monitor's plots are drawn once per state."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from evomerge.config import ConfigError
from evomerge.errors import EvomergeError
from evomerge.gui.app import build_app
from evomerge.gui.experiment_page import unused_path
from evomerge.gui.form import (
    FIELD_KEYS,
    PRESETS,
    compose,
    form_values,
    method_help,
    preset_config,
    problems_by_field,
    validate,
)
from evomerge.gui.launcher import Launcher
from evomerge.gui.views import Figures, evaluations_table
from evomerge.loader import load_config
from evomerge.search.experiment import load_exported
from evomerge.search.monitor import RunStatus
from evomerge.search.store import EvaluationRow, GenerationRow

ROOT = Path(__file__).resolve().parents[1]
PRESET = preset_config("single objective, custom data (demo)")


def problems_of(change) -> list[tuple[str, str]]:
    raw = copy.deepcopy(PRESET)
    change(raw)
    return validate(yaml.safe_dump(raw))[1]


def test_the_preset_is_valid_and_config_errors_carry_their_keys():
    assert validate(yaml.safe_dump(PRESET)) == (PRESET, [])
    raw = copy.deepcopy(PRESET)
    raw["search"]["population_size"] = -3
    raw["search"]["algoritm"] = "GA"
    with pytest.raises(ConfigError) as err:
        load_config(raw, resolve_demo=False)
    keys = [key for key, _ in err.value.problems]
    assert keys == ["search.population_size", "search.algoritm"]
    assert "did you mean 'algorithm'" in str(err.value)


def test_each_problem_goes_under_the_field_that_sets_it():
    fields, rest = problems_by_field(problems_of(lambda r: r["search"].update(population_size=-3)))
    assert list(fields) == ["population"] and fields["population"][0] == "must be 1 or more" and not rest
    fields, _ = problems_by_field(problems_of(lambda r: r["search"].update(options={"bogus": 1})))
    assert list(fields) == ["options"] and "no option 'bogus'" in fields["options"][0]
    fields, _ = problems_by_field(problems_of(lambda r: r["search"].update(algorithm="GAA")))
    assert list(fields) == ["algorithm"]
    fields, _ = problems_by_field(problems_of(lambda r: (r["models"].pop("base"), r.update(merge={"method": "ties"}))))
    assert list(fields) == ["method"] and "set models.base" in fields["method"][0]  # a whole-config check
    fields, _ = problems_by_field(problems_of(lambda r: r["search"].update(max_seconds=-1)))
    assert list(fields) == ["seconds"]
    fields, _ = problems_by_field(problems_of(lambda r: r["tasks"][0].pop("search")))
    assert list(fields) == ["tasks"]
    fields, rest = problems_by_field(problems_of(lambda r: r.update(outputs={"run_dir": "x"})))
    assert not fields and rest and rest[0].startswith("outputs: unknown key; did you mean 'output'")
    fields, rest = problems_by_field(validate("models: [unclosed")[1])
    assert not fields and "not valid YAML" in rest[0]


def test_a_methods_help_names_its_searched_parameters_and_ranges():
    assert "`weight` per model in [0, 1]" in method_help("task_arithmetic")
    assert "`density`" not in method_help("task_arithmetic").split("Fixed")[0]  # no effect there: not searched
    assert "`density` per model in [0.2, 0.8]" in method_help("della")  # narrowed by its epsilon
    assert "`t` shared in [0, 1]" in method_help("slerp")
    assert "unknown merge method" in method_help("tie")


def status_after(generations: int, path: Path) -> RunStatus:
    rows = [
        GenerationRow(g, [], 4 * (g + 1), {}, {"best": [0.5 + g / 10], "mean": [0.4]}, {}, float(g))
        for g in range(generations)
    ]
    return RunStatus(path, "running", ["mix"], [True], rows, planned_generations=3)


def test_plots_are_drawn_once_per_state_and_the_old_picture_removed(tmp_path):
    figures = Figures(tmp_path / "plots")
    (tmp_path / "plots").mkdir()
    first = figures.fitness(status_after(1, tmp_path / "run"))
    assert first.endswith(".png") and Path(first).exists()
    drawn_at = Path(first).stat().st_mtime_ns
    assert figures.fitness(status_after(1, tmp_path / "run")) == first  # no change: the same file, not redrawn
    assert Path(first).stat().st_mtime_ns == drawn_at
    second = figures.fitness(status_after(2, tmp_path / "run"))
    assert second != first and [p.name for p in (tmp_path / "plots").iterdir()] == [Path(second).name]
    assert figures.pareto(status_after(2, tmp_path / "run"))["visible"] is False  # one objective: no front
    assert figures.fitness(status_after(0, tmp_path / "run")) is None


def evaluation(number: int, ok: bool = True) -> EvaluationRow:
    return EvaluationRow(
        number, number // 4, f"d{number}", [0.1], {"weight[a]@all": 0.1 * number}, "", [0.5] if ok else [],
        {}, 0.01, 0.2, "ok" if ok else "fail", None if ok else "NaN weights",
    )  # fmt: skip


def test_the_evaluations_table_is_newest_first_with_csv_ids_and_failures():
    every = [evaluation(1), evaluation(2, ok=False), evaluation(3)]
    status = RunStatus(Path("r"), "running", ["mix"], [True], every=every)
    assert status.evaluations == [every[0], every[2]]  # the scored ones
    table = evaluations_table(status)
    assert list(table.columns) == ["id", "generation", "weight[a]@all", "mix", "seconds", "error"]
    assert table["id"].tolist() == [3, 2, 1]  # newest first; ids as evaluations.csv (and id:N) number them
    assert table.iloc[1]["error"] == "NaN weights" and pd.isna(table.iloc[1]["mix"])  # failed: no score
    assert len(evaluations_table(status, last=2)) == 2


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_a_run_name_is_one_folder_under_the_runs(tmp_path, name):
    with pytest.raises(EvomergeError, match="run name"):
        Launcher(tmp_path / "runs").start(copy.deepcopy(PRESET), name)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started


def test_the_app_builds_over_an_empty_runs_folder(tmp_path):
    """Its form's fields line up with FIELD_KEYS (checked as it builds); no run is needed."""
    app = build_app(tmp_path / "runs")
    ids = {block.elem_id for block in app.blocks.values()}
    assert {*FIELD_KEYS, "config", "launch", "progress", "evaluations", "runs", "prompt"} <= ids
    assert not (tmp_path / "runs").exists()  # nothing written until a run is launched


def test_an_upload_never_replaces_a_different_earlier_file_of_its_name(tmp_path):
    kept, one, two = tmp_path / "data.jsonl", tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    assert unused_path(kept, one) == kept
    kept.write_bytes(b"one")
    assert unused_path(kept, one) == kept  # the same bytes again: the same file
    assert unused_path(kept, two) == tmp_path / "data_2.jsonl"  # an earlier run's data stays as it was


def test_an_exported_model_loads_in_its_saved_dtype_and_a_bad_folder_is_said(tmp_path, demo_family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, saved = demo_family / "models" / "greek", tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(saved)
    AutoTokenizer.from_pretrained(source).save_pretrained(saved)
    model, tokenizer = load_exported(saved, device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16  # not widened to fp32: half the memory
    assert tokenizer("gr bado=")["input_ids"]
    with pytest.raises(EvomergeError, match=r"no config\.json"):
        load_exported(tmp_path / "missing")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((saved / "config.json").read_text())
    with pytest.raises(EvomergeError, match=r"no \.safetensors"):
        load_exported(tmp_path / "pickled")


def test_a_runs_activity_changes_with_each_stored_evaluation(tmp_path):
    """The monitor reads a run again only when this changes; it must change on every commit."""
    from evomerge.search.monitor import activity
    from evomerge.search.store import RunStore

    run = tmp_path / "run"
    assert activity(run) == (None, None, False)  # nothing yet
    run.mkdir()
    store = RunStore(run / "run.sqlite")
    try:
        before = activity(run)
        store.set("stop_reason", "generations")  # any commit
        assert activity(run) != before
        assert activity(run) == activity(run)  # and it is stable while nothing happens
    finally:
        store.close()


def test_the_layer_path_preset_is_a_valid_path_search():
    """The GUI's fifth preset: parameter space is not the only space a user can pick."""
    raw = preset_config("layer paths, custom data (demo)")
    assert validate(yaml.safe_dump(raw)) == (raw, [])
    config = load_config(raw, resolve_demo=False)
    assert config.search.space == "path" and config.search.algorithm == "CMAES"
    assert [t.name for t in config.tasks if t.objective] == ["greek_add_loss"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_round_trips_through_the_form_unchanged(preset):
    """The form shows a preset; written back, it is the same config (the same run)."""
    raw = preset_config(preset)
    text = compose(raw, *form_values(raw))
    assert load_config(yaml.safe_load(text), resolve_demo=False) == load_config(raw, resolve_demo=False)


@pytest.mark.parametrize("example", ["mix.yaml", "multi-objective.yaml", "dataflow.yaml"])
def test_a_pasted_config_round_trips_through_the_form_unchanged(example):
    """A config pasted into the YAML view and loaded into the form keeps every key the form
    has no field for (respondents, selection, output, seed, ...) and the schema's defaults
    for the keys it does not set (the estimator was shown as mpirt where the default is full)."""
    raw = yaml.safe_load((ROOT / "examples" / example).read_text())
    again = yaml.safe_load(compose(raw, *form_values(raw)))
    assert load_config(again, resolve_demo=False) == load_config(raw, resolve_demo=False)


def test_a_config_that_leaves_keys_to_the_schema_shows_and_keeps_its_defaults():
    raw = yaml.safe_load((ROOT / "examples" / "mix.yaml").read_text())
    bare = {"models": raw["models"], "tasks": raw["tasks"]}  # no fitness, no search: the schema's defaults
    shown = dict(zip(FIELD_KEYS, form_values(bare), strict=True))
    assert shown["estimator"] == "full" and shown["algorithm"] == "GA" and shown["population"] == 16
    assert load_config(yaml.safe_load(compose(bare, *form_values(bare))), resolve_demo=False) == load_config(
        bare, resolve_demo=False
    )


@pytest.mark.parametrize("name", ["../outside", "..", "/etc", "a/b", "", " ", "...", "a\\b"])
def test_a_run_name_that_is_not_a_folder_under_the_runs_is_refused(name, tmp_path):
    from evomerge.gui.paths import RunNameError, run_dir

    with pytest.raises(RunNameError, match="use letters, digits"):
        run_dir(tmp_path / "runs", name)
    assert run_dir(tmp_path / "runs", " my-run_2.b ") == (tmp_path / "runs" / "my-run_2.b").resolve()


def test_an_export_folder_is_made_absolute_and_not_a_file(tmp_path, monkeypatch):
    from evomerge.gui.paths import RunNameError, output_folder

    monkeypatch.chdir(tmp_path)
    assert output_folder("exported") == tmp_path / "exported"
    (tmp_path / "file").write_text("x")
    for text, said in (("", "give a folder"), ("file", "is a file")):
        with pytest.raises(RunNameError, match=said):
            output_folder(text)


def test_a_yaml_box_that_does_not_parse_is_a_problem_under_it():
    from evomerge.gui.form import box_problems

    assert box_problems("pop_size: 8", "", "weight: [0, 1]", "- name: t\n  data: x.jsonl") == []
    problems = box_problems("pop_size: [8", "", "", "- name: t\n  data: [x")
    assert [key for key, _ in problems] == ["search.options", "tasks"]
    assert problems[0][1].startswith("not valid YAML at line 1, column ")
    assert "the config below still has this box's last valid value" in problems[1][1]


def test_the_runs_list_is_ordered_by_when_each_run_started(tmp_path):
    """Not by the folder's time, which reading a store (its -wal and -shm files) changes."""
    import os

    from evomerge.search.monitor import list_runs
    from evomerge.search.rundir import RunDir

    for i, name in enumerate(["older", "newer"]):
        rd = RunDir(tmp_path / name)
        rd.path.mkdir()
        rd.config.write_text("{}")
        os.utime(rd.config, (1_000_000 + i, 1_000_000 + i))
        rd.open_store().close()
    os.utime(tmp_path / "older", None)  # the folder just touched, as a read does
    assert [s.path.name for s in list_runs(tmp_path)] == ["newer", "older"]


def test_a_phase_tells_its_listener_of_each_step_with_bars_off():
    from evomerge.progress import announce, phase, reporting

    heard: list[tuple[str, int, int]] = []
    with reporting(lambda *said: heard.append(said)):
        with phase("scoring respondents (mix)", 2) as bar:
            bar.advance()
            bar.advance()
        announce("saving")
    announce("unheard")  # outside the block
    assert heard == [("scoring respondents (mix)", 0, 2), ("scoring respondents (mix)", 1, 2),
                     ("scoring respondents (mix)", 2, 2), ("saving", 0, 0)]  # fmt: skip


def test_a_message_is_shown_as_text_not_markup():
    """A YAML error quotes `<stream end>`: as Markdown it was a tag, and the message was cut there."""
    from evomerge.gui.experiment_page import ExperimentPage

    under = ExperimentPage.messages([("tasks", "expected ',' or ']', but got '<stream end>'")])
    shown = under[list(FIELD_KEYS).index("tasks")]
    assert "&lt;stream end&gt;" in shown and "<stream" not in shown


def test_the_preflight_says_under_each_field_which_model_or_data_file_the_run_would_stop_at(demo_family, tmp_path):
    """A missing model folder or a data file that does not parse used to start a run that
    failed a minute later ("Started", then an error on the Monitor)."""
    from evomerge.gui.experiment_page import ExperimentPage
    from evomerge.preflight import preflight

    assert preflight(load_config(PRESET)) == []
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1", "answer": "2"}\n{not json\n')
    raw = copy.deepcopy(PRESET)
    raw["models"]["endpoints"] = [str(tmp_path / "greeek"), str(tmp_path / "empty"), "someone/not-cached"]
    raw["tasks"][0] = {"name": "t", "data": str(tmp_path / "bad.jsonl")}
    problems = dict(preflight(load_config(raw)))
    assert list(problems) == ["models.endpoints.0", "models.endpoints.1", "models.endpoints.2", "tasks.0"]
    assert problems["models.endpoints.0"].startswith(f"{tmp_path / 'greeek'}: no such folder ({tmp_path} holds: ")
    assert "has no config.json" in problems["models.endpoints.1"]
    assert "hub is off (HF_HUB_OFFLINE)" in problems["models.endpoints.2"]  # the tests run offline
    assert "bad.jsonl" in problems["tasks.0"]
    page = ExperimentPage(tmp_path / "runs", Launcher(tmp_path / "runs"), tmp_path)
    said = page.launch(compose(raw, *form_values(raw)), "r", raw, *form_values(raw))
    assert "no such folder" in said[list(FIELD_KEYS).index("endpoints")]
    assert "bad.jsonl" in said[list(FIELD_KEYS).index("tasks")] and said[-2].startswith("**Not started.**")
    assert not (tmp_path / "runs").exists()  # nothing written, nothing started


def test_launch_runs_only_what_the_yaml_view_shows(tmp_path):
    """Launch takes the form's fields: a field's edit not yet written into the YAML view (a
    fast click), or a view edited without Load, is refused rather than run unseen."""
    from evomerge.gui.experiment_page import NOT_SHOWN, ExperimentPage

    page = ExperimentPage(tmp_path / "runs", Launcher(tmp_path / "runs"), tmp_path)
    fields = list(form_values(PRESET))
    shown = compose(PRESET, *fields)
    fields[list(FIELD_KEYS).index("population")] = -3  # typed, the view not updated yet
    said = page.launch(shown, "r", PRESET, *fields)
    assert said[list(FIELD_KEYS).index("population")] == "**must be 1 or more**" and "Not started" in said[-2]
    fields[list(FIELD_KEYS).index("population")] = 6
    said = page.launch(shown, "r", PRESET, *fields)
    assert said[-2] == f"**Not started.** {NOT_SHOWN}"
    assert not (tmp_path / "runs").exists()


def multi_status(tmp_path: Path) -> RunStatus:
    """Two objectives; evaluations 2 and 4 score the same (one point of the front), 3 is dominated."""

    def row(n: int, scores: list[float]) -> EvaluationRow:
        return EvaluationRow(n, 0, f"d{n}", [0.1], {"w@all": n / 10}, "", scores, {}, 0.0, 0.0)

    every = [row(1, [0.9, 0.1]), row(2, [0.5, 0.5]), row(3, [0.4, 0.4]), row(4, [0.5, 0.5]), row(5, [0.1, 0.9])]
    return RunStatus(tmp_path, "finished", ["a", "b"], [True, True], every=every)


def test_a_front_names_each_point_once_and_the_status_says_whose_scores_it_shows(tmp_path):
    from evomerge.gui.views import best_genes, member_names

    status = multi_status(tmp_path)
    assert [status.evaluation_id(r) for r in status.front] == [1, 2, 5]  # 4 scores as 2: not a second member
    assert status.best_text() == "Pareto front of 3 | best per objective: a 0.9000 (id:1), b 0.9000 (id:5)"
    members = member_names(status)
    assert members[:3] == [("pareto:0 (id:1): a 0.9000, b 0.1000", "id:1"),
                           ("pareto:1 (id:2): a 0.5000, b 0.5000", "id:2"),
                           ("pareto:2 (id:5): a 0.1000, b 0.9000", "id:5")]  # fmt: skip
    assert [value for _, value in members[3:]] == ["id:4", "id:3"]  # the others, newest first
    genes = best_genes(status)
    assert list(genes.columns) == ["gene", "pareto:0 (id:1)", "pareto:1 (id:2)", "pareto:2 (id:5)"]
    assert genes.iloc[0].tolist() == ["w@all", 0.1, 0.2, 0.5]


def test_the_runs_pages_show_results_inline_export_with_overwrite_and_compare(finished_run, tmp_path):
    import shutil

    from evomerge.gui.run_pages import RunPages

    runs = tmp_path / "runs"
    for name in ("one", "two"):
        shutil.copytree(finished_run.run_dir, runs / name)
    pages = RunPages(runs, Launcher(runs), Figures(tmp_path / "plots"))
    (tmp_path / "plots").mkdir()
    assert pages.names() == ["two", "one"] or pages.names() == ["one", "two"]
    status, tests, report, _file, csv, log, members = pages.details("one")
    assert status.startswith("finished |") and report.startswith('<iframe id="report-frame" srcdoc="')
    assert "search estimate: mix" in tests.columns and tests["search estimate: mix"].notna().all()
    assert csv.endswith("evaluations.csv") and log is None  # the CLI ran it: no GUI log
    assert members["choices"][0][0].startswith("best (id:") and members["value"] == members["choices"][0][1]
    out = tmp_path / "exported"
    assert pages.export("one", members["value"], str(out), False).startswith("Exported to")
    again = pages.export("one", members["value"], str(out), False)
    assert "tick Overwrite" in again and "--force" not in again  # the GUI has no command line
    assert pages.export("one", members["value"], str(out), True).startswith("Exported to")
    said, plot, table, genes = pages.compare(["one", "two"])
    assert said.startswith("one: finished") and Path(plot).exists()
    assert table["run"].tolist().count("one") == table["run"].tolist().count("two") > 1
    assert genes.columns.tolist()[:1] == ["gene"] and len(genes.columns) == 3
    assert pages.compare(["one"])[0] == "Pick two or more runs."


@pytest.mark.parametrize("name", [n for n, (_, source) in PRESETS.items() if source != "path"])
def test_each_preset_is_what_the_wizard_writes_for_its_answers(name):
    """The form's presets are written out (drawn before the first page, without the
    registries); they stay what `evomerge init --no-input` gives."""
    from evomerge.gui.form import wizard_preset
    from evomerge.wizard import Answers, build_config

    objectives, source = PRESETS[name]
    config = build_config(Answers(objectives=objectives, source=source), lambda question, default: default)
    config.pop("output")
    assert wizard_preset(objectives, source) == config


@pytest.mark.parametrize(("sigint", "said"), [("default", "stopped"), ("ignore", "still running")])
def test_stop_says_whether_a_run_it_did_not_start_has_ended_and_never_kills_it(tmp_path, sigint, said):
    """A run held by another process (the CLI's) is reached through its lock's PID. It used
    to be reported "Stopped" even when the process went on."""
    import signal
    import subprocess
    import sys

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    launcher = Launcher(tmp_path / "runs")
    assert launcher.stop(run) == "not running"
    handler = "signal.SIG_IGN" if sigint == "ignore" else "signal.default_int_handler"
    holder = (
        f"import signal, sys, time; signal.signal(signal.SIGINT, {handler})\n"
        "from pathlib import Path\nfrom evomerge.search.lock import run_lock\n"
        f"with run_lock(Path({str(run)!r})):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    command = [sys.executable, "-c", holder]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert launcher.stop(run, timeout=3) == said
        if said == "still running":
            assert proc.poll() is None  # not killed
        else:
            proc.wait(timeout=30)  # its lock released, it ends by itself (Ctrl-C's exit)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
