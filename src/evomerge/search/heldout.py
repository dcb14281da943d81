"""The test phase: the winners and the baselines, scored once on the held-out test split.

The baselines answer the question a user asks first: did evolution beat the naive
choices? They are each endpoint alone, the base, and the method's default merge
(every per-model weight ``1/n``, every other parameter at mergekit's default). Each
row is stored as soon as it is scored, so a resumed run scores only what is missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomically
from ..errors import EvomergeError
from ..fitness.respondents import single_model
from ..merge.candidate import Candidate as MergeCandidate
from ..merge.candidate import candidate_from_yaml
from ..merge.methods import get_method
from ..merge.recipe import Recipe
from ..progress import phase
from .local_executor import Executor
from .problem import MergeProblem
from .store import EvaluationRow, RunStore, TestRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # best, pareto, endpoint, base, default
    recipe: MergeCandidate
    search_scores: dict[str, float] | None = None


def default_merge(method: str, endpoints: Sequence[str], base: str | None) -> Recipe | None:
    """Uniform weights and mergekit's defaults (``t: 0.5`` for SLERP); None for methods
    without a default (layer_select takes whole layers, not weights)."""
    spec = get_method(method)
    params: dict[str, Any] = {}
    for p in spec.params:
        if p.name == "weight":
            params["weight"] = round(1.0 / len(endpoints), 6)
        elif p.name == "t":
            params["t"] = 0.5
        elif p.required:
            return None
    return Recipe.from_params(method, list(endpoints), params, base_model=base if spec.base != "ignored" else None)


def recipe_baselines(method: str, endpoints: Sequence[str], base: str | None) -> list[Candidate]:
    """Each endpoint alone, the base, and the method's default merge."""
    out = [Candidate(f"endpoint:{Path(e).name}", "endpoint", single_model(e)) for e in endpoints]
    if base is not None:
        out.append(Candidate("base", "base", single_model(base)))
    default = default_merge(method, endpoints, base)
    if default is not None:
        out.append(Candidate(f"default {method}", "default", default))
    return out


def candidates(
    winners: Sequence[EvaluationRow], problem: MergeProblem, baselines: Sequence[Candidate]
) -> list[Candidate]:
    """The evolved winners, then the baselines, each candidate once (the first name wins)."""
    out = []
    for k, row in enumerate(winners):
        name = "best" if len(winners) == 1 and problem.n_obj == 1 else f"pareto:{k}"
        scores = dict(zip(problem.names, row.objectives, strict=True))
        out.append(Candidate(name, "best" if name == "best" else "pareto", candidate_from_yaml(row.recipe), scores))
    out += baselines
    seen: set[str] = set()
    unique = []
    for c in out:
        if c.recipe.digest not in seen:
            seen.add(c.recipe.digest)
            unique.append(c)
    return unique


def run_tests(store: RunStore, executor: Executor, problem: MergeProblem, todo: Sequence[Candidate]) -> list[TestRow]:
    """Score every candidate on the test split, skipping those the store already holds."""
    done = {t.name: t for t in store.tests()}
    left = [(p, c) for p, c in enumerate(todo) if c.name not in done or done[c.name].recipe != c.recipe.to_yaml()]
    with phase("held-out test", len(left)) as bar:
        for position, c in left:
            log.info("test %d/%d: %s", position + 1, len(todo), c.name)
            values, seconds = executor.test(problem, c.recipe)
            scores = dict(zip(problem.test_names, values, strict=True))
            estimate = c.search_scores
            if estimate is None:  # a baseline: what the search would have estimated for it
                measured = executor.evaluate_one(problem, c.recipe).measurement
                assert measured is not None  # evaluate_one raises rather than fail quietly
                estimate = dict(zip(problem.names, measured.values, strict=True))
            store.add_test(TestRow(c.name, c.kind, c.recipe.to_yaml(), scores, estimate, seconds), position)
            bar.advance()
    wanted = {c.name for c in todo}
    return [t for t in store.tests() if t.name in wanted]


def write_results(path: Path, rows: Sequence[TestRow], problem: MergeProblem, extra: dict[str, Any]) -> Path:
    """``results.json``: every test row (name, kind, recipe, test score per objective)."""
    if not rows:
        raise EvomergeError("no test results to write")
    data = {
        **extra,
        "objectives": [{"name": n, "maximize": m} for n, m in zip(problem.names, problem.maximize, strict=True)],
        "checks": list(problem.test_names[problem.n_obj :]),
        "rows": [
            {
                "name": r.name,
                "kind": r.kind,
                "recipe": r.recipe,
                "test": r.scores,
                "search_estimate": r.search_scores,
                "seconds": round(r.seconds, 3),
            }
            for r in rows
        ],
    }
    write_text_atomically(path, json.dumps(data, indent=2))
    return path


def results_card(path: Path) -> str:
    """The model card's part from a run's ``results.json``: the held-out test table (every
    tested candidate, each objective) and how to reproduce the run."""
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    names = [o["name"] for o in data["objectives"]] + data.get("checks", [])
    lines = [
        "## Held-out test",
        "",
        "| candidate | kind | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " |",
        *(
            f"| {r['name']} | {r['kind']} | " + " | ".join(f"{r['test'][n]:.4f}" for n in names) + " |"
            for r in data["rows"]
        ),
        "",
        "## Reproduce",
        "",
        f"The run's `config.yaml` (seed {data.get('seed', 0)}), with evomerge: `evomerge run config.yaml`; "
        f"it stopped after {data.get('evaluations', '?')} evaluations ({data.get('stop_reason', '?')}).",
    ]
    return "\n".join(lines)
