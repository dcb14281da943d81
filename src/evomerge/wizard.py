"""``evomerge init``: the questions a new user can answer, turned into a valid config.

Every question has a flag, so the same wizard runs in scripts (``--no-input`` takes the
flags and the defaults); the defaults make a config that runs on the demo family. The
answers are validated as an ``ExperimentConfig`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .loader import load_config
from .search.rundir import RUNS

DEMO_BASE = "demo:models/base"
DEMO_ENDPOINTS = "demo:models/add, demo:models/greek, demo:models/cyrillic"
DEMO_DATA = {
    "mix": "demo:data/mix/search.jsonl, demo:data/mix/test.jsonl",
    "greek": "demo:data/greek/search.jsonl, demo:data/greek/test.jsonl",
    "cyrillic": "demo:data/cyrillic/search.jsonl, demo:data/cyrillic/test.jsonl",
}
DEMO_LMEVAL = {s: f"examples/lmeval/demo_{s}.yaml" for s in DEMO_DATA}

Ask = Callable[[str, str], str]  # (question, default) -> answer


@dataclass
class Answers:
    """What the wizard asks; ``None`` means "ask" (or take the default without input)."""

    base: str | None = None
    endpoints: str | None = None
    objectives: str | None = None  # single | multi
    source: str | None = None  # data | lmeval
    tasks: list[str] = field(default_factory=list)  # objective names
    data: list[str] = field(default_factory=list)  # "NAME=FILES" (or FILES for one task): files or lm-eval task
    method: str | None = None
    algorithm: str | None = None
    estimator: str | None = None
    anchors: str | None = None
    population_size: str | None = None
    generations: str | None = None
    run_dir: str | None = None


def build_config(answers: Answers, ask: Ask) -> dict[str, Any]:
    """Ask what ``answers`` leaves open and return the config as a plain dict (validated).

    The demo family's models and data are offered as defaults only while the base is the
    demo's: a real base with the demo's toy data would run, and mean nothing.
    """

    def get(value: str | None, question: str, default: str, flag: str) -> str:
        answer = value if value is not None else ask(question, default).strip()
        if not answer:
            raise ValueError(f"{question}: an answer is needed (flag: {flag})")
        return answer

    def number(value: str | None, question: str, default: str, flag: str) -> int:
        text = get(value, question, default, flag)
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{question}: a whole number, not {text!r} (flag: {flag})") from None

    base = get(answers.base, "Base model the endpoints were fine-tuned from (dir or hub id)", DEMO_BASE, "--base")
    demo = base.startswith("demo:")
    endpoints = _split(
        get(answers.endpoints, "Models to merge, comma-separated", DEMO_ENDPOINTS if demo else "", "--endpoints")
    )
    mode = get(answers.objectives, "Objectives: single or multi", "single", "--objectives")
    if mode not in ("single", "multi"):
        raise ValueError(f"objectives: answer single or multi, not {mode!r}")
    source = get(
        answers.source, "Task data: data (your JSONL/CSV files) or lmeval (an lm-eval task)", "data", "--source"
    )
    if source not in ("data", "lmeval"):
        raise ValueError(f"task data: answer data or lmeval, not {source!r}")
    given = _data_flags(answers.data)
    default_names = ["mix"] if mode == "single" else ["greek", "cyrillic"]
    names = (
        answers.tasks
        or [n for n in given if n]
        or _split(get(None, "Objective names, comma-separated", ", ".join(default_names) if demo else "", "--task"))
    )
    if mode == "single" and len(names) != 1:
        raise ValueError(f"a single-objective search has one task, got {names}")
    if mode == "multi" and len(names) < 2:
        raise ValueError("a multi-objective search needs two or more tasks")
    if "" in given:  # --data FILES without a name: the one task's
        if len(names) != 1:
            raise ValueError("--data without NAME= is for one task; write --data NAME=FILES for each")
        given[names[0]] = given.pop("")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"--data names {unknown}, which are not among the tasks {names}")
    tasks = []
    for name in names:
        flag = f"--data {name}=..."
        if source == "lmeval":
            question = f"lm-eval task for {name!r} (a name such as gsm8k, or a task YAML)"
            task = get(given.get(name), question, DEMO_LMEVAL.get(name, "") if demo else "", flag)
            tasks.append({"name": name, "lm_eval": task})
            continue
        question = f"Data for {name!r}: one file (split for you) or 'search, test' files"
        files = _split(get(given.get(name), question, DEMO_DATA.get(name, "") if demo else "", flag))
        if len(files) > 2:
            raise ValueError(f"data for {name!r}: one file or two (search, test), got {len(files)}")
        entry: dict[str, Any] = {"name": name}
        entry.update({"data": files[0]} if len(files) == 1 else {"search": files[0], "test": files[1]})
        if files[0].startswith("demo:"):  # the demo answers are exact strings
            if not demo:
                raise ValueError(f"data for {name!r}: the demo family's data fits only the demo's models")
            entry.update({"extractor": "exact", "strict": True, "max_new_tokens": 24, "batch_size": 128})
        tasks.append(entry)
    method = get(answers.method, "Merge method", "task_arithmetic", "--method")
    algorithm = get(
        answers.algorithm, "Search algorithm (pymoo name)", "GA" if mode == "single" else "NSGA2", "--algorithm"
    )
    from .fitness.estimators import ESTIMATORS, MPIRT

    estimator = get(answers.estimator, f"Fitness estimator ({', '.join(ESTIMATORS)})", MPIRT.name, "--estimator")
    fitness: dict[str, Any] = {"estimator": estimator}
    if estimator in ESTIMATORS and ESTIMATORS[estimator].default_selection != "all":
        fitness["anchors"] = number(answers.anchors, "Items scored per candidate (anchors)", "60", "--anchors")
    config = {
        "models": {"base": base, "endpoints": endpoints},
        "merge": {"method": method},
        "tasks": tasks,
        "fitness": fitness,
        "search": {
            "algorithm": algorithm,
            "population_size": number(answers.population_size, "Population size", "12", "--population-size"),
            "generations": number(answers.generations, "Generations", "10", "--generations"),
        },
        "output": {"run_dir": get(answers.run_dir, "Run directory", str(RUNS / "my-run"), "--run-dir")},
    }
    load_config(config, resolve_demo=False)  # raises ConfigError, naming the key, before anything is written
    return config


def _data_flags(flags: list[str]) -> dict[str, str]:
    """``--data NAME=FILES`` flags as {name: files}; a flag without ``NAME=`` is keyed ``""``."""
    given: dict[str, str] = {}
    for flag in flags:
        name, sep, files = flag.partition("=")
        if not sep or "/" in name or ":" in name:  # a bare path (which may hold '=' later on)
            name, files = "", flag
        given[name.strip()] = files.strip()
    return given


def write_config(config: dict[str, Any], out: Path) -> Path:
    """Write ``config`` to ``out``, its file paths (given from the current directory)
    rewritten to hold from ``out``'s folder, which is what paths in a config are relative to."""
    for task in config["tasks"]:
        for key in ("data", "search", "test", "lm_eval"):
            if key in task:
                task[key] = _from_folder(task[key], out.parent)
    out.write_text(
        "# Written by `evomerge init`; run it with `evomerge run "
        + str(out)
        + "`.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    return out


def _from_folder(path: str, folder: Path) -> str:
    """``path`` (relative to the current directory) as seen from ``folder``: relative if
    inside it, else absolute. Names (gsm8k), ``demo:`` paths and missing files are kept."""
    here = Path(path)
    if path.startswith("demo:") or here.is_absolute() or not here.exists():
        return path
    try:
        return str(here.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(here.resolve())


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
