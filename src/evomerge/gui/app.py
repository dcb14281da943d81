"""The Gradio app: New experiment, Monitor, Runs, Try a model; its layout and wiring. The
form's content is in ``form``, the run processes in ``launcher``, the figures and tables in
``views``.

Why Gradio: it is what Mergenetic's users know, it serves forms, plots and tables from
Python with no front-end build, and it binds where we say (127.0.0.1 by default).
"""

from __future__ import annotations

import atexit
import filecmp
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..errors import EvomergeError
from ..search.monitor import activity, list_runs, run_status
from ..search.rundir import RUNS, RunDir
from ..yamltext import load_yaml
from .form import (
    FIELD_KEYS,
    PRESETS,
    YAML_BOXES,
    box_problems,
    compose,
    field_text,
    form_values,
    method_help,
    preset_config,
    problems_by_field,
    validate,
)
from .launcher import Launcher
from .paths import output_folder
from .paths import run_dir as run_dir_of
from .views import Figures, best_genes, evaluations_table, test_table


def build_app(runs: Path | str = RUNS) -> Any:
    """The Blocks app over the run directories under ``runs``. It reaches no network: Gradio's
    analytics and version check are off (they would call out at start), its fonts are local."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read at import and by each component
    import gradio as gr

    from ..fitness.estimators import ESTIMATORS
    from ..merge.methods import methods
    from ..search.algorithms import ALGORITHMS
    from ..search.experiment import export_run, load_exported, load_member

    runs = Path(runs)
    launcher = Launcher(runs)
    loaded: dict[tuple[str, str], Any] = {}  # "try a model": the model loaded last
    scratch = Path(tempfile.mkdtemp(prefix="evomerge-gui-"))  # plots and the YAML to download
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    figures = Figures(scratch)
    first = next(iter(PRESETS))

    def fill(preset: str) -> tuple[Any, ...]:
        """A preset into the form; it becomes what the form's fields are written over."""
        raw = preset_config(preset)
        return (*form_values(raw), raw)

    def messages(problems: list[tuple[str, str]], ok: str = "") -> tuple[str, ...]:
        """A message under each field with a problem, the others under the form."""
        fields, rest = problems_by_field(problems)
        under = [f"**{'; '.join(fields[f])}**" if f in fields else "" for f in FIELD_KEYS]
        return (*under, "\n".join(f"- {line}" for line in rest) if rest else ok)

    def check(text: str, *boxes: str) -> tuple[Any, ...]:
        """Every edit: the messages by the fields (a YAML box that does not parse first), and
        the download button holds the YAML shown."""
        return (*messages(box_problems(*boxes) + validate(text)[1]), download(text))

    def paste(text: str) -> tuple[Any, ...]:
        """The YAML view, pasted or edited, back into the form (if it is a valid config); the
        keys the form has no field for are kept (it becomes what the fields are written over)."""
        raw, _ = validate(text)
        if raw is None:
            keep = (gr.update() for _ in range(len(FIELD_KEYS) + 1))
            return (*keep, "**Not loaded**: see the messages under the fields.")
        return (*form_values(raw), raw, "Loaded into the form.")

    def download(text: str) -> str:
        path = scratch / "evomerge-config.yaml"  # Gradio serves a copy of it, taken now
        path.write_text(text)
        return str(path)

    def upload(file: str | None, tasks_text: str) -> str:
        """An uploaded JSONL/CSV file, kept under the runs directory, added as a task."""
        if not file:
            return tasks_text
        source = Path(file)
        kept = _unused_path((runs / "uploads" / source.name).resolve(), source)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, kept)
        try:
            tasks_list = load_yaml(field_text(tasks_text)) or []
        except yaml.YAMLError:
            tasks_list = None  # the box's text is kept as typed, the new task added below it
        listed = tasks_list if isinstance(tasks_list, list) else []
        names = {t.get("name") for t in listed if isinstance(t, dict)}
        name = re.sub(r"\W+", "_", source.stem).strip("_") or "task"
        name = next(n for n in (name, *(f"{name}_{i}" for i in range(2, 1000))) if n not in names)
        task = {"name": name, "data": str(kept), "scorer": "generation", "extractor": "number"}
        if not isinstance(tasks_list, list) and field_text(tasks_text):
            return field_text(tasks_text) + "\n" + yaml.safe_dump([task], sort_keys=False, allow_unicode=True)
        return yaml.safe_dump([*listed, task], sort_keys=False, allow_unicode=True)

    def launch(text: str, name: str, *boxes: str) -> tuple[Any, ...]:
        """Refused while a YAML box does not parse: the config shown would not be what the form says."""
        raw, problems = validate(text)
        problems = box_problems(*boxes) + problems
        if problems:
            *under, rest = messages(problems)
            return (*under, f"**Not started.** {rest or 'See the messages under the fields.'}", gr.update())
        name = field_text(name) or "gui-run"
        assert raw is not None  # validated above
        try:
            run_dir = launcher.start(raw, name)
        except EvomergeError as err:
            return (*messages([])[:-1], f"**Not started.** {err}", gr.update())  # the monitor keeps its run
        return (*messages([])[:-1], f"Started **{name}** in `{run_dir}`; follow it on Monitor.", name)

    def watch(name: str, seen: Any) -> tuple[Any, ...]:
        """The monitor, read again only when the run has changed since this page last looked
        (``seen``, kept per browser page): the timer asks every second."""
        if not field_text(name):
            return "No run selected.", None, gr.update(visible=False), None, None, None, None
        try:
            run_dir = run_dir_of(runs, name)
        except EvomergeError as err:
            return str(err), None, gr.update(visible=False), None, None, None, None
        now = (run_dir, activity(run_dir), launcher.running(run_dir), launcher.failure(run_dir))
        if now == seen:
            return (*(gr.update() for _ in range(6)), seen)
        status = run_status(run_dir)
        if now[2] and status.state != "running":
            status.state = "running"  # started, its lock not taken yet
        summary = status.summary() + (f"\n\n**The run's process failed.** {now[3]}" if now[3] else "")
        return (summary, figures.fitness(status), figures.pareto(status), best_genes(status),
                evaluations_table(status), test_table(status), now)  # fmt: skip

    def stop(name: str) -> str:
        try:
            state = launcher.stop(run_dir_of(runs, name))
        except EvomergeError as err:
            return str(err)
        return {
            "stopped": "Stopped; every finished evaluation is stored. Resume continues it.",
            "not running": "Not running.",
            "still running": "Asked to stop (Ctrl-C), but it is still running a minute later; the monitor shows "
            "when it ends, and Stop may be pressed again.",
        }[state]

    def resume(name: str) -> str:
        try:
            launcher.resume(run_dir_of(runs, name))
        except EvomergeError as err:
            return str(err)
        return f"Resumed **{field_text(name)}**."

    def table_of_runs() -> Any:
        import pandas as pd

        rows = [
            [s.path.name, s.state, len(s.evaluations), ", ".join(f"{b:.4f}" for b in s.best if b is not None)]
            for s in list_runs(runs)
        ]
        return pd.DataFrame(rows, columns=["run", "state", "evaluations", "best"])

    def pick(listing: Any, event: Any) -> str:
        """The run on the row clicked, as the browser showed it (the table may have been
        refreshed since this listing was sent)."""
        row = getattr(event, "row_value", None)
        return str(row[0]) if row else str(listing.iloc[event.index[0], 0])

    pick.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the clicked cell

    def details(name: str) -> tuple[Any, ...]:
        """The chosen run's status, test table and report."""
        if not field_text(name):
            return "", None, None
        try:
            status = run_status(run_dir_of(runs, name))
        except EvomergeError as err:
            return str(err), None, None
        if status.state == "empty":
            return f"No run named {field_text(name)!r} under `{runs}`.", None, None
        report = RunDir(status.path).report
        return status.summary(), test_table(status), str(report) if report.exists() else None

    def export(name: str, member: str, out: str) -> str:
        try:
            path = export_run(run_dir_of(runs, name), output_folder(out), member=field_text(member) or None)
        except EvomergeError as err:
            return f"**Not exported.** {err}"
        return f"Exported to `{path}` (HF checkpoint, mergekit_config.yml, model card)."

    def try_model(target: str, member: str, prompt: str, max_new_tokens: float) -> tuple[str, str]:
        """The completion, and which model gave it."""
        from ..evaluate.generation import generate

        if not field_text(prompt):
            return "", "Type a prompt."
        key = (field_text(target), field_text(member) or "best")
        is_run = "/" not in key[0] and RunDir(runs / key[0]).holds_run()  # else a model folder, by its path
        source = f"run {key[0]}, member {key[1]}, merged in memory" if is_run else f"exported model {key[0]}"
        try:
            if key not in loaded:
                loaded.clear()  # one model in memory at a time
                if is_run:
                    loaded[key] = load_member(run_dir_of(runs, key[0]), key[1])
                else:
                    loaded[key] = load_exported(output_folder(key[0]))
            model, tokenizer = loaded[key]
            text = generate(model, tokenizer, [prompt], max_new_tokens=int(max_new_tokens or 32), stop=())[0]
        except EvomergeError as err:
            return "", f"error: {err}"
        return text, f"From {source}."

    with gr.Blocks(title="evomerge", delete_cache=(3600, 3600), analytics_enabled=False) as app:
        gr.Markdown("# evomerge: evolutionary model merging")
        fields: dict[str, Any] = {}  # by FIELD_KEYS' names
        errors: dict[str, Any] = {}  # the message box under each

        def field(kind: Any, field_id: str, label: str, **options: Any) -> None:
            """One form field, with the box under it where its config problems are shown."""
            with gr.Column(min_width=200):
                fields[field_id] = kind(value=defaults[field_id], label=label, elem_id=field_id, **options)
                errors[field_id] = gr.Markdown(elem_id=f"{field_id}-error", elem_classes="field-error")

        with gr.Tab("New experiment"):
            preset = gr.Radio(list(PRESETS), value=first, label="Preset", elem_id="preset")
            *initial, first_config = fill(first)
            defaults = dict(zip(FIELD_KEYS, initial, strict=True))
            base_config = gr.State(first_config)  # what the form's fields are written over
            yaml_box = {"language": "yaml"}
            with gr.Row():
                field(gr.Textbox, "base", "Base model (dir or hub id)")
                field(gr.Textbox, "endpoints", "Models to merge (comma-separated)")
            with gr.Row():
                field(gr.Dropdown, "method", "Merge method", choices=list(methods()))
                field(gr.Dropdown, "algorithm", "Algorithm", choices=list(ALGORITHMS))
                field(gr.Number, "population", "Population size", precision=0)
                field(gr.Number, "generations", "Generations", precision=0)
                field(gr.Number, "seconds", "Time limit, s (optional)", precision=0)
            method_info = gr.Markdown(method_help(defaults["method"]), elem_id="method-info")
            with gr.Row():
                field(gr.Dropdown, "estimator", "Fitness estimator", choices=list(ESTIMATORS))
                field(gr.Number, "anchors", "Anchors (items per candidate)", precision=0)
                field(gr.Radio, "granularity", "Genes", choices=["global", "module", "layer"])
            with gr.Row():
                field(gr.Code, "options", "Algorithm options (YAML)", **yaml_box)
                field(gr.Code, "frozen", "Frozen genes (YAML: name: value)", **yaml_box)
                field(gr.Code, "bounds", "Parameter ranges (YAML: name: [low, high])", **yaml_box)
            field(
                gr.Code, "tasks", "Tasks (YAML: name; data, or search and test files, or lm_eval; columns, template, "
                "scorer, extractor; see docs/config.md)", **yaml_box,
            )  # fmt: skip
            add_file = gr.UploadButton(
                "Add a data file as a task (JSONL or CSV)", file_types=[".jsonl", ".csv", ".json"], elem_id="upload"
            )
            config = gr.Code(
                compose(first_config, *defaults.values()), language="yaml", elem_id="config", interactive=True,
                label="The config that will run (edit or paste, then Load)",
            )  # fmt: skip
            with gr.Row():
                load_button = gr.Button("Load this YAML into the form", elem_id="load")
                download_button = gr.DownloadButton(
                    "Download the YAML", value=download(compose(first_config, *defaults.values())), elem_id="download"
                )
            name = gr.Textbox("gui-run", label="Run name (a folder under the runs directory)", elem_id="run-name")
            launch_button = gr.Button("Launch", variant="primary", elem_id="launch")
            message = gr.Markdown(elem_id="message")
        with gr.Tab("Monitor"):
            watched = gr.Textbox(label="Run (its name; or click one on Runs)", elem_id="monitor-run")
            progress = gr.Markdown("No run selected.", elem_id="progress")
            with gr.Row():
                fitness = gr.Image(label="Fitness per generation", elem_id="fitness", type="filepath")
                pareto = gr.Image(label="Pareto front", elem_id="pareto", type="filepath", visible=False)
            genes = gr.Dataframe(label="Best recipe's genes (per layer group)", elem_id="genes")
            table = gr.Dataframe(label="Evaluations, newest first (id:N names one)", elem_id="evaluations")
            tests = gr.Dataframe(label="Held-out test", elem_id="tests")
            with gr.Row():
                stop_button = gr.Button("Stop", elem_id="stop")
                resume_button = gr.Button("Resume", elem_id="resume")
            control = gr.Markdown(elem_id="control")
        with gr.Tab("Runs") as runs_tab:
            gr.Markdown(f"Every run under `{runs}`. Click a run to see its test table and report.")
            listing = gr.Dataframe(table_of_runs(), label="Runs", elem_id="runs", interactive=False)
            refresh = gr.Button("Refresh", elem_id="refresh")
            chosen = gr.Textbox(label="Run", elem_id="runs-run")
            chosen_status = gr.Markdown(elem_id="runs-status")
            chosen_tests = gr.Dataframe(label="Held-out test", elem_id="runs-tests")
            report = gr.File(label="Report (report.html)", elem_id="report")
            with gr.Row():
                member = gr.Textbox("best", label="Member: best, pareto:K or id:N", elem_id="member")
                export_out = gr.Textbox(label="Export to (folder)", elem_id="export-out")
            export_button = gr.Button("Export", elem_id="export")
            exported = gr.Markdown(elem_id="exported")
        with gr.Tab("Try a model"):
            gr.Markdown(
                "A run's evaluated candidate (`best`, `pareto:K` or `id:N`), merged in memory on demand, or the "
                "folder of an exported model."
            )
            with gr.Row():
                try_run = gr.Textbox(label="Run name, or an exported model's folder", elem_id="try-run")
                try_member = gr.Textbox("best", label="Member (runs only)", elem_id="try-member")
                try_tokens = gr.Number(32, label="New tokens", precision=0, elem_id="try-tokens")
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", lines=3)
            generate_button = gr.Button("Generate", elem_id="generate")
            completion = gr.Textbox(label="Completion", elem_id="completion", lines=4)
            answered_by = gr.Markdown(elem_id="answered-by")

        form = [fields[f] for f in FIELD_KEYS]  # compose's arguments, in order
        error_boxes = [errors[f] for f in FIELD_KEYS]
        preset.change(fill, preset, [*form, base_config]).then(compose, [base_config, *form], config)
        boxes = [fields[f] for f in YAML_BOXES]
        for component in form:  # then check: a box that does not parse leaves the config unchanged
            component.change(compose, [base_config, *form], config).then(
                check, [config, *boxes], [*error_boxes, message, download_button]
            )
        fields["method"].change(method_help, fields["method"], method_info)
        config.change(check, [config, *boxes], [*error_boxes, message, download_button])
        add_file.upload(upload, [add_file, fields["tasks"]], fields["tasks"])
        load_button.click(paste, config, [*form, base_config, message])
        launch_button.click(launch, [config, name, *boxes], [*error_boxes, message, watched])
        seen = gr.State()  # what this page's monitor shows: the run and its activity then
        monitored = [progress, fitness, pareto, genes, table, tests, seen]
        gr.Timer(1.0).tick(watch, [watched, seen], monitored)
        watched.change(watch, [watched, seen], monitored)
        stop_button.click(stop, watched, control)
        resume_button.click(resume, watched, control)
        refresh.click(table_of_runs, None, listing)
        runs_tab.select(table_of_runs, None, listing)
        listing.select(pick, listing, chosen).then(lambda name: name, chosen, watched)  # and the monitor's
        chosen.change(details, chosen, [chosen_status, chosen_tests, report])
        export_button.click(export, [chosen, member, export_out], exported)
        generate_button.click(try_model, [try_run, try_member, prompt, try_tokens], [completion, answered_by])
    return app


def serve(port: int = 7860, runs: Path | str = RUNS, *, share: bool = False, host: str = "127.0.0.1") -> None:
    """Serve the app on ``host`` (loopback by default: only this machine can reach it)."""
    app = build_app(runs)
    app.queue().launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True)


def _unused_path(path: Path, source: Path) -> Path:
    """``path``, or ``name_2.ext``, ... where a different file is there already: an earlier
    upload of the same name may be the data of a run, which must not change under it."""
    for i in range(1, 10_000):
        candidate = path if i == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not candidate.exists() or filecmp.cmp(candidate, source, shallow=False):
            return candidate
    raise EvomergeError(f"too many uploads named {path.name} in {path.parent}")
