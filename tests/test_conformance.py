"""One contract per extension point, run on every registered entry (optuna's habit): a new
scorer, estimator, anchor selection or executor is checked by registering it, with no new
test logic. The toy entries at the end are defined here, in this file only, and pass the
same contracts, the config and ``evomerge config-schema``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config import FitnessConfig, TaskConfig
from evomerge.demo import load_member
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.errors import CandidateError, EvomergeError
from evomerge.evaluate import Item, PromptTemplate
from evomerge.evaluate.scorers import SCORERS
from evomerge.fitness import IRTFits, build_estimator
from evomerge.fitness.anchors import SELECTIONS, select_anchors
from evomerge.fitness.build import chosen_selection
from evomerge.fitness.estimators import ESTIMATORS, Estimator, EstimatorError
from evomerge.loader import load_config
from evomerge.merge.engine import Merger
from evomerge.merge.run import load_live_model
from evomerge.models.pool import ModelPool
from evomerge.search.executors import EXECUTORS
from evomerge.search.local_executor import close
from evomerge.search.objectives import FunctionObjective
from evomerge.search.problem import MergeProblem
from evomerge.search.space import SearchSpace
from test_fitness_build import simulated_responses

# -- the contracts ------------------------------------------------------------------------


def check_scorer(name: str, model, tokenizer, items: list[Item]) -> None:
    cls = SCORERS[name]
    task = TaskConfig(name="t", data="x.jsonl", scorer=name, extractor="exact", max_new_tokens=8)
    assert all(cls.missing(it, task) is None for it in items), "the contract's items are complete"
    assert isinstance(cls.missing(Item("empty", "q"), task) or "", str)
    scorer = cls.from_task(task, PromptTemplate(task.template))
    scores = scorer.score(model, tokenizer, items)
    assert len(scores) == len(items) and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    if cls.binary:
        assert set(scores) <= {0.0, 1.0}, f"{name} says its scores are right/wrong"
    assert isinstance(scorer.higher_is_better, bool)
    assert scorer.score(model, tokenizer, items) == scores, "the same model scores the same"


def check_estimator(name: str) -> None:
    cls = ESTIMATORS[name]
    responses = simulated_responses(n_extra=9, n_items=60)
    config = FitnessConfig(estimator=name, anchors=None if cls.default_selection == "all" else 12)
    est = build_estimator(config, 60, fits=IRTFits(responses, dim=1))
    again = build_estimator(config, 60, fits=IRTFits(responses, dim=1))
    assert isinstance(est, Estimator) and np.array_equal(est.anchors.index, again.anchors.index)
    assert est.anchors.weights.sum() == pytest.approx(1.0)
    for row in responses.scores[:4]:
        y = row[est.anchors.index]
        value = est.estimate(y)
        assert isinstance(value, float) and -1e-9 <= value <= 1 + 1e-9, "accuracy in, accuracy out"
        assert value == again.estimate(y)
    with pytest.raises(EstimatorError, match="scores for"):
        est.estimate([1.0] * (len(est.anchors) + 1))
    with pytest.raises(CandidateError):
        est.estimate([float("nan")] * len(est.anchors))


def check_selection(name: str) -> None:
    responses = simulated_responses(n_extra=9, n_items=40)
    fits = IRTFits(responses, dim=1)
    kwargs = {"seed": 3, "irt": fits.full, "responses": responses.scores}
    a = select_anchors(name, 8, 40, **kwargs)
    b = select_anchors(name, 8, 40, **kwargs)
    assert np.array_equal(a.index, b.index), "reproducible from a seed"
    assert len(set(a.index.tolist())) == len(a) and a.index.min() >= 0 and a.index.max() < 40
    assert a.weights.sum() == pytest.approx(1.0) and (a.weights > 0).all()
    assert isinstance(SELECTIONS[name].needs_respondents(True), bool)


def check_executor(name: str, merger, model, tokenizer, config) -> None:
    executor = EXECUTORS[name].create(merger, model, tokenizer, config)
    pool = merger.pool
    endpoints = [str(e.path) for e in pool.endpoints]
    space = SearchSpace("task_arithmetic", endpoints, str(pool.base.path), num_layers=pool.num_layers)

    def total(m, t):
        return float(sum(p.float().sum() for p in m.parameters()))

    recipes = [space.decode(x) for x in np.random.default_rng(0).random((4, space.n_var))]
    problem = MergeProblem(space, [FunctionObjective(total)])
    results = dict(executor.evaluate(problem, recipes))
    assert sorted(results) == [0, 1, 2, 3] and all(r.error is None for r in results.values())
    one = executor.evaluate_one(problem, recipes[2])
    assert one.measurement is not None and one.measurement.values == results[2].measurement.values
    values, seconds = executor.test(problem, recipes[2])
    assert values == one.measurement.values and seconds >= 0
    threshold = sorted(r.measurement.values[0] for r in results.values())[2]  # two of four fail

    def fails_below(m, t):
        if total(m, t) < threshold:
            raise RuntimeError("this candidate fails")
        return total(m, t)

    failed = dict(executor.evaluate(MergeProblem(space, [FunctionObjective(fails_below)]), recipes))
    assert sorted(failed) == [0, 1, 2, 3]
    assert sum(r.error == "RuntimeError: this candidate fails" for r in failed.values()) == 2

    def bad_data(m, t):
        raise EvomergeError("a problem of the run, not of a candidate")

    with pytest.raises(EvomergeError, match="of the run"):
        dict(executor.evaluate(MergeProblem(space, [FunctionObjective(bad_data)]), recipes))
    close(executor)


# -- every registered entry ---------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model(demo_family):
    return load_member(demo_family, "add")


@pytest.fixture(scope="module")
def demo_items(demo_family, demo_manifest) -> list[Item]:
    """Items every scorer can score: an answer, and choices with a label."""
    items = as_task_items(load_jsonl(demo_family / demo_manifest["tasks"]["add"]["test"]))[:6]
    return [Item(it.id, it.question, it.answer, choices=(str(it.answer), "0", "1"), label=0) for it in items]


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_keeps_the_contract(name, demo_model, demo_items):
    check_scorer(name, *demo_model, demo_items)


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_keeps_the_contract(name):
    check_estimator(name)


@pytest.mark.parametrize("name", SELECTIONS.names())
def test_every_anchor_selection_keeps_the_contract(name):
    check_selection(name)


@pytest.fixture(scope="module")
def live(demo_family):
    models = demo_family / "models"
    merger = Merger(ModelPool.open(str(models / "base"), [str(models / "add"), str(models / "greek")]))
    model = load_live_model(merger)
    from transformers import AutoTokenizer

    return merger, model, AutoTokenizer.from_pretrained(merger.pool.base.path)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "ray" else n for n in EXECUTORS.names()]
)
def test_every_executor_keeps_the_contract(name, live):
    """Each executor on the same pool as ``live`` (Ray's workers open it from the config)."""
    pool = live[0].pool
    models = {"base": str(pool.base.path), "endpoints": [str(e.path) for e in pool.endpoints]}
    config = load_config({"models": models, "search": {"executor": name, "ray": {"workers": 2}}}, resolve_demo=False)
    try:
        check_executor(name, *live, config)
    finally:
        if name == "ray":  # the executor started a local Ray for this test
            import ray

            ray.shutdown()


# -- entries added by a user: one definition each, nothing else touched -------------------


@dataclass(frozen=True)
class LengthScorer:
    """Toy: 1 when the model's most likely next token after the prompt is not end-of-text."""

    binary: ClassVar[bool] = True
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    higher_is_better: bool = True

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> LengthScorer:
        return cls(prompt)

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None:
        return None if item.question else "a question"

    def score(self, model, tokenizer, items) -> list[float]:
        import torch

        out = []
        for it in items:
            ids = tokenizer(self.prompt.render(it, (), tokenizer), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                token = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(float(token != tokenizer.eos_token_id))
        return out


@dataclass(frozen=True, eq=False)
class MedianEstimator(Estimator):
    """Toy: the median of the anchors' scores."""

    name: ClassVar[str] = "median"

    def estimate(self, scores) -> float:
        return float(np.median(self._scores(scores)))


@pytest.fixture
def toys():
    SCORERS.register("length", LengthScorer)
    ESTIMATORS.register("median", MedianEstimator)
    yield
    SCORERS.unregister("length")
    ESTIMATORS.unregister("median")


def test_toy_entries_pass_the_contracts_and_reach_config_and_schema(toys, demo_model, demo_items):
    check_scorer("length", *demo_model, demo_items)
    check_estimator("median")
    config = load_config(
        {
            "models": {"base": "b", "endpoints": ["a"]},
            "tasks": [{"name": "t", "data": "x.jsonl", "scorer": "length"}],
            "fitness": {"estimator": "median", "anchors": 5},
        },
        resolve_demo=False,
    )
    assert config.tasks[0].scorer == "length" and chosen_selection(config.fitness) == "random"
    schema = json.loads(CliRunner().invoke(app, ["config-schema"]).output)
    defs = schema["$defs"]
    assert "length" in defs["TaskConfig"]["properties"]["scorer"]["enum"]
    assert "median" in defs["FitnessConfig"]["properties"]["estimator"]["enum"]


def test_unregistered_names_are_refused_by_the_config_with_a_suggestion():
    base = {"models": {"endpoints": ["a"]}, "tasks": [{"name": "t", "data": "x.jsonl"}]}
    with pytest.raises(EvomergeError, match="unknown scorer 'lenght'"):
        load_config({**base, "tasks": [{"name": "t", "data": "x.jsonl", "scorer": "lenght"}]}, resolve_demo=False)
    with pytest.raises(EvomergeError, match=r"unknown anchor selection 'kmeans'\. Did you mean 'kmeans_irt'"):
        load_config({**base, "fitness": {"estimator": "mean", "anchors": 3, "selection": "kmeans"}})
    with pytest.raises(EvomergeError, match="unknown executor 'rey'"):
        load_config({**base, "search": {"executor": "rey"}})
    schema = json.loads(CliRunner().invoke(app, ["config-schema"]).output)
    assert "length" not in schema["$defs"]["TaskConfig"]["properties"]["scorer"]["enum"]
