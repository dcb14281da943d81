"""The Gradio app: New experiment, Monitor, Runs, Try a model.

Why Gradio: it is what Mergenetic's users know, it serves forms, plots and tables from
Python with no front-end build, and it binds where we say (127.0.0.1 by default).
A run is ``python -m evomerge run`` in a process of its own (a new session, so the
GUI's worker threads never hold a model and Ctrl-C semantics stay the CLI's): Stop
sends it SIGINT, which leaves every finished evaluation stored, and Resume is
``evomerge resume`` on the same directory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_config, resolve_relative_paths
from ..errors import EvomergeError
from ..search.monitor import RunStatus, list_runs, run_status

log = logging.getLogger(__name__)

#: The four classic modes, each a config that runs on the demo family as is.
PRESETS = {
    "single objective, custom data (demo)": ("single", "data"),
    "single objective, lm-eval task (demo)": ("single", "lmeval"),
    "multi-objective, custom data (demo)": ("multi", "data"),
    "multi-objective, lm-eval tasks (demo)": ("multi", "lmeval"),
}


def preset_config(name: str) -> dict[str, Any]:
    """A preset's config, from the same answers ``evomerge init --no-input`` gives."""
    from ..wizard import Answers, build_config

    objectives, source = PRESETS[name]
    config = build_config(Answers(objectives=objectives, source=source), lambda question, default: default)
    for task in config["tasks"]:
        lm_eval = task.get("lm_eval")
        if isinstance(lm_eval, str) and lm_eval.endswith(".yaml"):  # the repository's examples/, if here
            found = Path(lm_eval) if Path(lm_eval).exists() else Path(__file__).resolve().parents[3] / lm_eval
            task["lm_eval"] = str(found.resolve())
    config["search"].update(population_size=8, generations=4)
    config.pop("output", None)
    return config


def validate(text: str) -> tuple[dict[str, Any] | None, str]:
    """The YAML as a config dict and "" when valid, else None and the config's own message
    (one line per problem, naming the key)."""
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ConfigError("a config is a YAML mapping with sections models, merge, tasks, fitness, search")
        load_config(raw, resolve_demo=False)
    except yaml.YAMLError as err:
        return None, f"not valid YAML: {err}"
    except EvomergeError as err:
        return None, str(err)
    return raw, ""


class Launcher:
    """The runs this GUI started, by run directory."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    def start(self, raw: dict[str, Any], name: str) -> Path:
        run_dir = (self.runs / name).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise EvomergeError(f"{run_dir} exists already; choose another run name (or Resume it on Monitor)")
        resolve_relative_paths(raw, Path.cwd())  # paths typed in the form are from where the GUI runs
        self.runs.mkdir(parents=True, exist_ok=True)
        config = self.runs / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        return self._spawn(run_dir, ["run", str(config), "--run-dir", str(run_dir)])

    def resume(self, run_dir: Path) -> Path:
        if self.running(run_dir):
            raise EvomergeError(f"{run_dir.name} is running")
        return self._spawn(run_dir, ["resume", str(run_dir)])

    def stop(self, run_dir: Path) -> bool:
        """SIGINT, as Ctrl-C: the run stops after storing what finished (exit 130)."""
        proc = self.processes.get(run_dir)
        if proc is None or proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
        return True

    def running(self, run_dir: Path) -> bool:
        proc = self.processes.get(run_dir)
        return proc is not None and proc.poll() is None

    def _spawn(self, run_dir: Path, args: list[str]) -> Path:
        log_file = (self.runs / f"{run_dir.name}.log").open("ab")
        command = [sys.executable, "-m", "evomerge", *args, "--no-progress"]
        self.processes[run_dir] = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        return run_dir


def fitness_figure(status: RunStatus) -> str | None:
    """The report's fitness-per-generation figure for the run so far, as a PNG path."""
    from ..report import plots

    if not status.generations:
        return None
    out = Path(tempfile.gettempdir()) / f"evomerge-gui-{abs(hash(status.path))}-{len(status.generations)}.png"
    with plots.literal_text():
        path = plots.fitness_per_generation(status.generations, status.objectives, status.maximize, out)
    return str(path) if path else None


