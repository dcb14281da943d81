"""Respondents scored on a share of the items each (``fitness.respondent_items``): the
design (which items each gets: the base and the endpoints all, the others a share), and
the config's check that every item is covered."""

import numpy as np
import pytest

from evomerge.config import ConfigError
from evomerge.fitness.respondents import (
    MIN_SCORERS_PER_ITEM,
    item_shares,
    respondent_parts,
    respondent_set,
    single_model,
)
from evomerge.loader import validate_config


@pytest.mark.parametrize(("respondents", "items", "share"), [(10, 900, 0.3), (7, 180, 0.4), (13, 97, 0.25)])
def test_each_respondent_gets_its_share_and_every_item_as_many_scorers_as_any_other(respondents, items, share):
    parts = item_shares(respondents, items, share, seed=0)
    assert len(parts) == respondents
    per = int(np.ceil(share * items))
    assert all(len(p) == per and len(set(p)) == per and p.min() >= 0 and p.max() < items for p in parts)
    coverage = np.bincount(np.concatenate(parts), minlength=items)
    assert coverage.max() - coverage.min() <= 1 and coverage.min() >= MIN_SCORERS_PER_ITEM
    assert all(np.array_equal(p, q) for p, q in zip(parts, item_shares(respondents, items, share, seed=0), strict=True))
    assert not all(
        np.array_equal(p, q) for p, q in zip(parts, item_shares(respondents, items, share, seed=1), strict=True)
    )


def test_share_one_is_every_item_for_everyone():
    assert all(np.array_equal(p, np.arange(50)) for p in item_shares(4, 50, 1.0, seed=3))


def test_the_base_and_the_endpoints_are_scored_on_every_item_the_others_on_their_share():
    who = respondent_set(["a", "b"], "base", 3, lambda rng: single_model("c"), checkpoints=["d"])
    assert [r.kind for r in who] == ["base", "endpoint", "endpoint", "extra", "extra", "extra", "extra"]
    parts = respondent_parts(who, 90, 0.4, seed=5)
    assert all(np.array_equal(p, np.arange(90)) for p in parts[:3])
    others = item_shares(4, 90, 0.4, seed=5)  # the checkpoint and the random merges share the items out
    assert all(np.array_equal(p, q) for p, q in zip(parts[3:], others, strict=True))
    assert all(np.array_equal(p, np.arange(90)) for p in respondent_parts(who, 90, 1.0, seed=5))


def _config(demo_family, base=True, **fitness):
    models = {"endpoints": [str(demo_family / "models" / "add")]}
    if base:
        models["base"] = str(demo_family / "models" / "base")
    return {
        "models": models,
        "merge": {"method": "task_arithmetic" if base else "linear"},
        "tasks": [
            {
                "name": "mix",
                "search": str(demo_family / "data/mix/search.jsonl"),
                "test": str(demo_family / "data/mix/test.jsonl"),
            }
        ],
        "fitness": {"estimator": "mpirt", "anchors": 30, **fitness},
    }


def test_a_share_too_small_to_score_every_item_twice_is_refused_with_what_to_set(demo_family):
    # base + 1 endpoint on every item: any share covers each item twice
    validate_config(_config(demo_family, respondents=2, respondent_items=0.05))
    # no base, 1 endpoint on every item, 2 random merges: 0.5 covers each item twice
    validate_config(_config(demo_family, base=False, respondents=2, respondent_items=0.5))
    with pytest.raises(
        ConfigError, match=r"fitness\.respondent_items.*1 respondent on every item and 2 on 0\.4.*at least 0\.5"
    ):
        validate_config(_config(demo_family, base=False, respondents=2, respondent_items=0.4))
    with pytest.raises(ConfigError, match=r"1 respondent on every item and 0 on 0\.5.*: add respondents"):
        validate_config(_config(demo_family, base=False, respondents=0, respondent_items=0.5))
    with pytest.raises(ConfigError, match="respondent_items"):
        validate_config(_config(demo_family, respondent_items=0))
