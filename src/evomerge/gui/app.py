"""The Gradio app: New experiment, Monitor, Runs, Try a model.

Why Gradio: it is what Mergenetic's users know, it serves forms, plots and tables from
Python with no front-end build, and it binds where we say (127.0.0.1 by default).
A run is ``python -m evomerge run`` in a process of its own (a new session, so the
GUI's worker threads never hold a model and Ctrl-C semantics stay the CLI's): Stop
sends it SIGINT, which leaves every finished evaluation stored, and Resume is
``evomerge resume`` on the same directory.
"""

from __future__ import annotations

import atexit
import contextlib
import filecmp
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_config, resolve_relative_paths
from ..errors import EvomergeError
from ..search.monitor import RunStatus, activity, is_running, list_runs, lock_holder, run_status
from ..search.rundir import RunDir
from ..search.store import test_columns

log = logging.getLogger(__name__)

#: The four classic modes, each a config that runs on the demo family as is.
PRESETS = {
    "single objective, custom data (demo)": ("single", "data"),
    "single objective, lm-eval task (demo)": ("single", "lmeval"),
    "multi-objective, custom data (demo)": ("multi", "data"),
    "multi-objective, lm-eval tasks (demo)": ("multi", "lmeval"),
    "layer paths, custom data (demo)": ("single", "path"),
}


def _layer_path_preset() -> dict[str, Any]:
    """examples/dataflow.yaml at the GUI's budget: a path through greek's layers and add's,
    climbing greek_add's answer loss, with exact match on greek_add and the two skills as checks."""

    def task(name: str, **options: Any) -> dict[str, Any]:
        data = name.removesuffix("_loss")
        split = {"search": f"demo:data/{data}/search.jsonl", "test": f"demo:data/{data}/test.jsonl"}
        return {"name": name, **split, "batch_size": 128, **options}

    exact = {"extractor": "exact", "strict": True, "max_new_tokens": 24, "objective": False}
    return {
        "models": {"endpoints": ["demo:models/greek", "demo:models/add"]},
        "merge": {"method": "task_arithmetic"},
        "tasks": [task("greek_add_loss", scorer="loss"), *(task(n, **exact) for n in ("greek_add", "add", "greek"))],
        "fitness": {"estimator": "full"},
        "search": {
            "algorithm": "CMAES",
            "space": "path",
            "path": {"repeats": 2, "scales": "matrix"},
        },
        "seed": 0,
    }


def preset_config(name: str) -> dict[str, Any]:
    """A preset's config, from the same answers ``evomerge init --no-input`` gives."""
    from ..wizard import Answers, build_config

    objectives, source = PRESETS[name]
    if source == "path":
        config = _layer_path_preset()
        config["search"].update(population_size=8, generations=4)
        return config
    config = build_config(Answers(objectives=objectives, source=source), lambda question, default: default)
    for task in config["tasks"]:
        lm_eval = task.get("lm_eval")
        if isinstance(lm_eval, str) and lm_eval.endswith(".yaml"):  # the repository's examples/, if here
            found = Path(lm_eval) if Path(lm_eval).exists() else Path(__file__).resolve().parents[3] / lm_eval
            task["lm_eval"] = str(found.resolve())
    config["search"].update(population_size=8, generations=4)
    config.pop("output", None)
    return config


def validate(text: str) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """The YAML as a config dict and no problems when valid, else None and the config's own
    (key, message) problems: the same pydantic check as ``evomerge run``."""
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ConfigError("a config is a YAML mapping with sections models, merge, tasks, fitness, search")
        load_config(raw, resolve_demo=False)
    except yaml.YAMLError as err:
        return None, [("config", f"not valid YAML: {err}")]
    except ConfigError as err:
        return None, err.problems or [("config", str(err))]
    except EvomergeError as err:
        return None, [("config", str(err))]
    return raw, []