def pareto_figure(status: RunStatus) -> str | None:
    from ..report import plots
    from ..search.loop import winners

    if len(status.objectives) < 2 or not status.evaluations:
        return None
    out = Path(tempfile.gettempdir()) / f"evomerge-gui-pareto-{abs(hash(status.path))}-{len(status.evaluations)}.png"
    front = winners(status.evaluations, status.maximize)
    with plots.literal_text():
        path = plots.pareto_front(status.evaluations, front, status.objectives, out, status.tests)
    return str(path) if path else None


def test_table(status: RunStatus) -> Any:
    import pandas as pd  # a Gradio dependency

    rows = [[t.name, t.kind, *(round(t.scores[n], 4) for n in status.objectives)] for t in status.tests]
    return pd.DataFrame(rows, columns=["candidate", "kind", *status.objectives])


def best_genes(status: RunStatus) -> Any:
    import pandas as pd

    from ..search.loop import winners

    rows = winners(status.evaluations, status.maximize) if status.evaluations else []
    genes = [[name, round(value, 4)] for name, value in rows[0].genes.items()] if rows else []
    return pd.DataFrame(genes, columns=["gene", "best so far"])


def build_app(runs: Path | str = "runs") -> Any:
    """The Blocks app over the run directories under ``runs``."""
    import gradio as gr

    from ..fitness.estimators import ESTIMATORS
    from ..merge.methods import methods
    from ..search.algorithms import ALGORITHMS
    from ..search.experiment import export_run

    runs = Path(runs)
    launcher = Launcher(runs)
    loaded: dict[tuple[str, str], Any] = {}  # "try a model": the candidate merged last
    scratch = Path(tempfile.mkdtemp(prefix="evomerge-gui-"))
    first = next(iter(PRESETS))

    def compose(preset: str, base: str, endpoints: str, method: str, algorithm: str, population: float,
                generations: float, estimator: str, anchors: float, granularity: str, options: str, frozen: str,
                tasks: str) -> str:  # fmt: skip
        raw = preset_config(preset)
        models = [e.strip() for e in _text(endpoints).split(",") if e.strip()]
        raw["models"] = {"base": _text(base), "endpoints": models} if _text(base) else {"endpoints": models}
        raw["merge"] = {"method": method}
        raw["search"].update(algorithm=algorithm, population_size=_int(population), generations=_int(generations))
        raw["search"]["granularity"] = granularity
        raw["fitness"] = {"estimator": estimator, **({"anchors": _int(anchors)} if anchors else {})}
        for key, text in (("options", options), ("frozen", frozen)):
            with contextlib.suppress(yaml.YAMLError):  # until it parses, the YAML view keeps the last value
                raw["search"][key] = yaml.safe_load(text) or {}
        with contextlib.suppress(yaml.YAMLError):
            raw["tasks"] = yaml.safe_load(tasks)
        return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)

    def form_from(raw: dict[str, Any]) -> tuple[Any, ...]:
        s, f = raw.get("search") or {}, raw.get("fitness") or {}
        return (
            (raw.get("models") or {}).get("base") or "", ", ".join((raw.get("models") or {}).get("endpoints") or []),
            (raw.get("merge") or {}).get("method", "task_arithmetic"), s.get("algorithm", "GA"),
            s.get("population_size"), s.get("generations"), f.get("estimator", "mpirt"), f.get("anchors"),
            s.get("granularity", "global"), yaml.safe_dump(s.get("options") or {}).strip(),
            yaml.safe_dump(s.get("frozen") or {}).strip(), yaml.safe_dump(raw.get("tasks") or [], sort_keys=False),
        )  # fmt: skip

    def fill(preset: str) -> tuple[Any, ...]:
        return form_from(preset_config(preset))

    def paste(text: str) -> tuple[Any, ...]:
        """The YAML view, pasted or edited, back into the form (if it is a valid config)."""
        raw, message = validate(text)
        if raw is None:
            return (*(gr.update() for _ in range(12)), f"**Not loaded.** {message}")
        return (*form_from(raw), "Loaded into the form.")

    def download(text: str) -> str:
        path = scratch / "evomerge-config.yaml"  # Gradio serves a copy of it, taken now
        path.write_text(text)
        return str(path)

    def try_model(name: str, member: str, prompt: str, max_new_tokens: float) -> str:
        from ..evaluate.generation import generate
        from ..search.experiment import load_member

        if not _text(prompt):
            return "Type a prompt."
        key = (_text(name), _text(member) or "best")
        try:
            if key not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[key] = load_member(runs / key[0], key[1])
            model, tokenizer = loaded[key]
            return generate(model, tokenizer, [prompt], max_new_tokens=int(max_new_tokens or 32), stop=())[0]
        except EvomergeError as err:
            return f"error: {err}"

    def launch(text: str, name: str) -> tuple[str, str]:
        raw, message = validate(text)
        if raw is None:
            return f"**Not started.** {message}", ""
        name = _text(name) or "gui-run"
        try:
            run_dir = launcher.start(raw, name)
        except EvomergeError as err:
            return f"**Not started.** {err}", ""
        return f"Started **{name}** in `{run_dir}`; follow it on Monitor.", name

    def watch(name: str) -> tuple[Any, ...]:
        if not _text(name):
            return "No run selected.", None, None, None, None
        status = run_status(runs / _text(name))
        if launcher.running(status.path) and status.state != "running":
            status.state = "running"  # started, its lock not taken yet
        return status.summary(), fitness_figure(status), pareto_figure(status), best_genes(status), test_table(status)

    def stop(name: str) -> str:
        stopped = launcher.stop((runs / _text(name)).resolve())
        return "Stopped; every finished evaluation is stored. Resume continues it." if stopped else "Not running."

    def resume(name: str) -> str:
        try:
            launcher.resume((runs / _text(name)).resolve())
        except EvomergeError as err:
            return str(err)
        return f"Resumed **{_text(name)}**."

    def table_of_runs() -> Any:
        import pandas as pd

        rows = [
            [s.path.name, s.state, len(s.evaluations), ", ".join(f"{b:.4f}" for b in s.best if b is not None)]
            for s in list_runs(runs)
        ]
        return pd.DataFrame(rows, columns=["run", "state", "evaluations", "best"])

    def export(name: str, member: str, out: str) -> str:
        try:
            path = export_run(runs / _text(name), _text(out), member=_text(member) or None)
        except EvomergeError as err:
            return f"**Not exported.** {err}"
        return f"Exported to `{path}` (HF checkpoint, mergekit_config.yml, model card)."

    with gr.Blocks(title="evomerge") as app:
        gr.Markdown("# evomerge: evolutionary model merging")
        with gr.Tab("New experiment"):
            preset = gr.Radio(list(PRESETS), value=first, label="Preset", elem_id="preset")
            defaults = fill(first)
            with gr.Row():
                base = gr.Textbox(defaults[0], label="Base model (dir or hub id)", elem_id="base")
                endpoints = gr.Textbox(defaults[1], label="Models to merge (comma-separated)", elem_id="endpoints")
            with gr.Row():
                method = gr.Dropdown(list(methods()), value=defaults[2], label="Merge method", elem_id="method")
                algorithm = gr.Dropdown(list(ALGORITHMS), value=defaults[3], label="Algorithm", elem_id="algorithm")
                population = gr.Number(defaults[4], label="Population size", precision=0, elem_id="population")
                generations = gr.Number(defaults[5], label="Generations", precision=0, elem_id="generations")
            with gr.Row():
                estimator = gr.Dropdown(
                    list(ESTIMATORS), value=defaults[6], label="Fitness estimator", elem_id="estimator"
                )
                anchors = gr.Number(defaults[7], label="Anchors (items per candidate)", precision=0, elem_id="anchors")
                granularity = gr.Radio(
                    ["global", "module", "layer"], value=defaults[8], label="Genes", elem_id="granularity"
                )
            with gr.Row():
                options = gr.Code(defaults[9], language="yaml", label="Algorithm options (YAML)", elem_id="options")
                frozen = gr.Code(
                    defaults[10], language="yaml", label="Frozen genes (YAML: name: value)", elem_id="frozen"
                )
            tasks = gr.Code(defaults[11], language="yaml", label="Tasks (YAML)", elem_id="tasks")
            config = gr.Code(
                compose(first, *defaults), language="yaml", label="The config that will run (edit or paste, then Load)",
                elem_id="config", interactive=True,
            )  # fmt: skip
            with gr.Row():
                load_button = gr.Button("Load this YAML into the form", elem_id="load")
                download_button = gr.DownloadButton(
                    "Download the YAML", value=download(compose(first, *defaults)), elem_id="download"
                )
            name = gr.Textbox("gui-run", label="Run name (a folder under the runs directory)", elem_id="run-name")
            launch_button = gr.Button("Launch", variant="primary", elem_id="launch")
            message = gr.Markdown(elem_id="message")
        with gr.Tab("Monitor"):
            watched = gr.Textbox(label="Run", elem_id="monitor-run")
            progress = gr.Markdown("No run selected.", elem_id="progress")
            with gr.Row():
                fitness = gr.Image(label="Fitness per generation", elem_id="fitness", type="filepath")
                pareto = gr.Image(label="Pareto front", elem_id="pareto", type="filepath")
            genes = gr.Dataframe(label="Best recipe's genes", elem_id="genes")
            tests = gr.Dataframe(label="Held-out test", elem_id="tests")
            with gr.Row():
                stop_button = gr.Button("Stop", elem_id="stop")
                resume_button = gr.Button("Resume", elem_id="resume")
            control = gr.Markdown(elem_id="control")
        with gr.Tab("Runs"):
            listing = gr.Dataframe(table_of_runs(), label="Runs", elem_id="runs")
            refresh = gr.Button("Refresh", elem_id="refresh")
            with gr.Row():
                export_run_name = gr.Textbox(label="Run", elem_id="export-run")
                member = gr.Textbox("best", label="Member: best, pareto:K or id:N", elem_id="member")
                export_out = gr.Textbox(label="Export to (folder)", elem_id="export-out")
            export_button = gr.Button("Export", elem_id="export")
            exported = gr.Markdown(elem_id="exported")
        with gr.Tab("Try a model"):
            gr.Markdown("Any evaluated candidate, merged in memory on demand: `best`, `pareto:K` or `id:N`.")
            with gr.Row():
                try_run = gr.Textbox(label="Run", elem_id="try-run")
                try_member = gr.Textbox("best", label="Member", elem_id="try-member")
                try_tokens = gr.Number(32, label="New tokens", precision=0, elem_id="try-tokens")
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", lines=3)
            generate_button = gr.Button("Generate", elem_id="generate")
            completion = gr.Textbox(label="Completion", elem_id="completion", lines=4)

        fields = [preset, base, endpoints, method, algorithm, population, generations, estimator, anchors, granularity,
                  options, frozen, tasks]  # fmt: skip
        preset.change(fill, preset, fields[1:]).then(compose, fields, config)
        for field in fields[1:]:
            field.change(compose, fields, config)  # type: ignore[attr-defined]
        launch_button.click(launch, [config, name], [message, watched])
        outputs = [progress, fitness, pareto, genes, tests]
        gr.Timer(1.0).tick(watch, watched, outputs)
        watched.change(watch, watched, outputs)
        stop_button.click(stop, watched, control)
        resume_button.click(resume, watched, control)
        refresh.click(table_of_runs, None, listing)
        export_button.click(export, [export_run_name, member, export_out], exported)
        load_button.click(paste, config, [*fields[1:], message])
        config.change(download, config, download_button)  # the button always holds the YAML shown
        generate_button.click(try_model, [try_run, try_member, prompt, try_tokens], completion)
    return app


def serve(port: int = 7860, runs: Path | str = "runs", *, share: bool = False, host: str = "127.0.0.1") -> None:
    """Serve the app on ``host`` (loopback by default: only this machine can reach it)."""
    app = build_app(runs)
    app.queue().launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _text(value: str | None) -> str:
    """A text field's value, stripped (Gradio gives None for a field never typed in)."""
    return (value or "").strip()
