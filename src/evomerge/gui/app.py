"""The Gradio app's pages (New experiment, Monitor, Runs, Compare, Try a model): their
layout and wiring. What the pages do is in ``experiment_page`` and ``run_pages``, the
form's content in ``form``, the run processes in ``launcher``, figures and tables in ``views``.

Why Gradio: it is what Mergenetic's users know, it serves forms, plots and tables from
Python with no front-end build, and it binds where we say (127.0.0.1 by default).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..search.rundir import RUNS
from .experiment_page import SCROLL_TO_PROBLEM, ExperimentPage
from .form import FIELD_KEYS, PRESETS, YAML_BOXES, compose, method_help, preset_config
from .imports import library
from .launcher import Launcher
from .run_pages import RunPages
from .views import Figures

#: Pictures readable in dark mode (matplotlib draws on white), and code boxes of a fixed
#: height (the page scrolls past them; Escape then Tab leaves one).
CSS = """
.dark #fitness img, .dark #pareto img, .dark #compare-plot img { filter: invert(0.9) hue-rotate(180deg); }
.field-error p { margin: 0; }
"""


def build_app(runs: Path | str = RUNS) -> Any:
    """The Blocks app over the run directories under ``runs``. It reaches no network: Gradio's
    analytics and version check are off (they would call out at start), its fonts are local."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read at import and by each component
    import gradio as gr

    runs = Path(runs)
    launcher = Launcher(runs)
    scratch = Path(tempfile.mkdtemp(prefix="evomerge-gui-"))  # plots and the YAML to download
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    new = ExperimentPage(runs, launcher, scratch)
    pages = RunPages(runs, launcher, Figures(scratch))
    first = next(iter(PRESETS))

    def pick(listing: Any, event: Any) -> str:
        return pages.pick(listing, event)

    pick.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the clicked cell

    with gr.Blocks(title="evomerge", delete_cache=(3600, 3600), analytics_enabled=False) as app:
        gr.Markdown("# evomerge: evolutionary model merging")
        fields: dict[str, Any] = {}  # by FIELD_KEYS' names
        errors: dict[str, Any] = {}  # the message box under each

        def field(kind: Any, field_id: str, label: str, **options: Any) -> None:
            """One form field, with the box under it where its config problems are shown."""
            with gr.Column(min_width=200):
                fields[field_id] = kind(value=defaults[field_id], label=label, elem_id=field_id, **options)
                errors[field_id] = gr.Markdown(elem_id=f"{field_id}-error", elem_classes="field-error")

        def run_picker(elem_id: str, label: str, **options: Any) -> Any:
            return gr.Dropdown(pages.names(), value=None, label=label, elem_id=elem_id, **options)

        with gr.Tab("New experiment"):
            preset = gr.Radio(list(PRESETS), value=first, label="Preset", elem_id="preset")
            *initial, first_config = new.fill(first)
            defaults = dict(zip(FIELD_KEYS, initial, strict=True))
            base_config = gr.State(first_config)  # what the form's fields are written over
            yaml_box = {"language": "yaml", "max_lines": 12}
            with gr.Row():
                field(gr.Textbox, "base", "Base model (folder or hub id)")
                field(gr.Textbox, "endpoints", "Models to merge (folders or hub ids, comma-separated)")
            # Each plug-in list holds the presets' values until the page has loaded (fill_choices);
            # any name passes to the config's check, which names the registered ones.
            plugin: dict[str, Any] = {"allow_custom_value": True}
            with gr.Row():
                field(gr.Dropdown, "method", "Merge method", choices=preset_values("merge", "method"), **plugin)
                field(gr.Dropdown, "algorithm", "Algorithm", choices=preset_values("search", "algorithm"), **plugin)
                field(gr.Number, "population", "Population size", precision=0)
                field(gr.Number, "generations", "Generations", precision=0)
                field(gr.Number, "seconds", "Time limit, s (optional)", precision=0)
            method_info = gr.Markdown(elem_id="method-info")
            with gr.Row():
                estimators = preset_values("fitness", "estimator")
                field(gr.Dropdown, "estimator", "Fitness estimator", choices=estimators, **plugin)
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
                label="The config that will run (edit or paste, then Load)", max_lines=30,
            )  # fmt: skip
            with gr.Row():
                load_button = gr.Button("Load this YAML into the form", elem_id="load")
                download_button = gr.DownloadButton(
                    "Download the YAML", value=new.download(compose(first_config, *defaults.values())),
                    elem_id="download",
                )  # fmt: skip
            name = gr.Textbox("gui-run", label="Run name (a folder under the runs directory)", elem_id="run-name")
            launch_button = gr.Button("Launch", variant="primary", elem_id="launch")
            message = gr.Markdown(elem_id="message")  # what Launch and Load did
            summary = gr.Markdown(elem_id="summary")  # the form's problems that no field shows, as it is edited
        with gr.Tab("Monitor") as monitor_tab:
            watched = run_picker("monitor-run", "Run")
            progress = gr.Markdown("No run selected.", elem_id="progress")
            with gr.Row():  # side by side where there is room, else one above the other (min_width)
                picture: dict[str, Any] = {"type": "filepath", "show_label": False, "min_width": 360}  # titled plots
                fitness = gr.Image(label="Fitness per generation", elem_id="fitness", **picture)
                pareto = gr.Image(label="Pareto front", elem_id="pareto", visible=False, **picture)
            genes = gr.Dataframe(label="The winner's genes (each Pareto member's)", elem_id="genes")
            table = gr.Dataframe(label="Evaluations, newest first (id:N names one)", elem_id="evaluations")
            tests = gr.Dataframe(label="Held-out test", elem_id="tests")
            with gr.Row():
                stop_button = gr.Button("Stop", elem_id="stop", interactive=False)
                resume_button = gr.Button("Resume", elem_id="resume", interactive=False)
            control = gr.Markdown(elem_id="control")
        with gr.Tab("Runs") as runs_tab:
            gr.Markdown(f"Every run under `{runs}`. Click a run (or pick it below) to see its results.")
            listing = gr.Dataframe(label="Runs", elem_id="runs", interactive=False)  # read when the tab opens
            refresh = gr.Button("Refresh", elem_id="refresh")
            chosen = run_picker("runs-run", "Run")
            chosen_status = gr.Markdown(elem_id="runs-status")
            chosen_tests = gr.Dataframe(label="Held-out test (and what the search estimated)", elem_id="runs-tests")
            with gr.Row():
                report = gr.File(label="Report (report.html)", elem_id="report")
                csv = gr.File(label="Every evaluation (evaluations.csv)", elem_id="csv")
                log = gr.File(label="The run's output (its log)", elem_id="log")
            with gr.Row():
                member = gr.Dropdown([], label="Candidate", elem_id="member")
                export_out = gr.Textbox(label="Export to (folder)", elem_id="export-out")
                force = gr.Checkbox(False, label="Overwrite the folder if it is not empty", elem_id="force")
            export_button = gr.Button("Export", elem_id="export")
            exported = gr.Markdown(elem_id="exported")
            with gr.Accordion("Report", open=False):
                report_view = gr.HTML(elem_id="report-view")
        with gr.Tab("Compare") as compare_tab:
            compared_runs = run_picker("compare-runs", "Runs to compare", multiselect=True)
            compare_button = gr.Button("Compare", elem_id="compare")
            compare_status = gr.Markdown(elem_id="compare-status")
            compare_plot = gr.Image(label="Best so far per generation", elem_id="compare-plot", **picture)
            compare_tests = gr.Dataframe(label="Held-out test", elem_id="compare-tests")
            compare_genes = gr.Dataframe(label="Each run's winner's genes", elem_id="compare-genes")
        with gr.Tab("Try a model") as try_tab:
            gr.Markdown(
                "A run's evaluated candidate, merged in memory on demand, or the folder of an exported model "
                "(type its path)."
            )
            with gr.Row():
                try_run = run_picker("try-run", "Run, or an exported model's folder", allow_custom_value=True)
                try_member = gr.Dropdown([], label="Candidate (runs only)", elem_id="try-member")
                try_tokens = gr.Number(32, label="New tokens", precision=0, elem_id="try-tokens")
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", lines=3)
            generate_button = gr.Button("Generate", elem_id="generate")
            completion = gr.Textbox(label="Completion", elem_id="completion", lines=4)
            answered_by = gr.Markdown(elem_id="answered-by")

        plugins = [fields["method"], fields["algorithm"], fields["estimator"], method_info]
        app.load(fill_choices, fields["method"], plugins)
        form = [fields[f] for f in FIELD_KEYS]  # compose's arguments, in order
        error_boxes = [errors[f] for f in FIELD_KEYS]
        preset.change(new.fill, preset, [*form, base_config]).then(compose, [base_config, *form], config)
        boxes = [fields[f] for f in YAML_BOXES]
        for component in form:  # then check: a box that does not parse leaves the config unchanged
            component.change(compose, [base_config, *form], config).then(
                new.check, [config, *boxes], [*error_boxes, summary, download_button]
            )
        fields["method"].change(method_help, fields["method"], method_info)
        config.change(new.check, [config, *boxes], [*error_boxes, summary, download_button])
        add_file.upload(new.upload, [add_file, fields["tasks"]], fields["tasks"])
        load_button.click(new.paste, config, [*form, base_config, message])
        launch_button.click(new.launch, [config, name, base_config, *form], [*error_boxes, message, watched]).then(
            None, js=SCROLL_TO_PROBLEM
        )
        seen = gr.State()  # what this page's monitor shows: the run and its activity then
        monitored = [progress, fitness, pareto, genes, table, tests, stop_button, resume_button, seen]
        gr.Timer(1.0).tick(pages.watch, [watched, seen], monitored)
        watched.change(pages.watch, [watched, seen], monitored)
        monitor_tab.select(pages.run_choices, None, watched)
        stop_button.click(pages.stop, watched, control)
        resume_button.click(pages.resume, watched, control)
        refresh.click(pages.refresh, None, [listing, chosen])
        runs_tab.select(pages.refresh, None, [listing, chosen])
        gr.Timer(5.0).tick(pages.table_of_runs, None, listing)  # a run started elsewhere appears by itself
        listing.select(pick, listing, chosen)
        chosen.change(pages.details, chosen, [chosen_status, chosen_tests, report_view, report, csv, log, member]).then(
            pages.follow, chosen, watched
        )  # the monitor follows the run picked here
        export_button.click(pages.export, [chosen, member, export_out, force], exported)
        compare_tab.select(pages.run_choices, None, compared_runs)
        compare_button.click(pages.compare, compared_runs, [compare_status, compare_plot, compare_tests, compare_genes])
        try_tab.select(pages.run_choices, None, try_run)
        try_run.change(pages.try_members, try_run, try_member)
        generate_button.click(pages.try_model, [try_run, try_member, prompt, try_tokens], [completion, answered_by])
    return app


def preset_values(section: str, key: str) -> list[str]:
    """The values the presets give ``section.key``, in their order."""
    return list(dict.fromkeys(str(preset_config(p)[section][key]) for p in PRESETS))


def fill_choices(method: str) -> tuple[Any, ...]:
    """Every registered method, algorithm and estimator, and the method's help: read when a
    page loads, not before the first page is served (the registries import torch, mergekit,
    pymoo and scikit-learn: seconds)."""
    import gradio as gr

    library()
    from ..fitness.estimators import ESTIMATORS
    from ..merge.methods import methods
    from ..search.algorithms import ALGORITHMS

    lists = (list(methods()), list(ALGORITHMS), list(ESTIMATORS))
    return (*(gr.update(choices=names) for names in lists), method_help(method))


def serve(port: int = 7860, runs: Path | str = RUNS, *, share: bool = False, host: str = "127.0.0.1") -> None:
    """Serve the app on ``host`` (loopback by default: only this machine can reach it)."""
    app = build_app(runs)
    app.queue().launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True, css=CSS)