#: The config key each form field sets: a problem with that key (or one under it) is
#: shown under the field. Section-wide problems go to the field that most often causes them.
FIELD_KEYS = {
    "base": "models.base", "endpoints": "models.endpoints", "method": "merge", "algorithm": "search.algorithm",
    "population": "search.population_size", "generations": "search.generations", "seconds": "search.max_seconds",
    "estimator": "fitness.estimator", "anchors": "fitness.anchors", "granularity": "search.granularity",
    "options": "search.options", "frozen": "search.frozen", "bounds": "search.bounds", "tasks": "tasks",
}  # fmt: skip
SECTION_FIELDS = {"models": "endpoints", "fitness": "anchors", "search": "generations"}


def problems_by_field(problems: list[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Each problem's message under its field's name; those of no field in a list of lines."""
    fields: dict[str, list[str]] = {}
    rest: list[str] = []
    for key, message in problems:
        if key == "config" and (named := re.match(r"([a-z_]+(?:\.\w+)+):? ", message)):
            key = named[1]  # a whole-config check that names its key first ("merge.method ties needs ...")
        field = next((f for f, k in FIELD_KEYS.items() if key == k or key.startswith(k + ".")), None)
        field = field or SECTION_FIELDS.get(key)
        if field:
            fields.setdefault(field, []).append(message)
        else:
            rest.append(f"{key}: {message}")
    return fields, rest


def method_help(name: str) -> str:
    """What a search varies for ``name`` by default, with the ranges, and what it keeps fixed."""
    from ..merge.methods import get_method, search_range, searched_params

    try:
        spec = get_method(name)
    except EvomergeError as err:
        return str(err)
    searched = searched_params(spec)
    genes = []
    for param in searched:
        low, high = search_range(spec, param) or (0.0, 1.0)
        genes.append(f"`{param}` {'per model' if spec.param(param).per_model else 'shared'} in [{low:g}, {high:g}]")
    if spec.name == "layer_select":
        genes.append("`source`: which model each layer group is taken from")
    fixed = [f"`{p.name}` = {p.default!r}" for p in spec.params if p.name not in searched and not p.required]
    base = {"required": "needs a base", "optional": "base optional", "none": "no base"}.get(spec.base, spec.base)
    return (
        f"**{spec.name}** ({base}). Searched: {', '.join(genes) or 'nothing by default'}."
        + (f" Fixed (set under `merge.parameters`): {', '.join(fixed)}." if fixed else "")
        + " Narrow a range under Parameter ranges."
    )


class Launcher:
    """The runs this GUI started, by run directory."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    def start(self, raw: dict[str, Any], name: str) -> Path:
        if not re.fullmatch(r"[\w.-]+", name) or name.strip(".") == "":
            raise EvomergeError(f"run name {name!r}: use letters, digits, '-', '_' and '.' (a folder under the runs)")
        run_dir = (self.runs / name).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise EvomergeError(f"{run_dir} exists already; choose another run name (or Resume it on Monitor)")
        resolve_relative_paths(raw, Path.cwd())  # paths typed in the form are from where the GUI runs
        self.runs.mkdir(parents=True, exist_ok=True)
        config = self.runs / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        return self._spawn(run_dir, ["run", str(config), "--run-dir", str(run_dir)])

    def resume(self, run_dir: Path) -> Path:
        if self.running(run_dir) or is_running(run_dir):
            raise EvomergeError(f"{run_dir.name} is running")
        return self._spawn(run_dir, ["resume", str(run_dir)])

    def stop(self, run_dir: Path, timeout: float = 60) -> bool:
        """SIGINT, as Ctrl-C: the run stops after storing what finished (exit 130). A run this
        GUI did not start (the CLI's, an earlier GUI's) is reached through its lock's PID."""
        proc = self.processes.get(run_dir)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
            return True
        pid = lock_holder(run_dir)
        if pid is None:
            return False
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while is_running(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def running(self, run_dir: Path) -> bool:
        proc = self.processes.get(run_dir)
        return proc is not None and proc.poll() is None

    def failure(self, run_dir: Path) -> str | None:
        """Why a run this GUI started ended with an error (a missing model, a bad data file):
        its ``error:`` line from the log, or None if it runs, finished or was stopped."""
        proc = self.processes.get(run_dir)
        if proc is None or proc.poll() in (None, 0, 130):
            return None
        log_path = self.log(run_dir)
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        return f"{said} (exit {proc.returncode}; the whole output is in {log_path})"

    def log(self, run_dir: Path) -> Path:
        return self.runs / f"{run_dir.name}.log"

    def _spawn(self, run_dir: Path, args: list[str]) -> Path:
        """The run in a session of its own: Ctrl-C on the GUI's terminal does not stop it (the
        GUI, restarted, still reaches it through its lock); its output goes to RUNS/NAME.log."""
        command = [sys.executable, "-m", "evomerge", *args, "--no-progress"]
        with self.log(run_dir).open("ab") as log_file:  # the child keeps its own copy
            self.processes[run_dir] = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        return run_dir


class Figures:
    """The monitor's plots, drawn once per state of a run into one scratch folder (every
    browser page watching the run gets the same file); the previous picture of a run is
    removed once Gradio has its copy."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.drawn: dict[tuple[Path, str], tuple[tuple[Any, ...], Path]] = {}

    def fitness(self, status: RunStatus) -> str | None:
        """The picture's path, or None before the first generation."""
        from ..report import plots

        if not status.generations:
            return None
        state = (len(status.generations), status.state)
        return self._draw(status.path, "fitness", state, lambda out: plots.fitness_per_generation(
            status.generations, status.objectives, status.maximize, out))  # fmt: skip

    def pareto(self, status: RunStatus) -> Any:
        import gradio as gr

        from ..report import plots
        from ..search.loop import winners

        if len(status.objectives) < 2:
            return gr.update(visible=False, value=None)
        if not status.evaluations:
            return gr.update(visible=True, value=None)
        state = (len(status.evaluations), len(status.tests))
        front = winners(status.evaluations, status.maximize)
        drawn = self._draw(status.path, "pareto", state, lambda out: plots.pareto_front(
            status.evaluations, front, status.objectives, out, status.tests))  # fmt: skip
        return gr.update(visible=True, value=drawn)

    def _draw(self, run: Path, kind: str, state: tuple[Any, ...], draw: Any) -> str | None:
        from ..report import plots

        last = self.drawn.get((run, kind))
        if last is not None and last[0] == state:
            return str(last[1])
        out = self.folder / f"{run.name}-{kind}-{'-'.join(map(str, state))}.png"
        with plots.literal_text():
            path = draw(out)
        if last is not None:
            last[1].unlink(missing_ok=True)
        if path is None:
            return None
        self.drawn[(run, kind)] = (state, Path(path))
        return str(path)


def test_table(status: RunStatus) -> Any:
    import pandas as pd  # a Gradio dependency

    columns = test_columns(status.tests, status.objectives)
    rows = [[t.name, t.kind, *(round(t.scores[n], 4) for n in columns)] for t in status.tests]
    return pd.DataFrame(rows, columns=["candidate", "kind", *columns])


def evaluations_table(status: RunStatus, last: int = 200) -> Any:
    """The newest evaluations, as evaluations.csv has them (its ids are what ``id:N`` takes)."""
    import pandas as pd

    rows = []
    for number, row in list(enumerate(status.every, 1))[-last:][::-1]:
        values = [round(v, 4) for v in row.objectives] if row.ok else [None] * len(status.objectives)
        gene_values = [round(v, 4) for v in row.genes.values()]
        rows.append(
            [number, row.generation, *gene_values, *values, round(row.merge_s + row.eval_s, 2), row.error or ""]
        )
    names = list(status.every[0].genes) if status.every else []
    return pd.DataFrame(rows, columns=["id", "generation", *names, *status.objectives, "seconds", "error"])


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
    from ..search.experiment import export_run, load_exported, load_member

    runs = Path(runs)
    launcher = Launcher(runs)
    loaded: dict[tuple[str, str], Any] = {}  # "try a model": the model loaded last
    scratch = Path(tempfile.mkdtemp(prefix="evomerge-gui-"))  # plots and the YAML to download
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    figures = Figures(scratch)
    first = next(iter(PRESETS))

    def compose(preset: str, base: str, endpoints: str, method: str, algorithm: str, population: float,
                generations: float, seconds: float, estimator: str, anchors: float, granularity: str, options: str,
                frozen: str, bounds: str, tasks: str) -> str:  # fmt: skip
        raw = preset_config(preset)
        models = [e.strip() for e in _text(endpoints).split(",") if e.strip()]
        raw["models"] = {"base": _text(base), "endpoints": models} if _text(base) else {"endpoints": models}
        raw["merge"] = {"method": method}
        raw["search"].update(algorithm=algorithm, population_size=_int(population), generations=_int(generations))
        if seconds:
            raw["search"]["max_seconds"] = seconds  # whichever comes first, with the generations
        raw["search"]["granularity"] = granularity
        full = estimator == "full"  # it scores every item: anchors are not its setting
        raw["fitness"] = {"estimator": estimator, **({"anchors": _int(anchors)} if anchors and not full else {})}
        for key, text in (("options", options), ("frozen", frozen), ("bounds", bounds)):
            with contextlib.suppress(yaml.YAMLError):  # until it parses, the YAML view keeps the last value
                value = yaml.safe_load(_text(text))
                if value:
                    raw["search"][key] = value
                else:
                    raw["search"].pop(key, None)  # empty: the config's default, not written
        with contextlib.suppress(yaml.YAMLError):
            raw["tasks"] = yaml.safe_load(_text(tasks))
        return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)

    def form_from(raw: dict[str, Any]) -> tuple[Any, ...]:
        s, f = raw.get("search") or {}, raw.get("fitness") or {}
        return (
            (raw.get("models") or {}).get("base") or "", ", ".join((raw.get("models") or {}).get("endpoints") or []),
            (raw.get("merge") or {}).get("method", "task_arithmetic"), s.get("algorithm", "GA"),
            s.get("population_size"), s.get("generations"), s.get("max_seconds"), f.get("estimator", "mpirt"),
            f.get("anchors"), s.get("granularity", "global"), _yaml(s.get("options")), _yaml(s.get("frozen")),
            _yaml(s.get("bounds")),
            yaml.safe_dump(raw.get("tasks") or [], sort_keys=False, allow_unicode=True),
        )  # fmt: skip

    def fill(preset: str) -> tuple[Any, ...]:
        return form_from(preset_config(preset))

    def messages(problems: list[tuple[str, str]], ok: str = "") -> tuple[str, ...]:
        """A message under each field with a problem, the others under the form."""
        fields, rest = problems_by_field(problems)
        under = [f"**{'; '.join(fields[f])}**" if f in fields else "" for f in FIELD_KEYS]
        return (*under, "\n".join(f"- {line}" for line in rest) if rest else ok)

    def check(text: str) -> tuple[Any, ...]:
        """Every edit: the messages by the fields, and the download button holds the YAML shown."""
        return (*messages(validate(text)[1]), download(text))

    def paste(text: str) -> tuple[Any, ...]:
        """The YAML view, pasted or edited, back into the form (if it is a valid config)."""
        raw, _ = validate(text)
        if raw is None:
            return (*(gr.update() for _ in FIELD_KEYS), "**Not loaded**: see the messages under the fields.")
        return (*form_from(raw), "Loaded into the form.")

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
            tasks_list = yaml.safe_load(_text(tasks_text)) or []
        except yaml.YAMLError:
            tasks_list = []
        tasks_list = tasks_list if isinstance(tasks_list, list) else []
        names = {t.get("name") for t in tasks_list if isinstance(t, dict)}
        name = re.sub(r"\W+", "_", source.stem).strip("_") or "task"
        name = next(n for n in (name, *(f"{name}_{i}" for i in range(2, 1000))) if n not in names)
        tasks_list.append({"name": name, "data": str(kept), "scorer": "generation", "extractor": "number"})
        return yaml.safe_dump(tasks_list, sort_keys=False, allow_unicode=True)

    def launch(text: str, name: str) -> tuple[Any, ...]:
        raw, problems = validate(text)
        if raw is None:
            *under, rest = messages(problems)
            return (*under, f"**Not started.** {rest or 'See the messages under the fields.'}", gr.update())
        name = _text(name) or "gui-run"
        try:
            run_dir = launcher.start(raw, name)
        except EvomergeError as err:
            return (*messages([])[:-1], f"**Not started.** {err}", gr.update())  # the monitor keeps its run
        return (*messages([])[:-1], f"Started **{name}** in `{run_dir}`; follow it on Monitor.", name)

    def watch(name: str, seen: Any) -> tuple[Any, ...]:
        """The monitor, read again only when the run has changed since this page last looked
        (``seen``, kept per browser page): the timer asks every second."""
        if not _text(name):
            return "No run selected.", None, gr.update(visible=False), None, None, None, None
        run_dir = (runs / _text(name)).resolve()
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

    def pick(listing: Any, event: Any) -> str:
        return str(listing.iloc[event.index[0], 0])

    pick.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the clicked cell

    def details(name: str) -> tuple[Any, ...]:
        """The chosen run's status, test table and report."""
        if not _text(name):
            return "", None, None
        status = run_status(runs / _text(name))
        if status.state == "empty":
            return f"No run named {_text(name)!r} under `{runs}`.", None, None
        report = status.path / "report.html"
        return status.summary(), test_table(status), str(report) if report.exists() else None

    def export(name: str, member: str, out: str) -> str:
        if not _text(out):
            return "**Not exported.** Give a folder to export to."
        try:
            path = export_run(runs / _text(name), _text(out), member=_text(member) or None)
        except EvomergeError as err:
            return f"**Not exported.** {err}"
        return f"Exported to `{path}` (HF checkpoint, mergekit_config.yml, model card)."

    def try_model(target: str, member: str, prompt: str, max_new_tokens: float) -> tuple[str, str]:
        """The completion, and which model gave it."""
        from ..evaluate.generation import generate

        if not _text(prompt):
            return "", "Type a prompt."
        key = (_text(target), _text(member) or "best")
        is_run = RunDir(runs / key[0]).holds_run()
        source = f"run {key[0]}, member {key[1]}, merged in memory" if is_run else f"exported model {key[0]}"
        try:
            if key not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[key] = load_member(runs / key[0], key[1]) if is_run else load_exported(Path(key[0]).expanduser())
            model, tokenizer = loaded[key]
            text = generate(model, tokenizer, [prompt], max_new_tokens=int(max_new_tokens or 32), stop=())[0]
        except EvomergeError as err:
            return "", f"error: {err}"
        return text, f"From {source}."

    with gr.Blocks(title="evomerge", delete_cache=(3600, 3600)) as app:
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
            defaults = dict(zip(FIELD_KEYS, fill(first), strict=True))
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
                compose(first, *defaults.values()), language="yaml", elem_id="config", interactive=True,
                label="The config that will run (edit or paste, then Load)",
            )  # fmt: skip
            with gr.Row():
                load_button = gr.Button("Load this YAML into the form", elem_id="load")
                download_button = gr.DownloadButton(
                    "Download the YAML", value=download(compose(first, *defaults.values())), elem_id="download"
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
        preset.change(fill, preset, form).then(compose, [preset, *form], config)
        for component in form:
            component.change(compose, [preset, *form], config)
        fields["method"].change(method_help, fields["method"], method_info)
        config.change(check, config, [*error_boxes, message, download_button])
        add_file.upload(upload, [add_file, fields["tasks"]], fields["tasks"])
        load_button.click(paste, config, [*form, message])
        launch_button.click(launch, [config, name], [*error_boxes, message, watched])
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


def serve(port: int = 7860, runs: Path | str = "runs", *, share: bool = False, host: str = "127.0.0.1") -> None:
    """Serve the app on ``host`` (loopback by default: only this machine can reach it)."""
    app = build_app(runs)
    app.queue().launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _unused_path(path: Path, source: Path) -> Path:
    """``path``, or ``name_2.ext``, ... where a different file is there already: an earlier
    upload of the same name may be the data of a run, which must not change under it."""
    for i in range(1, 10_000):
        candidate = path if i == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not candidate.exists() or filecmp.cmp(candidate, source, shallow=False):
            return candidate
    raise EvomergeError(f"too many uploads named {path.name} in {path.parent}")


def _yaml(value: Any) -> str:
    """A mapping as YAML for a code box; empty when there is nothing (not ``{}``)."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).strip() if value else ""


def _text(value: str | None) -> str:
    """A text field's value, stripped (Gradio gives None for a field never typed in)."""
    return (value or "").strip()
