"""A whole run from a config: prepare, search, test, save; and resume.

``run_experiment`` is what ``evomerge run`` and ``evomerge.evolve`` call. Everything it
produces lives in the run directory (see DESIGN.md): ``config.yaml``, ``run.sqlite``,
``evaluations.csv``, ``results.json``, the respondents' scores and ``best/``. Calling it
again on the same directory with ``resume=True`` continues where the last process
stopped, whatever killed it.
"""

from __future__ import annotations

import difflib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from ..config import ConfigError, ExperimentConfig
from ..errors import EvomergeError
from ..evaluate.generation import use_engine
from ..loader import load_config
from ..merge.candidate import Candidate, Sources, candidate_from_yaml, put_into
from ..merge.layerpath import LayerPath
from ..merge.pathmodel import PathMerger
from ..merge.run import merge_config, save_candidate
from ..progress import announce, reporting, showing
from ..threads import one_blas_thread
from ..yamltext import load_yaml
from .algorithms import make_algorithm
from .executors import EXECUTORS
from .heldout import candidates, recipe_baselines, results_card, run_tests, write_results
from .local_executor import close
from .loop import Callback, Searcher, Termination, winners
from .objectives import Objective, task_checks, task_objectives
from .pathrun import path_baselines, path_options, path_space
from .pathspace import PathSpace
from .problem import MergeProblem
from .rundir import RUNS, RunDir
from .sources import engine_for, live_model, open_models
from .space import SearchSpace
from .store import EvaluationRow, RunStore, TestRow, storage_errors
from .trackers import Tracker, open_trackers

log = logging.getLogger(__name__)


class RunExistsError(EvomergeError):
    """A new run pointed at a directory that already holds one."""


class ResumeError(EvomergeError):
    """A run that cannot be resumed as asked."""


@dataclass
class RunResult:
    run_dir: Path
    stop_reason: str
    evaluations: int
    problem: MergeProblem
    winners: list[EvaluationRow]
    tests: list[TestRow]
    merger: Sources = field(repr=False)
    model: torch.nn.Module = field(repr=False)  # holds the last recipe merged into it
    tokenizer: PreTrainedTokenizerBase = field(repr=False)

    @property
    def best(self) -> EvaluationRow:
        """The best evaluation (one objective) or the first Pareto member."""
        return self.winners[0]

    def load(self, row: EvaluationRow | None = None) -> torch.nn.Module:
        """Merge ``row``'s recipe or path (default: the best) into the live model and return it."""
        return put_into(self.merger, self.model, candidate_from_yaml((row or self.best).recipe))


def config_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)


