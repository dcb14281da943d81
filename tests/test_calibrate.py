"""Respondents and calibration on the real demo family: real merges, real generation."""

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.demo.family import load_jsonl, load_member, score_skills
from evomerge.errors import EvomergeError, MergeConfigError
from evomerge.evaluate import evaluator_for
from evomerge.fitness import Respondent, collect_responses, random_recipe, respondent_set
from evomerge.fitness.build import item_strata
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.fits import IRTFits
from evomerge.fitness.respondents import item_shares
from evomerge.loader import load_config
from evomerge.merge.engine import Merger
from evomerge.merge.run import load_live_model
from evomerge.models.pool import ModelPool
from helpers import small_mix

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it


@pytest.fixture(scope="module")
def config(demo_family, monkeypatch_module):
    monkeypatch_module.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    cfg = load_config("examples/calibrate-demo.yaml")
    return cfg.model_copy(update={"fitness": cfg.fitness.model_copy(update={"respondents": 6})})


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@dataclasses.dataclass
class Counting:
    """A real scorer that counts the items it is asked to score."""

    inner: object
    items: int = dataclasses.field(default=0, repr=False)  # not part of the scorer settings

    @property
    def higher_is_better(self) -> bool:
        return True

    def score(self, model, tokenizer, items):
        self.items += len(items)
        return self.inner.score(model, tokenizer, items)


def counted(config):
    """The run's models opened, the live model, and its task's evaluator with a counting scorer."""
    from transformers import AutoTokenizer

    m = config.models
    merger = Merger(ModelPool.open(m.base, m.endpoints))
    model, tokenizer = load_live_model(merger), AutoTokenizer.from_pretrained(m.base)
    evaluator = evaluator_for(config.tasks[0])
    counting = Counting(evaluator.scorer)
    evaluator.scorer = counting
    return merger, model, tokenizer, evaluator, counting


def test_respondents_are_the_models_and_their_scores_match_the_manifest(config, demo_manifest, tmp_path):
    m = config.models
    merger, model, tokenizer, evaluator, counting = counted(config)

    def sample(rng):
        return random_recipe("task_arithmetic", m.endpoints, m.base, rng)

    who = respondent_set(m.endpoints, m.base, 2, sample, seed=0)
    assert [r.kind for r in who] == ["base", "endpoint", "endpoint", "endpoint", "extra", "extra"]
    cache = tmp_path / "respondents.json"
    responses = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache)
    assert responses.scores.shape == (6, 900) and counting.items == 6 * 900
    # The single-model recipes reproduce each checkpoint: the search average of the checkpoint
    # loaded with the Auto classes and scored by the family's own scorer.
    family = Path(m.base).parents[1]
    data = {s: load_jsonl(family / demo_manifest["tasks"][s]["search"]) for s in demo_manifest["skills"]}
    for row, name in zip(responses.scores[:4], ["base", "add", "greek", "cyrillic"], strict=True):
        member, tok = load_member(family, name)
        assert 100 * row.mean() == pytest.approx(score_skills(member, tok, data, 24)["average"], abs=0.01)

    # A rerun scores nothing again; a crash mid-way keeps what was finished.
    again = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache)
    assert counting.items == 6 * 900 and np.array_equal(again.scores, responses.scores)
    bad_recipe = random_recipe("task_arithmetic", ["not-in-pool"], m.base, np.random.default_rng(0))
    new = Respondent("new", "extra", sample(np.random.default_rng(9)))
    more = [*who[:2], new, Respondent("bad", "extra", bad_recipe)]
    with pytest.raises(MergeConfigError, match="not in this merger's pool"):
        collect_responses(evaluator, model, tokenizer, merger, more, cache=cache)
    assert counting.items == 7 * 900  # "new" was scored before the bad one failed...
    assert len(json.loads(cache.read_text())["respondents"]) == 7  # ...and is on disk


def test_respondents_are_reused_across_runs_until_a_checkpoint_changes(config, tmp_path):
    m = config.models
    merger, model, tokenizer, evaluator, counting = counted(config)
    who = respondent_set(m.endpoints, m.base, 1, lambda rng: random_recipe("task_arithmetic", m.endpoints, m.base, rng))
    shared = tmp_path / "shared"

    def run(name: str, context: str = "cpu:torch.float32") -> np.ndarray:
        cache = tmp_path / name / "respondents.json"
        return collect_responses(evaluator, model, tokenizer, merger, who, cache=cache, shared=shared, context=context)

    first = run("first")
    assert counting.items == 5 * 900
    second = run("second")  # another run over the same checkpoints and task: nothing scored
    assert counting.items == 5 * 900 and np.array_equal(second.scores, first.scores)
    assert (tmp_path / "second" / "respondents.json").is_file()  # the run keeps its own copy
    run("third", context="cuda:torch.bfloat16")  # another device: scored again
    assert counting.items == 10 * 900
    weights = next((Path(m.endpoints[0])).glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the checkpoint was rewritten
    try:
        run("fourth")
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert counting.items == 12 * 900  # its endpoint and the random merge using it; base and others reused
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the shared cache cannot be written: the run goes on, its own copy kept
    cache = tmp_path / "fifth" / "respondents.json"
    fifth = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache, shared=blocked, context="x")
    assert np.array_equal(fifth.scores, first.scores) and cache.is_file()


