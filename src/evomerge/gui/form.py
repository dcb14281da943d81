"""The New-experiment form's content: the presets (each a config that runs on the demo family
as is), validation through the same loader as the CLI, and problems mapped to the fields
they belong under."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..config import ConfigError, FitnessConfig, MergeConfig, SearchConfig
from ..errors import EvomergeError
from ..yamltext import load_yaml
from .imports import library

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


def wizard_preset(objectives: str, source: str) -> dict[str, Any]:
    """What ``evomerge init --no-input`` writes for these answers (a test holds the two
    equal): written out, since the wizard's defaults come from the estimators' registry,
    which imports torch and scikit-learn, and the form is drawn before the GUI's first page."""
    names = ["mix"] if objectives == "single" else ["greek", "cyrillic"]
    exact = {"extractor": "exact", "strict": True, "max_new_tokens": 24, "batch_size": 128}
    tasks = [
        {"name": n, "lm_eval": f"examples/lmeval/demo_{n}.yaml"} if source == "lmeval"
        else {"name": n, "search": f"demo:data/{n}/search.jsonl", "test": f"demo:data/{n}/test.jsonl", **exact}
        for n in names
    ]  # fmt: skip
    return {
        "models": {"base": "demo:models/base", "endpoints": [f"demo:models/{m}" for m in ("add", "greek", "cyrillic")]},
        "merge": {"method": "task_arithmetic"},
        "tasks": tasks,
        "fitness": {"estimator": "mpirt", "anchors": 60},
        "search": {"algorithm": "GA" if objectives == "single" else "NSGA2", "population_size": 12, "generations": 10},
    }


def preset_config(name: str) -> dict[str, Any]:
    """A preset's config: the answers ``evomerge init --no-input`` gives, at the GUI's budget."""
    objectives, source = PRESETS[name]
    if source == "path":
        config = _layer_path_preset()
        config["search"].update(population_size=8, generations=4)
        return config
    config = wizard_preset(objectives, source)
    for task in config["tasks"]:
        lm_eval = task.get("lm_eval")
        if isinstance(lm_eval, str) and lm_eval.endswith(".yaml"):  # the repository's examples/, if here
            found = Path(lm_eval) if Path(lm_eval).exists() else Path(__file__).resolve().parents[3] / lm_eval
            task["lm_eval"] = str(found.resolve())
    config["search"].update(population_size=8, generations=4)
    config.pop("output", None)
    return config


def _default(section: type[BaseModel], key: str) -> Any:
    """The schema's default: what a config without ``key`` runs with, so the form shows it."""
    return section.model_fields[key].get_default(call_default_factory=True)


def form_values(raw: dict[str, Any]) -> tuple[Any, ...]:
    """The form's fields (in ``FIELD_KEYS`` order) showing config ``raw``; a key the config
    does not set shows the schema's default, so writing the form back changes nothing."""
    m, s, f = (raw.get(k) or {} for k in ("models", "search", "fitness"))
    return (
        m.get("base") or "",
        ", ".join(m.get("endpoints") or []),
        (raw.get("merge") or {}).get("method", _default(MergeConfig, "method")),
        s.get("algorithm", _default(SearchConfig, "algorithm")),
        s.get("population_size", _default(SearchConfig, "population_size")),
        s.get("generations", _default(SearchConfig, "generations")),
        s.get("max_seconds"),
        f.get("estimator", _default(FitnessConfig, "estimator")),
        f.get("anchors"),
        s.get("granularity", _default(SearchConfig, "granularity")),
        _yaml(s.get("options")),
        _yaml(s.get("frozen")),
        _yaml(s.get("bounds")),
        yaml.safe_dump(raw.get("tasks") or [], sort_keys=False, allow_unicode=True),
    )


