"""The ``evomerge`` command line: a thin shell over the library."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import __version__, interrupts
from .errors import EvomergeError

if TYPE_CHECKING:  # the search stack loads lazily, so --help stays fast
    from .config import ExperimentConfig
    from .search.experiment import RunResult

P = ParamSpec("P")
app = typer.Typer(help="Evolutionary merging of LLMs.", no_args_is_help=True, add_completion=False)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"evomerge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    logging.getLogger("evomerge").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # transformers', datasets' and lm-eval's own bars (tqdm) would flood the terminal
        os.environ.setdefault("TQDM_DISABLE", "1")
    interrupts.install()


def _announce_build(target: Path) -> None:
    console.print(f"building the demo family in {target}: about 3 minutes on 2 CPU cores, once (add -v for progress)")


def _fail(err: Exception) -> typer.Exit:
    """One line, exit 2: the library's own errors as it wrote them (not wrapped, brackets
    such as gene names kept); anything else named by its type, as a bug to report."""
    text = str(err)
    if not isinstance(err, EvomergeError):
        said = " ".join(text.split())  # one line, however the library that raised it wrapped it
        text = f"{type(err).__name__}: {said} (evomerge did not foresee this error: -v shows where; please report it)"
    console.print("[red]error:[/red]", escape(text), soft_wrap=True)
    if logging.getLogger("evomerge").isEnabledFor(logging.INFO):  # -v: where it came from
        console.print_exception()
    return typer.Exit(code=2)


def command(name: str | None = None) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """``app.command``, with every error the command meets as one line and exit 2 (``_fail``):
    a user never sees a traceback without ``-v``. Ctrl-C and typer's own exits pass through."""

    def register(function: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                function(*args, **kwargs)
            except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise
            except Exception as err:
                raise _fail(err) from err

        app.command(name)(guarded)
        return guarded

    return register


@command("demo-models")
def demo_models(
    out: Annotated[
        Path | None, typer.Option(help="Where to build. Default: $EVOMERGE_DEMO_DIR or ~/.cache/evomerge/demo-<v>.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a built family is there.")] = False,
) -> None:
    """Build the demo model family (a tiny base and specialists), or find it in the cache."""
    from .demo import build_demo_family, is_built, read_manifest
    from .demo.family import default_family_dir

    target = out or default_family_dir()
    if not is_built(target) or force:
        _announce_build(target)
    path = build_demo_family(target, force=force)
    manifest = read_manifest(path)
    console.print(f"demo family: {path}")
    console.print(f"models: {', '.join(manifest['models'])}; target task: {manifest['target_task']}")
    console.print(f"built in {manifest['build_seconds']['total']:.0f}s with torch {manifest['torch']}")


@command()
def demo(
    family: Annotated[Path | None, typer.Option(help="A built demo family (built if absent).")] = None,
    split: Annotated[str, typer.Option(help="Which split to score: search or test.")] = "test",
) -> None:
    """Build the demo family if absent, score every model and merge, and show what merging buys."""
    from .demo import Row, build_demo_family, is_built, read_manifest, score_family
    from .demo.family import default_family_dir

    target = family or default_family_dir()
    console.print(f"demo family: {target}")
    if not is_built(target):
        _announce_build(target)
    path = build_demo_family(target)
    rows = score_family(path, split)
    columns = [k for k in rows[0].scores if k != "average"]
    table = Table(title=f"exact match (%) on the held-out {split} split")
    for col in ["model", *columns, "average", "how"]:
        table.add_column(col, justify="left" if col in ("model", "how") else "right")
    for row in rows:
        cells = [f"{row.scores[s]:.1f}" for s in [*columns, "average"]]
        table.add_row(row.name, *cells, row.detail or ("" if row.kind == "model" else row.kind))
    console.print(table)
    composed = read_manifest(path)["composed_task"]

    def rank(row: Row) -> tuple[float, float]:  # the composed task, then the skills' average
        return row.scores[composed], row.scores["average"]

    best_single = max((r for r in rows if r.kind == "model"), key=rank)
    best_merge = max((r for r in rows if r.kind == "merge"), key=rank)
    gain = best_merge.scores[composed] - best_single.scores[composed]
    console.print(
        f"On {composed}, {best_merge.name} ({best_merge.detail}) scores {best_merge.scores[composed]:.1f}, "
        f"{gain:+.1f} points against the best single model ({best_single.name}, "
        f"{best_single.scores[composed]:.1f}); average is the three skills' mean. "
        "`evomerge run examples/demo.yaml` evolves a merge for it."
    )


@command()
def merge(
    config: Annotated[Path, typer.Argument(help="A mergekit YAML config (models, base_model, merge_method, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged HF checkpoint.")],
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Also read pickled .bin checkpoints (they can run code; trusted sources only).")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Merge models once, as a mergekit config says, and save an HF checkpoint."""
    from .loader import resolve_demo_text
    from .merge import merge_config
    from .search.store import storage_errors

    if not config.exists():
        raise _fail(EvomergeError(f"merge config {config} not found"))
    text = resolve_demo_text(config.read_text())  # demo:models/add, as in experiment configs
    with storage_errors(out, run=False):
        path = merge_config(text, out, force=force, allow_pickle=allow_pickle, device=device)
    console.print(f"merged model written to {path}")


@command()
def calibrate(
    config: Annotated[Path, typer.Argument(help="An experiment config (models, merge, tasks, fitness).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the table, the plot and the caches.")],
    merges: Annotated[int, typer.Option(min=3, help="Random merges scored in full and by every estimator.")] = 30,
    anchors: Annotated[
        list[int] | None, typer.Option(help="Anchor count to try (repeatable). Default: 2.5%, 5%, 10% of search.")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Anchor seeds per estimator and count.")] = 5,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config value: key=value (repeatable), e.g. fitness.respondent_items=0.4."
        ),
    ] = None,
) -> None:
    """Measure how well each fitness estimator predicts full evaluation, on random merges."""
    from .fitness.calibrate import calibrate as run_calibration
    from .loader import load_config

    rows = run_calibration(
        load_config(config, set_ or ()), out, merges=merges, anchor_counts=anchors, repeats=repeats, device=device
    )
    shares = list(dict.fromkeys(r.respondent_items for r in rows))  # fitness.respondent_items < 1: two fits
    for share in shares:
        title = f"estimators against full evaluation on {merges} random merges (mean of {repeats} seeds)"
        if len(shares) > 1:
            title += ", IRT fitted on respondents scored on " + (
                "every item" if share == 1 else f"every item (base, endpoints) or {share:.0%} of them (the others)"
            )
        table = Table(title=title)
        for col in ["task", "estimator", "anchors", "items", "MAE (points)", "Spearman"]:
            table.add_column(col, justify="left" if col in ("task", "estimator") else "right")
        for r in (r for r in rows if r.respondent_items == share):
            table.add_row(
                r.task,
                f"{r.estimator} ({r.selection})",
                str(r.anchors),
                f"{r.items:.0f}",
                f"{100 * r.mae:.2f} ± {100 * r.mae_std:.2f}",
                f"{r.spearman:.3f}",
            )
        console.print(table)
    console.print(f"table, plot and caches in {out}")


@command()
def run(
    config: Annotated[
        Path, typer.Argument(help="An experiment config (models, merge, tasks, fitness, search, output).")
    ],
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Where the run is stored (default: output.run_dir).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: key=value (repeatable), e.g. search.generations=5."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Evolve a merge, test the winner and the baselines on held-out data, and save it."""
    from .config import DEMO_PREFIX
    from .demo import is_built
    from .demo.family import default_family_dir
    from .loader import load_config
    from .search.experiment import run_experiment

    if config.is_file() and DEMO_PREFIX in config.read_text() and not is_built(default_family_dir()):
        _announce_build(default_family_dir())
    experiment = load_config(config, set_ or ())
    target = run_dir or _default_run_dir(experiment, config)
    with interrupts.hint(console, target):
        result = run_experiment(experiment, target, progress=progress)
    _show_results(result)


def _default_run_dir(experiment: ExperimentConfig, config: Path) -> Path:
    """output.run_dir, else runs/<the config file's name>."""
    from .search.rundir import RunDir

    return RunDir.default(config_file=config, run_dir=experiment.output.run_dir).path


@command()
def init(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path("experiment.yaml"),
    base: Annotated[str | None, typer.Option(help="Base model (dir or hub id).")] = None,
    endpoints: Annotated[str | None, typer.Option(help="Models to merge, comma-separated.")] = None,
    objectives: Annotated[str | None, typer.Option(help="single or multi.")] = None,
    source: Annotated[str | None, typer.Option(help="data (JSONL/CSV files) or lmeval.")] = None,
    task: Annotated[list[str] | None, typer.Option(help="An objective's name (repeatable).")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FILES: a task's data file, or 'search,test' files, or its lm-eval task (repeatable)."),
    ] = None,
    method: Annotated[str | None, typer.Option(help="Merge method.")] = None,
    algorithm: Annotated[str | None, typer.Option(help="pymoo algorithm name.")] = None,
    estimator: Annotated[str | None, typer.Option(help="Fitness estimator.")] = None,
    anchors: Annotated[str | None, typer.Option(help="Items per candidate.")] = None,
    population_size: Annotated[str | None, typer.Option(help="Population size.")] = None,
    generations: Annotated[str | None, typer.Option(help="Generations.")] = None,
    run_dir: Annotated[str | None, typer.Option(help="Run directory.")] = None,
    no_input: Annotated[bool, typer.Option("--no-input", help="Ask nothing: flags, then defaults.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite --out.")] = False,
) -> None:
    """Write an experiment config by answering a few questions (or from flags, with --no-input)."""
    from .wizard import Answers, build_config, write_config

    if out.exists() and not force:
        raise _fail(EvomergeError(f"{out} exists; choose another --out or pass --force"))
    answers = Answers(
        base, endpoints, objectives, source, list(task or []), list(data or []), method, algorithm, estimator,
        anchors, population_size, generations, run_dir,
    )  # fmt: skip

    def ask(question: str, default: str) -> str:
        return default if no_input else typer.prompt(question, default=default)

    try:
        config = build_config(answers, ask)
    except (EvomergeError, ValueError) as err:
        raise _fail(EvomergeError(str(err))) from err
    write_config(config, out)
    console.print(f"config written to {out}; run it with: evomerge run {out}")


@command()
def gui(
    port: Annotated[int, typer.Option(help="The port to serve on.")] = 7860,
    runs: Annotated[
        Path | None, typer.Option(help="The folder whose run directories the GUI lists and writes (default: runs).")
    ] = None,
    share: Annotated[
        bool, typer.Option(help="Also open a public gradio.live link (anyone with it can run code here).")
    ] = False,
) -> None:
    """Configure, launch and watch runs in the browser (http://127.0.0.1:PORT; needs evomerge[gui])."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise _fail(EvomergeError("the GUI needs Gradio: pip install 'evomerge[gui]'")) from None
    from .gui import serve

    if share:
        console.print(
            "[yellow]warning:[/yellow] --share makes a public link: anyone who has it can launch runs and read "
            "files on this machine. Stop the GUI when you are done."
        )
    from .search.rundir import RUNS

    runs = runs or RUNS
    console.print(f"evomerge GUI on http://127.0.0.1:{port} (runs in {escape(str(runs))}); Ctrl-C stops it")
    with interrupts.exit_code():
        serve(port, runs, share=share)  # Gradio stops on Ctrl-C or SIGTERM; its scratch goes at exit


@command("config-schema")
def config_schema() -> None:
    """Print the experiment config's JSON schema (for editors and validation)."""
    import json

    from .loader import config_schema as schema

    typer.echo(json.dumps(schema(), indent=2))


@command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory that `evomerge run` wrote.")],
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A larger budget, e.g. search.generations=20 (budget keys only; repeatable)."),
    ] = None,
) -> None:
    """Continue a run that stopped (a crash, Ctrl-C, a kill): nothing finished is evaluated again.
    With --set search.generations=N (or another budget), extend a finished run."""
    from .search.experiment import resume_run

    with interrupts.hint(console, run_dir):
        result = resume_run(run_dir, progress=progress, budget=list(set_ or []))
    _show_results(result)