def run_experiment(
    config: ExperimentConfig,
    run_dir: Path | str | None = None,
    *,
    objectives: Sequence[Objective] | None = None,
    resume: bool = False,
    progress: bool = False,
    search: bool = True,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Evolve, test and save as ``config`` says. ``objectives`` replace the config's tasks
    (custom fitness functions); ``resume`` continues the run stored in ``run_dir``;
    ``search=False`` (with ``resume``) tests the best so far without searching on;
    ``callbacks`` watch the search (``loop.Callback``)."""
    rd = RunDir(Path(run_dir or config.output.run_dir or RUNS / "run"))
    # Custom objectives replace the config's tasks, checks included.
    checks = task_checks(config) if objectives is None else []
    objectives = list(objectives) if objectives is not None else task_objectives(config)
    if not objectives:
        raise ConfigError("tasks: give at least one task (each task is an objective)")
    fresh = not rd.holds_run()
    rd.check_names([n for o in objectives for n in o.names])  # before anything exists, as the models' checks
    with showing(progress):
        announce("loading the models")
    merger = open_models(config)  # before the run directory exists: a model or memory error leaves nothing
    with storage_errors(rd.path), rd.lock(), one_blas_thread(), showing(progress):
        store = rd.open_store()
        started, phase_at = time.time(), {"": 0.0}

        def note(name: str, done: int, total: int) -> None:  # the phase the monitor shows (monitor.RunStatus)
            at = phase_at.setdefault(name, time.time())  # when this phase began
            store.set("phase", {"name": name, "done": done, "total": total, "since": started, "at": at})

        try:
            _check_store(store, rd, config, objectives, resume)
            with reporting(note):
                return _run(config, rd, store, objectives, checks, progress, search, merger, callbacks)
        except Exception as err:  # whatever it is, bug or bad input: a fresh run leaves nothing behind
            store.close()
            if fresh and not resume:
                _remove_if_empty(rd)
            elif resume and not _has_evaluations(rd):
                raise _unstarted(rd, err) from err
            raise
        finally:
            store.close()


#: The only settings a resume may change: the budget. Anything else would mix two runs.
BUDGET_KEYS = ("search.generations", "search.max_evaluations", "search.max_seconds", "search.patience")


def resume_run(
    run_dir: Path | str, *, progress: bool = False, search: bool = True, budget: Sequence[str] = ()
) -> RunResult:
    """Continue the run in ``run_dir`` from its ``config.yaml`` (``search=False``: only
    test what it has found so far). ``budget``: ``key=value`` changes to ``BUDGET_KEYS``
    (``search.generations=20``), which extend a run, finished or not; the stored
    generations are replayed, so the result equals a run started with that budget."""
    rd = RunDir(Path(run_dir))
    if not rd.holds_run():
        raise ResumeError(f"{rd} holds no run ({rd.store_file.name} is missing); start one with evomerge run")
    for change in budget:
        key = change.partition("=")[0].strip()
        if key not in BUDGET_KEYS:
            raise ResumeError(
                f"--set {change!r}: a resume may change only the budget ({', '.join(BUDGET_KEYS)}); "
                "for other changes start a new run"
            )
    try:
        config = load_config(rd.config, budget)
    except EvomergeError as err:  # a config stored by an older evomerge that today's refuses
        if _has_evaluations(rd):
            raise
        raise _unstarted(rd, err) from err
    return run_experiment(config, rd.path, resume=True, progress=progress, search=search)


def _without_budget(text: str) -> str:
    raw = load_yaml(text)
    for key in BUDGET_KEYS:
        section, _, name = key.partition(".")
        raw.get(section, {}).pop(name, None)
    return yaml.safe_dump(raw, sort_keys=False)


def _extend_budget(store: RunStore, rd: RunDir, text: str) -> None:
    """Store a resume's new budget: the config, and the run is open again until it is spent
    (best/ is saved again at the end, since the winner may change)."""
    config = load_config(text, resolve_demo=False)
    done, evaluated = len(store.generations()), store.count()
    if (config.search.generations or done) < done or (config.search.max_evaluations or evaluated) < evaluated:
        raise ResumeError(
            f"{rd} has run {done} generations ({evaluated} evaluations): a resume can extend its budget, "
            "not cut it (the results already stored would not be the smaller run's)"
        )
    log.info("the run's budget changed: searching on until the new budget is spent")
    rd.config.write_text(text)
    store.set("config", text)
    store.unset("stop_reason")
    if rd.best.exists():
        shutil.rmtree(rd.best)


def _same_config(stored: str, now: str, run_dir: Path) -> bool:
    """Whether a stored config is ``now``'s. The stored text is read through today's schema
    first, so keys added since (with their defaults) do not tell an older run apart, and
    its relative paths (runs stored before paths were made absolute) resolve as
    ``config.yaml``'s do on resume."""
    if stored == now:
        return True
    try:
        return config_yaml(load_config(stored, resolve_demo=False, base_dir=run_dir)) == now
    except EvomergeError:
        return False


def _check_store(
    store: RunStore, rd: RunDir, config: ExperimentConfig, objectives: Sequence[Objective], resume: bool
) -> None:
    stored = store.get("config")
    text = config_yaml(config)
    names = [n for o in objectives for n in o.names]
    run_dir = rd.path
    if stored is None:
        if resume:
            raise ResumeError(f"{run_dir} holds no run to resume; start one with evomerge run")
        rd.config.write_text(text)  # first: a store with a config always has its file
        store.set("objectives", names)
        store.set("maximize", [up for o in objectives for up in o.maximize])
        store.set("config", text)  # last: what marks the directory as holding a run
        return
    if not resume:
        raise RunExistsError(
            f"{run_dir} already holds a run; continue it with `evomerge resume {run_dir}`, "
            "or give another output.run_dir"
        )
    if not _same_config(stored, text, run_dir) and _same_config(
        _without_budget(stored), _without_budget(text), run_dir
    ):
        _extend_budget(store, rd, text)
    elif not _same_config(stored, text, run_dir):
        diff = "".join(difflib.unified_diff(stored.splitlines(True), text.splitlines(True), "stored", "now", n=1))
        raise ResumeError(
            f"the config differs from the one {run_dir} was run with, so resuming would mix two runs. "
            f"Start a new run for the new config. Differences:\n{diff}"
        )
    if store.get("objectives") != names:
        raise ResumeError(f"the run's objectives were {store.get('objectives')}, now {names}")


def _has_evaluations(rd: RunDir) -> bool:
    try:
        store = rd.open_store()
    except EvomergeError:
        return True  # a store that cannot be read is not removed, nor called empty
    try:
        return next(iter(store.evaluations(failed=True)), None) is not None
    finally:
        store.close()


def _unstarted(rd: RunDir, err: Exception) -> ResumeError:
    """A resume that fails where the run's first attempt failed, before any evaluation: the
    stored config cannot be changed by a resume, and there is nothing in it to keep."""
    said = " ".join(str(err).split()) or type(err).__name__
    return ResumeError(
        f"{said} ({rd} stopped before its first evaluation, so it holds nothing to keep: remove it "
        "and start again with `evomerge run` once the cause is fixed)"
    )


def _remove_if_empty(rd: RunDir) -> None:
    """A new run that failed before its first evaluation leaves nothing behind, so the same
    command with the config fixed starts afresh (files the run did not write are kept)."""
    if _has_evaluations(rd):
        return
    for path in rd.first_files():
        path.unlink(missing_ok=True)
    if not any(rd.path.iterdir()):
        rd.path.rmdir()


def _run(
    config: ExperimentConfig,
    rd: RunDir,
    store: RunStore,
    objectives: list[Objective],
    checks: list[Objective],
    progress: bool,
    search: bool,
    merger: Sources,
    callbacks: Sequence[Callback],
) -> RunResult:
    model, tokenizer = live_model(merger)
    use_engine(model, engine_for(config, merger))
    executor = EXECUTORS[config.search.executor].create(merger, model, tokenizer, config)  # Ray: connects now
    trackers: list[Tracker] = []
    try:
        trackers = open_trackers(config, rd.path)
        m = config.models
        for objective in objectives:
            objective.prepare(merger, model, tokenizer, rd.path, executor)
        if isinstance(merger, PathMerger):
            space: SearchSpace | PathSpace = path_space(config, merger)
            baselines = path_baselines(merger)
        else:
            space = search_space(config, merger.pool.num_layers)
            baselines = recipe_baselines(config.merge.method, m.endpoints, m.base)
        problem = MergeProblem(space, objectives, checks)

        reason = store.get("stop_reason") or ("" if search else "not finished: tested the best so far")
        try:
            if not reason:
                s = config.search
                options = path_options(space, s.algorithm, s.options) if isinstance(space, PathSpace) else s.options
                algorithm = make_algorithm(
                    s.algorithm, problem.n_obj, options, population_size=s.population_size, seed=config.seed
                )
                termination = Termination(s.generations, s.max_evaluations, s.max_seconds, s.patience)
                announce("searching")
                reason = Searcher(
                    problem, algorithm, executor, store, termination, seed=config.seed, progress=progress,
                    on_error=s.on_error, callbacks=[*callbacks, *trackers],
                ).run()  # fmt: skip
        finally:  # also when a candidate failed: evaluations.csv shows it
            store.export_csv(rd.evaluations_csv, [g.name for g in problem.space.all_genes], problem.names)

        rows = list(store.evaluations())
        best = winners(rows, problem.maximize)
        tests = run_tests(store, executor, problem, candidates(best, problem, baselines))
        for tracker in trackers:
            tracker.log_tests(tests)
        write_results(
            rd.results, tests, problem, {"stop_reason": reason, "evaluations": len(rows), "seed": config.seed}
        )
        if config.output.save_best and problem.n_obj > 1:
            log.info("%d Pareto members: none is saved as best/; their recipes are in results.json", len(best))
        finished = store.get("stop_reason") is not None  # an unfinished run's best may still change
        announce("saving the winner and the report")
        if config.output.save_best and finished and problem.n_obj == 1 and best and not rd.best.exists():
            winner = candidate_from_yaml(best[0].recipe)
            put_into(merger, model, winner)
            save_candidate(model, winner, merger, rd.best, card=results_card(rd.results))
        from ..report import write_report  # the report reads the store; it sits above the search

        write_report(rd.path)
        announce("done")  # the monitor tells a run that ended from one stopped in a phase
        return RunResult(rd.path, reason, len(rows), problem, best, tests, merger, model, tokenizer)
    finally:
        for tracker in trackers:
            tracker.finish()
        close(executor)


def member_recipe(run_dir: Path | str, member: str | None = None) -> tuple[ExperimentConfig, Candidate]:
    """A run's config and one evaluated recipe: ``best`` (default; the first Pareto
    member), ``pareto:K``, or ``id:N`` (a row of evaluations.csv)."""
    rd = RunDir(Path(run_dir))
    if not rd.holds_run():
        raise ResumeError(f"{rd} holds no run ({rd.store_file.name} is missing)")
    config = load_config(rd.config)
    store = rd.open_store()
    try:
        every = list(store.evaluations(failed=True))  # evaluations.csv's ids are ranks in this list
        rows = [r for r in every if r.ok]
        front = winners(rows, store.get("maximize"))
    finally:
        store.close()
    if not rows:
        raise EvomergeError(f"{rd} has no evaluations yet; resume it first")
    kind, _, number = (member or "pareto:0").partition(":")
    pool = {"pareto": front, "best": front, "id": every}.get(kind)
    index = (int(number) - (1 if kind == "id" else 0)) if number.isdigit() else 0
    if pool is None or not 0 <= index < len(pool) or (kind != "best" and not number.isdigit()):
        raise EvomergeError(
            f"member {member!r}: choose best, pareto:0..{len(front) - 1} or id:1..{len(every)} (evaluations.csv ids)"
        )
    if not pool[index].ok:
        raise EvomergeError(f"member {member!r} failed during the search ({pool[index].error}); choose another")
    return config, candidate_from_yaml(pool[index].recipe)


def export_run(run_dir: Path | str, out: Path | str, *, member: str | None = None, force: bool = False) -> Path:
    """Save a run's winner as an HF checkpoint with its mergekit YAML. ``member``: a
    Pareto member (``pareto:K``) or any evaluation (``id:N``, as in evaluations.csv)."""
    config, recipe = member_recipe(run_dir, member)
    card = results_card(RunDir(Path(run_dir)).results)
    with storage_errors(Path(out), run=False):  # a full disk or a busy mount point: one line, nothing partial
        if isinstance(recipe, LayerPath):  # the sources loaded, the path written with its scales folded
            merger = open_models(config)
            assert isinstance(merger, PathMerger)
            return save_candidate(merger.model, recipe, merger, out, force=force, card=card)
        allow_pickle, device = config.models.allow_pickle, config.output.device
        return merge_config(recipe, out, force=force, allow_pickle=allow_pickle, device=device, card=card)


def load_member(run_dir: Path | str, member: str | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """One evaluated recipe of a run, merged in memory (nothing written): to try it."""
    config, recipe = member_recipe(run_dir, member)
    merger = open_models(config)
    model, tokenizer = live_model(merger)
    use_engine(model, engine_for(config, merger))
    put_into(merger, model, recipe)
    return model, tokenizer


def load_exported(folder: Path | str, *, device: str | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A model that ``evomerge export`` (or ``merge``) wrote, to try it: safetensors only,
    no repository code, in the dtype it was saved in (a bf16 7B model stays 14 GB, not 28),
    on ``device`` (default: the GPU when there is one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvomergeError(f"{folder} is not a run under the runs directory, nor a model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise EvomergeError(f"{folder} has no .safetensors weights; export the model again with evomerge export")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype="auto")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)


def search_space(config: ExperimentConfig, num_layers: int) -> SearchSpace:
    s, m = config.search, config.models
    return SearchSpace(
        config.merge.method,
        m.endpoints,
        m.base,
        num_layers=num_layers,
        granularity=s.granularity,
        group_size=s.group_size,
        params=s.params,
        bounds=s.bounds,
        allow_negative_weights=s.allow_negative_weights,
        frozen=s.frozen,
        fixed=config.merge.parameters,
        seed=config.seed,
        tokenizer_source=config.merge.tokenizer_source,
    )