def compose(
    base: dict[str, Any], model: str, endpoints: str, method: str, algorithm: str, population: float | None,
    generations: float | None, seconds: float | None, estimator: str, anchors: float | None, granularity: str,
    options: str, frozen: str, bounds: str, tasks: str,
) -> str:  # fmt: skip
    """The config the form shows, as YAML: ``base`` (the preset, or the config last loaded
    into the form) with the form's fields written over it; every key the form has no field
    for is kept as ``base`` has it."""
    raw = copy.deepcopy(base)
    models = [e.strip() for e in field_text(endpoints).split(",") if e.strip()]
    section = raw.setdefault("models", {})
    section["endpoints"] = models
    if field_text(model):
        section["base"] = field_text(model)
    else:
        section.pop("base", None)
    raw.setdefault("merge", {})["method"] = method
    search = raw.setdefault("search", {})
    search.update(algorithm=algorithm, population_size=_int(population), generations=_int(generations))
    search["granularity"] = granularity
    _set(search, "max_seconds", seconds or None)  # whichever comes first, with the generations
    fitness = raw.setdefault("fitness", {})
    fitness["estimator"] = estimator
    full = estimator == "full"  # it scores every item: anchors are not its setting
    _set(fitness, "anchors", None if full else _int(anchors))
    # A box that does not parse keeps its last valid value in the YAML view; box_problems
    # says so under the box, and Launch refuses until it parses.
    for key, text in (("options", options), ("frozen", frozen), ("bounds", bounds)):
        with contextlib.suppress(yaml.YAMLError):
            _set(search, key, load_yaml(field_text(text)) or None)  # empty: the config's default, not written
    with contextlib.suppress(yaml.YAMLError):
        raw["tasks"] = load_yaml(field_text(tasks))
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


#: The form's YAML boxes, in ``FIELD_KEYS`` order.
YAML_BOXES = ("options", "frozen", "bounds", "tasks")


def box_problems(options: str, frozen: str, bounds: str, tasks: str) -> list[tuple[str, str]]:
    """(config key, message) for each YAML box that does not parse. ``compose`` cannot write
    such a box into the config, so the YAML view still shows its last valid value: the
    message says so, and a launch with any of these problems is refused."""
    problems = []
    for field, text in zip(YAML_BOXES, (options, frozen, bounds, tasks), strict=True):
        try:
            load_yaml(field_text(text))
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problems.append(
                (FIELD_KEYS[field], f"not valid YAML{at} ({getattr(err, 'problem', None) or err}); the config "
                 "below still has this box's last valid value, and Launch waits until it is fixed")
            )  # fmt: skip
    return problems


def _set(section: dict[str, Any], key: str, value: Any) -> None:
    """``section[key] = value``; None removes the key (the schema's default applies)."""
    if value is None:
        section.pop(key, None)
    else:
        section[key] = value


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _yaml(value: Any) -> str:
    """A mapping as YAML for a code box; empty when there is nothing (not ``{}``)."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).strip() if value else ""


def field_text(value: str | None) -> str:
    """A text field's value, stripped (Gradio gives None for a field never typed in)."""
    return (value or "").strip()


def validate(text: str) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """The YAML as a config dict and no problems when valid, else None and the config's own
    (key, message) problems: the same pydantic check as ``evomerge run``."""
    library()  # every plug-in: imported on the first check, not for the first page
    from ..loader import load_config

    try:
        raw = load_yaml(text)
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


#: pydantic's wording, in a user's: (pattern, replacement) applied to a message's start.
PLAIN_WORDS = [
    (r"Input should be greater than or equal to (\S+)", r"must be \1 or more"),
    (r"Input should be greater than (\S+)", r"must be more than \1"),
    (r"Input should be less than or equal to (\S+)", r"must be \1 or less"),
    (r"Input should be less than (\S+)", r"must be less than \1"),
    (r"Input should be a valid integer.*", "must be a whole number"),
    (r"Input should be a valid number.*", "must be a number"),
    (r"Input should be a valid (list|array).*", "must be a list (one '- item' per line)"),
    (r"Input should be a valid dictionary.*", "must be a mapping (one 'name: value' per line)"),
    (r"Input should be a valid string.*", "must be text"),
    (r"Input should be a valid boolean.*", "must be true or false"),
    (r"Input should be (.+)", r"must be \1"),
    (r"Field required", "is required"),
    (r"List should have at least (\d+) items?.*", r"needs at least \1 entries"),
]


def plain(message: str) -> str:
    """A config message as a user would say it (``must be 1 or more``, not pydantic's
    ``Input should be greater than or equal to 1``); others as they are."""
    for pattern, words in PLAIN_WORDS:
        if re.match(pattern, message):
            return re.sub(pattern, words, message, count=1)
    return message


def problems_by_field(problems: list[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Each problem's message, in plain words, under its field's name; those of no field in a
    list of lines."""
    fields: dict[str, list[str]] = {}
    rest: list[str] = []
    for key, message in problems:
        message = plain(message)
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
    library()
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