def test_respondents_on_a_share_of_the_items_score_only_their_part(config, tmp_path):
    """fitness.respondent_items 0.4: the base and the endpoints scored on every item, the
    random merge on its 40% (real generation, counted), the rest NaN; the scores it has are
    the ones a full scoring gives; asked for every item later, only the missing ones are
    scored."""
    m = config.models
    merger, model, tokenizer, evaluator, counting = counted(config)
    who = respondent_set(m.endpoints, m.base, 1, lambda rng: random_recipe("task_arithmetic", m.endpoints, m.base, rng))
    cache = tmp_path / "respondents.json"
    part = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache, share=0.4, seed=0)
    assert counting.items == 4 * 900 + 360  # base and 3 endpoints on every item, the random merge on 40%
    seen = ~np.isnan(part.scores)
    assert seen.sum(axis=1).tolist() == [900] * 4 + [360]
    assert np.array_equal(np.flatnonzero(seen[4]), item_shares(1, 900, 0.4, seed=0)[0])
    stored = json.loads(cache.read_text())["respondents"]
    assert [sum(v is None for v in r["scores"]) for r in stored.values()] == [0] * 4 + [540]  # null: not scored

    full = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache)
    assert counting.items == 5 * 900  # the random merge's 540 missing, nothing twice
    assert not np.isnan(full.scores).any() and np.array_equal(full.scores[seen], part.scores[seen])
    # Asked for the share again, with every score now in the cache: the same responses as
    # the first time (only each one's own items), so reusing scores changes no fit.
    again = collect_responses(evaluator, model, tokenizer, merger, who, cache=cache, share=0.4, seed=0)
    assert counting.items == 5 * 900 and np.array_equal(np.isnan(again.scores), ~seen)
    assert np.array_equal(again.scores[seen], part.scores[seen])
    fits = IRTFits(part, dim=1)
    assert np.array_equal(fits.completed[seen], part.scores[seen]) and not np.isnan(fits.completed).any()


def test_calibration_writes_table_plot_and_is_reproducible(config, demo_family, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="evomerge")
    search, test = small_mix(demo_family)  # plumbing: the small mix task will do
    task = config.tasks[0].model_copy(update={"search": str(search), "test": str(test)})
    config = config.model_copy(update={"tasks": [task]})
    kwargs = dict(
        merges=8,
        anchor_counts=[30, 90],
        repeats=2,
        variants=[("mean", "random"), ("mpirt", "random"), ("gmpirt", "kmeans_irt")],
    )
    config = config.model_copy(update={"fitness": config.fitness.model_copy(update={"respondent_items": 0.5})})
    rows = calibrate(config, tmp_path / "a", **kwargs)
    # the IRT estimators at both shares (respondents on every item, and on half each); the
    # mean of random anchors needs no respondents: once
    assert {(r.estimator, r.respondent_items, r.anchors) for r in rows} == {
        (e, s, k) for e in ("mean", "mpirt", "gmpirt") for s in (1.0, 0.5) for k in (30, 90) if e != "mean" or s == 1
    }
    for name in ("calibration.csv", "calibration.json", "calibration.png", "respondents-mix.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    report = json.loads((tmp_path / "a" / "calibration.json").read_text())
    summary = report["tasks"]["mix"]["summary"]
    assert [(s["respondent_items"], s["anchors"]) for s in summary] == [(1.0, 30), (1.0, 90), (0.5, 30), (0.5, 90)]
    spread = report["tasks"]["mix"]["full_scores"]
    assert spread["max"] > spread["min"]  # the random merges differ, so ranking them means something
    for r in rows:
        assert 0 <= r.mae < 0.5 and -1 <= r.spearman <= 1 and r.items <= r.anchors

    # Same seed, fresh directory: the same numbers.
    assert calibrate(config, tmp_path / "b", **kwargs) == rows


def test_strata_must_be_a_field_of_every_item(config):
    evaluator = evaluator_for(config.tasks[0])
    assert set(item_strata(config.fitness, evaluator)) == {"add", "greek", "cyrillic"}
    with pytest.raises(EvomergeError, match=r"fitness\.strata is 'subject'.*no such field"):
        item_strata(config.fitness.model_copy(update={"strata": "subject"}), evaluator)


def test_calibrate_command(config, tmp_path, demo_family, monkeypatch):
    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "examples/calibrate-demo.yaml",
            "--out",
            str(out),
            "--merges",
            "4",
            "--anchors",
            "45",
            "--repeats",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mpirt (random)" in result.output and (out / "calibration.png").exists()
    assert "IRT fitted on" not in result.output  # every item: one fit, one table
    again = ["calibrate", "examples/calibrate-demo.yaml", "--out", str(out), "--merges", "4", "--anchors", "45"]
    half = CliRunner().invoke(app, [*again, "--repeats", "1", "--set", "fitness.respondent_items=0.5"])
    assert half.exit_code == 0, half.output
    flat = " ".join(half.output.split())  # titles wrap at the terminal's width
    every, _, half_table = flat.partition(
        "IRT fitted on respondents scored on every item (base, endpoints) or 50% of them (the others)"
    )
    assert "IRT fitted on respondents scored on every item" in every and "mpirt (random)" in half_table
    assert "mean (random)" in every and "mean (random)" not in half_table  # needs no respondents: once
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nope.yaml"), "--out", str(out)])
    assert bad.exit_code == 2 and "not found" in bad.output
