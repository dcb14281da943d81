"""Loading an experiment config: YAML text, a file or a dict, ``--set`` overrides, relative
and ``demo:`` paths, then the rules that need the plug-ins (a registered scorer, what a
merge method, an estimator or an algorithm accepts).

It sits above the registries, which the config (its shape, in ``config``) cannot import.
Every problem is a (dotted key, message) pair, as pydantic's own are, so the CLI prints one
line per problem and the GUI shows each under its field.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .cachedir import cache_root
from .config import (
    DEMO_PREFIX,
    SECTIONS,
    ConfigError,
    ExperimentConfig,
    FitnessConfig,
    TaskConfig,
    config_problems,
    format_problems,
)
from .demo.family import build_demo_family
from .errors import EvomergeError
from .evaluate.generation import engine_names
from .evaluate.language import LanguageCheckError, check_language_code
from .evaluate.scorers import SCORERS
from .evaluate.tasks import Columns
from .fitness.anchors import SELECTIONS
from .fitness.build import chosen_selection, needs_respondents
from .fitness.estimators import ESTIMATORS
from .fitness.respondents import MIN_SCORERS_PER_ITEM
from .merge.memory import parse_size
from .merge.methods import get_method
from .registry import Registry, summary, unknown_name
from .search.algorithms import AlgorithmError, canonical_algorithm, make_algorithm
from .search.executors import EXECUTORS
from .search.trackers import TRACKERS
from .yamltext import load_yaml

log = logging.getLogger(__name__)

Problems = list[tuple[str, str]]

REGISTRIES: dict[str, Registry[Any]] = {
    "scorer": SCORERS,
    "estimator": ESTIMATORS,
    "selection": SELECTIONS,
    "executor": EXECUTORS,
    "tracker": TRACKERS,
}
"""The registries a config names entries of, by the kind its fields are marked with."""


def load_config(
    source: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    resolve_demo: bool = True,
    base_dir: Path | str | None = None,
) -> ExperimentConfig:
    """A validated config from a YAML file, YAML text or a dict, ``demo:`` paths resolved.

    ``overrides`` are ``dotted.key=value`` strings (the CLI's ``--set``); values are YAML,
    list items are addressed by index (``tasks.0.anchors=45``). Relative input paths
    (models, data files, task YAMLs) resolve against ``base_dir``: by default the config
    file's folder, and nothing for YAML text or a dict (the current directory).
    """
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file {path} not found")
            source = path.read_text()
            base_dir = base_dir or path.parent
        try:
            raw = load_yaml(source)
        except yaml.YAMLError as err:
            raise ConfigError(f"the config is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError("a config is a YAML mapping with sections models, merge, tasks, fitness, search, output")
    for override in overrides:
        apply_override(raw, override)
    if base_dir is not None:
        resolve_relative_paths(raw, Path(base_dir))
    config = validate_config(raw)
    return resolve_demo_paths(config) if resolve_demo else config


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """The config's shape (pydantic), then the plug-in rules; a ConfigError lists every problem."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        problems = config_problems(err)
        raise ConfigError(format_problems(problems), problems) from None
    config, problems = _plugin_problems(config)
    if problems:
        raise ConfigError(format_problems(problems), problems)
    return config


def _plugin_problems(config: ExperimentConfig) -> tuple[ExperimentConfig, Problems]:
    """The config with names made canonical (``nsga2`` -> NSGA2, ``JA`` -> ja), and what is
    wrong with the names and values only the plug-ins know."""
    problems: Problems = []

    def check(key: str, test: Callable[[], Any]) -> Any:
        try:
            return test()
        except (EvomergeError, ValueError) as err:
            problems.append((key, str(err)))
            return None

    merge, search = config.merge, config.search
    if merge.memory_budget is not None:
        check("merge.memory_budget", lambda: parse_size(merge.memory_budget))  # type: ignore[arg-type]
    method = check("merge.method", lambda: get_method(merge.method))
    algorithm = check("search.algorithm", lambda: canonical_algorithm(search.algorithm))
    check("search.executor", lambda: EXECUTORS.get(search.executor))
    for tracker in config.output.trackers:
        check("output.trackers", lambda tracker=tracker: TRACKERS.get(tracker))  # type: ignore[misc]
    engines = engine_names()
    if config.output.generation not in engines:
        problems.append(("output.generation", unknown_name("generation engine", config.output.generation, engines)))
    fitness_ok = _fitness_problems("fitness", config.fitness, problems)
    tasks = []
    for i, task in enumerate(config.tasks):
        tasks.append(_task_problems(f"tasks.{i}", task, problems))
        if task.fitness is not None:
            fitness_ok &= _fitness_problems(f"tasks.{i}.fitness", task.fitness, problems)
    if problems:
        return config, problems
    config = config.model_copy(update={"tasks": tasks, "search": search.model_copy(update={"algorithm": algorithm})})

    if search.space == "recipe" and method.base == "required" and config.models.base is None:
        problems.append(
            (
                "config",
                f"merge.method {merge.method} merges task vectors taken against a base model: set models.base "
                "(the model the endpoints were fine-tuned from)",
            )
        )
    searched = [t for t in config.tasks if t.objective]
    if searched:  # the algorithm built now, with its options: a bad option fails here, not mid-run
        try:
            make_algorithm(algorithm, len(searched), search.options, population_size=search.population_size)
        except AlgorithmError as err:
            problems.append(("config", f"search.{err.key}: {err}"))
    for i, task in enumerate(config.tasks):
        fitness = config.fitness_for(task)
        if not (fitness_ok and task.objective and needs_respondents(fitness, has_strata=True)):
            continue
        selection = chosen_selection(fitness)
        share, m = fitness.respondent_items, config.models
        whole = int(m.base is not None) + len(m.endpoints)  # scored on every item (respondent_parts)
        shared = len(fitness.checkpoints) + fitness.respondents
        if whole + shared * share < MIN_SCORERS_PER_ITEM:
            key = "fitness" if task.fitness is None else f"tasks.{i}.fitness"
            need = (MIN_SCORERS_PER_ITEM - whole) / shared if shared else None
            respondents = f"{whole} respondent{'' if whole == 1 else 's'}"
            problems.append(
                (
                    f"{key}.respondent_items",
                    f"{respondents} on every item and {shared} on {share:g} of them leave items scored by "
                    f"fewer than {MIN_SCORERS_PER_ITEM}: "
                    + (f"raise it to at least {need:.2g}, or " if need is not None and need <= 1 else "")
                    + "add respondents (fitness.respondents)",
                )
            )
        if search.space == "path":
            problems.append(
                (
                    "config",
                    f"tasks.{i} ({task.name}): a layer-path search has no random merges to calibrate estimator "
                    f"{fitness.estimator} with {selection} anchors on: use estimator full, or mean "
                    "with random anchors",
                )
            )
        elif task.lm_eval is None and not SCORERS[task.scorer].binary:
            problems.append(
                (
                    "config",
                    f"tasks.{i} ({task.name}): scorer {task.scorer} gives a value per item, not a right/wrong score; "
                    f"estimator {fitness.estimator} with {selection} anchors fits IRT on right/wrong "
                    "scores. Use estimator full, or mean with random anchors, for this task.",
                )
            )
    return config, problems


def _task_problems(key: str, task: TaskConfig, problems: Problems) -> TaskConfig:
    """A task's scorer, column roles and language code; the code made canonical."""
    try:
        scorer = SCORERS.get(task.scorer)
    except EvomergeError as err:
        problems.append((f"{key}.scorer", str(err)))
        scorer = None
    known = [f.name for f in fields(Columns)]
    for role in task.columns:
        if role not in known:
            close = difflib.get_close_matches(role, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((f"{key}.columns", f"{role!r} is not a column role (roles: {', '.join(known)}){hint}"))
    if task.language is None:
        return task
    try:
        language = check_language_code(task.language)
    except LanguageCheckError as err:
        problems.append((f"{key}.language", str(err)))
        return task
    if scorer is not None and (not getattr(scorer, "generates", False) or task.lm_eval is not None):
        problems.append(
            (key, f"language checks generated answers: scorer {task.scorer} does not generate (not lm_eval either)")
        )
    return task.model_copy(update={"language": language})


def _fitness_problems(key: str, fitness: FitnessConfig, problems: Problems) -> bool:
    """Whether a fitness section names a registered estimator and selection, with anchors
    where the estimator needs them."""
    before = len(problems)
    try:
        estimator = ESTIMATORS.get(fitness.estimator)
    except EvomergeError as err:
        problems.append((f"{key}.estimator", str(err)))
        estimator = None
    if fitness.selection is not None:
        try:
            SELECTIONS.get(fitness.selection)
        except EvomergeError as err:
            problems.append((f"{key}.selection", str(err)))
    if estimator is not None and estimator.default_selection != "all" and fitness.anchors is None:
        problems.append((key, f"estimator {fitness.estimator} needs anchors: the number of items per candidate"))
    return len(problems) == before


def resolve_relative_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Make ``raw``'s relative input paths absolute against ``base_dir`` (the config's folder),
    so a config runs from any directory and the run stores where its inputs were.

    A path found only from the current directory is taken from there, with a warning (configs
    written before paths followed the config file). A model that exists in neither is left
    as written: it is a hub id. ``output.run_dir`` stays relative to the current directory.
    """

    def fix(value: Any, *, model: bool) -> Any:
        if not isinstance(value, str) or not value or value.startswith(DEMO_PREFIX) or Path(value).is_absolute():
            return value
        beside = base_dir / value
        if beside.exists():
            return str(beside.resolve())
        if Path(value).exists() and base_dir.resolve() != Path.cwd().resolve():
            log.warning(
                "%s: not found beside the config (%s) but in the current directory; taken from there. "
                "Paths in a config are relative to its folder: write %s",
                value,
                base_dir,
                os.path.relpath(Path(value).resolve(), base_dir.resolve()),
            )
            return str(Path(value).resolve())
        return value if model else str(beside.resolve())

    def fix_fitness(section: Any) -> None:
        if isinstance(section, dict) and isinstance(section.get("checkpoints"), list):
            section["checkpoints"] = [fix(c, model=True) for c in section["checkpoints"]]

    models = raw.get("models")
    if isinstance(models, dict):
        if "base" in models:
            models["base"] = fix(models["base"], model=True)
        if isinstance(models.get("endpoints"), list):
            models["endpoints"] = [fix(e, model=True) for e in models["endpoints"]]
    fix_fitness(raw.get("fitness"))
    search = raw.get("search")
    path = search.get("path") if isinstance(search, dict) else None
    if isinstance(path, dict) and isinstance(path.get("from_run"), str):
        path["from_run"] = fix(path["from_run"], model=False)
    for task in raw.get("tasks") or []:
        if not isinstance(task, dict):
            continue
        for key in ("data", "search", "test"):
            if key in task:
                task[key] = fix(task[key], model=False)
        lm_eval = task.get("lm_eval")
        if isinstance(lm_eval, str) and lm_eval.endswith((".yaml", ".yml")):
            task["lm_eval"] = fix(lm_eval, model=False)
        fix_fitness(task.get("fitness"))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``dotted.key=value`` in ``raw``, creating missing sections."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: write key=value, e.g. search.generations=5")
    try:
        value = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML ({err})") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} has items 0..{len(node) - 1}")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def demo_root() -> Path:
    """The demo family's folder, built on first use."""
    return build_demo_family()


def resolve_demo_text(text: str) -> str:
    """``demo:`` paths inside a file's text (a mergekit YAML, an lm-eval task YAML) resolved."""
    return text.replace(DEMO_PREFIX, f"{demo_root()}/") if DEMO_PREFIX in text else text


def resolve_demo_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Replace ``demo:`` paths by paths in the demo family, building it if absent; an lm-eval
    task YAML whose data files are ``demo:`` paths becomes a resolved copy, named by its content."""
    if DEMO_PREFIX not in config.model_dump_json():
        return config
    root = demo_root()

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(DEMO_PREFIX):
            return str(root / value[len(DEMO_PREFIX) :])
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    raw = fix(config.model_dump(by_alias=True))
    for task in raw["tasks"]:
        if task["lm_eval"] and task["lm_eval"].endswith((".yaml", ".yml")) and Path(task["lm_eval"]).is_file():
            task["lm_eval"] = str(_resolved_task_yaml(Path(task["lm_eval"])))
    return ExperimentConfig.model_validate(raw)


def _resolved_task_yaml(path: Path) -> Path:
    text = path.read_text()
    resolved = resolve_demo_text(text)
    if resolved == text:
        return path
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:16]
    copy_path = cache_root() / "lmeval-tasks" / digest / path.name
    copy_path.parent.mkdir(parents=True, exist_ok=True)
    copy_path.write_text(resolved)
    return copy_path


def config_schema() -> dict[str, Any]:
    """The config's JSON schema (``evomerge config-schema``), each name field listing what
    its registry holds."""
    schema = ExperimentConfig.model_json_schema(by_alias=True)

    def fill(node: Any) -> None:
        if isinstance(node, dict):
            kind = node.pop("registry", None)
            if isinstance(kind, str):
                names = engine_names() if kind == "generation engine" else REGISTRIES[kind].names()
                target = next((s for s in node.get("anyOf", []) if s.get("type") == "string"), node)
                target["enum"] = names
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(schema)
    return schema


def config_reference() -> str:
    """The config reference in Markdown, generated from the schema (docs/config.md is
    this text; a test keeps the file in step with the code)."""
    lines = [
        "# Config reference",
        "",
        "Generated from the schema (`evomerge.loader.config_reference()`; the JSON schema: `evomerge config-schema`).",
        "Unknown keys are errors. `seed` (top level, default 0) seeds the algorithm and DARE's random drops.",
    ]
    for title, model in SECTIONS:
        lines += ["", f"## `{title}`", "", " ".join((model.__doc__ or "").split()), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, f in model.model_fields.items():
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            lines.append(f"| `{f.alias or name}` | {_type_name(f.annotation)} | {default} | {f.description or ''} |")
    lines += [
        "",
        "## Registered names",
        "",
        "What `scorer`, `estimator`, `selection`, `executor` and `trackers` accept.",
    ]
    for kind, registry in REGISTRIES.items():
        lines += ["", f"### {kind}", ""]
        lines += [f"- `{name}`: {summary(entry)}" for name, entry in registry.items()]
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"Optional\[(.*)\]", r"\1 | None", text.replace("typing.", "").replace("evomerge.config.", ""))
    return text.replace("Union[int, Literal['auto']]", "int | 'auto'").replace("|", "\\|")