@command("test")
def test_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, finished or not.")],
) -> None:
    """Score the run's best so far (or its Pareto front) and the baselines on the test split."""
    from .search.experiment import resume_run

    result = resume_run(run_dir, search=False)
    _show_results(result)


@command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Draw the run's figures again and write RUN_DIR/report.html (opens offline)."""
    from .report import write_report
    from .search.rundir import RunDir
    from .search.store import storage_errors

    if not RunDir(run_dir).holds_run():
        raise _fail(EvomergeError(f"{run_dir} holds no run ({RunDir(run_dir).store_file.name} is missing)"))
    with storage_errors(run_dir):
        path = write_report(run_dir)
    console.print(f"report: {path}")


@command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the HF checkpoint.")],
    member: Annotated[
        str | None, typer.Option(help="best (default), pareto:K, or id:N (a row of evaluations.csv).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists and is not empty.")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Then upload --out to this hub repo (user/name), created if absent.")
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: create the repo private.")] = False,
) -> None:
    """Save a run's winner, or a chosen Pareto member, as an HF checkpoint with its mergekit YAML."""
    from .models.hub import push_to_hub as push
    from .search.experiment import export_run

    path = export_run(run_dir, out, member=member, force=force)
    console.print(f"merged model and mergekit_config.yml written to {path}")
    if push_to_hub:
        console.print(f"pushed to {escape(push(path, push_to_hub, private=private))}")


def _show_results(result: RunResult) -> None:
    names, columns = result.problem.names, result.problem.test_names
    table = Table(title=f"held-out test scores ({result.evaluations} evaluations; stopped: {result.stop_reason})")
    for col in ["candidate", "kind", *columns, *(f"{n} (search est.)" for n in names)]:
        table.add_column(col, justify="left" if col in ("candidate", "kind") else "right", no_wrap=col == "candidate")
    for t in result.tests:
        search = t.search_scores or {}
        table.add_row(
            t.name,
            t.kind,
            *(f"{t.scores[n]:.4f}" for n in columns),
            *(f"{search[n]:.4f}" if n in search else "" for n in names),
        )
    console.print(table)
    console.print(f"run directory: {result.run_dir} (results.json, evaluations.csv, run.sqlite)")
    console.print(f"report: {result.run_dir / 'report.html'}")
