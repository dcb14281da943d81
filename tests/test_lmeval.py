"""The lm-eval adapter on the demo family: a local task YAML (dataset_path: json, offline),
scored on the live model, against our own scorer on the same prompts."""

from __future__ import annotations

import pytest

from evomerge.demo import load_member
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.evaluate import GenerationScorer
from evomerge.evaluate.lmeval import LMEvalError, LMEvalScorer, jsonl_task_yaml

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


@pytest.fixture(scope="module")
def task_yaml(demo_family, demo_manifest, tmp_path_factory):
    path = tmp_path_factory.mktemp("lmeval") / "demo_add.yaml"
    path.write_text(jsonl_task_yaml("demo_add", demo_family / demo_manifest["tasks"]["add"]["test"], max_new_tokens=24))
    return path


def test_lmeval_adapter_agrees_with_our_scorer_item_by_item(demo_family, demo_manifest, task_yaml):
    model, tok = load_member(demo_family, "add")
    scorer = LMEvalScorer(task_yaml)
    items = scorer.items()[:80]
    ours_items = as_task_items(load_jsonl(demo_family / demo_manifest["tasks"]["add"]["test"]))[:80]
    assert [it.question for it in items] == [it.question for it in ours_items]  # the same prompts
    theirs = scorer.score(model, tok, items)
    ours = GenerationScorer("exact", strict=True, max_new_tokens=24).score(model, tok, ours_items)
    assert theirs == ours
    assert 0 < sum(ours) < len(ours)  # neither all right nor all wrong: a real comparison
    # the task is built once and the same live model is wrapped once, across candidates
    task_dict, lm = scorer.task_dict(), scorer._lm
    assert scorer.score(model, tok, items[:10]) == theirs[:10]
    assert scorer.task_dict() is task_dict and scorer._lm is lm


def test_lmeval_errors_are_clear(tmp_path):
    with pytest.raises(LMEvalError, match="not found"):
        LMEvalScorer(tmp_path / "missing.yaml").task_dict()
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(LMEvalError, match="needs a 'task:' name"):
        LMEvalScorer(tmp_path / "bad.yaml").task_dict()
    with pytest.raises(LMEvalError, match="could not build task"):
        LMEvalScorer("no_such_task_anywhere").task_dict()


def test_lmeval_generate_until_runs_on_the_run_generation_engine(demo_family, task_yaml):
    """lm-eval's own path (transformers' generate, engine ``hf``) and evomerge's eager
    loop give the same per-item scores; with ``eager``, ``model.generate`` is never called."""
    from evomerge.evaluate.generation import use_engine

    model, tok = load_member(demo_family, "add")
    scorer = LMEvalScorer(task_yaml)
    items = scorer.items()[:64]
    use_engine(model, "hf")
    theirs = scorer.score(model, tok, items)
    calls: list[int] = []
    real = model.generate
    model.generate = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]
    try:
        use_engine(model, "eager")
        ours = scorer.score(model, tok, items)
    finally:
        del model.generate
    assert ours == theirs and 0 < sum(ours) < len(ours)
    assert not calls  # the engine decoded, not transformers' generate
