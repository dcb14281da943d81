"""The respondents an IRT model is fitted on, and their per-item scores.

A run can afford only a few full evaluations before its search, so the respondents
are the models at hand: the base, each endpoint, and cheap extras (random merges of
the endpoints, or checkpoints the user supplies). Each is a recipe merged into the
one live model, scored on every search item, and recorded in a JSON file in the run
directory as soon as it is scored, so a crash loses at most the one in flight and a
rerun does not score anything twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..atomic import write_text_atomically
from ..cachedir import cache_root
from ..errors import EvomergeError
from ..evaluate.evaluator import Evaluator
from ..merge.engine import Merger
from ..merge.methods import get_method, search_range, searched_params
from ..merge.recipe import Recipe
from ..progress import phase

log = logging.getLogger(__name__)

Kind = Literal["base", "endpoint", "extra"]


class ItemScorer(Protocol):
    """Merges recipes and scores each on every search item of an evaluator: an executor."""

    def score_items(
        self, evaluator: Evaluator, recipes: Sequence[Recipe], items: Sequence[Sequence[str]] | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """``(index, item id -> score)`` for each recipe, as each finishes: on its ``items``
        (ids), else on every search item."""
        ...


@dataclass(frozen=True)
class Respondent:
    name: str
    kind: Kind
    recipe: Recipe


@dataclass(frozen=True, eq=False)
class Responses:
    """Per-item scores (respondents x search items) and who gave them."""

    respondents: tuple[Respondent, ...]
    item_ids: tuple[str, ...]
    scores: np.ndarray

    def rows(self, *kinds: Kind) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.respondents) if r.kind in kinds], dtype=int)

    def subset(self, rows: Sequence[int]) -> Responses:
        return Responses(tuple(self.respondents[i] for i in rows), self.item_ids, self.scores[list(rows)])

    def only(self, parts: Sequence[np.ndarray]) -> Responses:
        """These responses with every score outside each respondent's part of the items
        (``item_shares``) hidden (NaN)."""
        scores = np.full_like(self.scores, np.nan)
        for row, part in enumerate(parts):
            scores[row, part] = self.scores[row, part]
        return Responses(self.respondents, self.item_ids, scores)


def single_model(model: str) -> Recipe:
    """A recipe that reproduces one checkpoint exactly (``linear``, weight 1)."""
    return Recipe.from_params("linear", [model], {"weight": 1.0})


def random_recipe(method: str, endpoints: Sequence[str], base: str | None, rng: np.random.Generator) -> Recipe:
    """A merge with each parameter a search would vary drawn uniformly from its default
    range (``merge.methods.search_range``), one per model where the method takes one per
    model; the others keep the method's default."""
    spec = get_method(method)
    searched = searched_params(spec)
    params: dict[str, object] = {}
    for p in spec.params:
        if p.name in searched:
            low, high = search_range(spec, p.name)  # type: ignore[misc]
            values = rng.uniform(low, high, size=len(endpoints) if p.per_model else 1).round(4).tolist()
            params[p.name] = values if p.per_model else values[0]
        elif p.required:
            raise EvomergeError(
                f"random {method} merges need a value for {p.name!r}, which has no sampling range; "
                "set fitness.respondents to 0 and supply respondent checkpoints instead"
            )
    return Recipe.from_params(method, list(endpoints), params, base_model=base if spec.base != "ignored" else None)


def respondent_set(
    endpoints: Sequence[str],
    base: str | None,
    n_extra: int,
    sample: Callable[[np.random.Generator], Recipe],
    *,
    seed: int = 0,
    checkpoints: Sequence[str] = (),
) -> list[Respondent]:
    """The base, each endpoint, the user's ``checkpoints``, then ``n_extra`` draws of ``sample``."""
    out = [Respondent("base", "base", single_model(base))] if base else []
    out += [Respondent(f"endpoint:{Path(e).name}", "endpoint", single_model(e)) for e in endpoints]
    out += [Respondent(f"checkpoint:{Path(c).name}", "extra", single_model(c)) for c in checkpoints]
    rng = np.random.default_rng(seed)
    out += [Respondent(f"random:{i}", "extra", sample(rng)) for i in range(n_extra)]
    return out


#: Each item is scored by at least this many respondents (``respondent_parts``).
MIN_SCORERS_PER_ITEM = 2


def item_shares(n_respondents: int, n_items: int, share: float, seed: int) -> list[np.ndarray]:
    """The item positions each respondent is scored on when each is scored on ``share`` of
    the ``n_items`` (``fitness.respondent_items``): consecutive blocks of one shuffled
    order, wrapping around, so every item is scored by as many respondents as any other,
    give or take one. With ``share`` 1, every item for everyone.

    Why blocks of one order and not an independent draw each: independent draws leave some
    items scored by nobody (about ``(1 - share) ** n_respondents`` of them), whose IRT
    parameters would be the prior's alone.
    """
    if share >= 1:
        return [np.arange(n_items)] * n_respondents
    per = max(1, math.ceil(share * n_items))
    order = np.random.default_rng([seed, 2]).permutation(n_items)
    return [np.sort(order[(r * per + np.arange(per)) % n_items]) for r in range(n_respondents)]


def respondent_parts(respondents: Sequence[Respondent], n_items: int, share: float, seed: int) -> list[np.ndarray]:
    """The item positions each respondent is scored on (``fitness.respondent_items``): the
    base and the endpoints every item, the others (checkpoints, random merges) ``share``
    of them each (``item_shares``).

    Why the base and the endpoints in full: mp-IRT gives a candidate the combination of
    the endpoints' abilities that explains its anchors best, so an error in theirs is in
    every estimate. On ``examples/mix.yaml`` with every respondent at 35%, mp-IRT at 60
    anchors was off by 4.41 points; with the base and the endpoints in full, by 2.65 (see
    docs/fitness.md). The base is not in that combination, but the fit needs it whole: on
    the same config at 30% and 45 anchors, the base on the share took mp-IRT's error from
    2.51 to 3.24 points.
    """
    parts = [np.arange(n_items)] * len(respondents)
    others = [k for k, r in enumerate(respondents) if r.kind == "extra"]
    for k, part in zip(others, item_shares(len(others), n_items, share, seed), strict=True):
        parts[k] = part
    return parts


def respondents_file(task: str) -> str:
    """The respondents' scores' file name in a run directory (``RunDir.respondents``)."""
    return f"respondents-{task}.json"


def shared_cache_dir() -> Path:
    """Where respondents' scores are kept across runs: ``$EVOMERGE_RESPONDENTS_CACHE``, else
    ``$EVOMERGE_CACHE/respondents`` (``~/.cache/evomerge/respondents``)."""

    return Path(os.environ.get("EVOMERGE_RESPONDENTS_CACHE", cache_root() / "respondents"))


def checkpoint_fingerprint(model: str) -> str:
    """What identifies a checkpoint's content without reading it: its files' names, sizes
    and modification times (a local folder), else its name (a hub id, at its revision)."""
    path = Path(model)
    if not path.is_dir():
        return model
    files = sorted(p for p in path.iterdir() if p.is_file())
    return json.dumps([str(path.resolve()), *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])


def _content_key(recipe: Recipe) -> str:
    models = [*recipe.model_names, *([recipe.base_model] if recipe.base_model else [])]
    text = json.dumps([recipe.digest, *[checkpoint_fingerprint(m) for m in models]])
    return hashlib.sha256(text.encode()).hexdigest()


def collect_responses(
    evaluator: Evaluator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    merger: Merger,
    respondents: Sequence[Respondent],
    *,
    cache: Path | None = None,
    executor: ItemScorer | None = None,
    shared: Path | None = None,
    context: str = "",
    share: float = 1.0,
    seed: int = 0,
) -> Responses:
    """Score every respondent on its items (every search item, or with ``share`` < 1 its
    part of them: ``respondent_parts``), reusing what ``cache`` already holds; with an
    ``executor`` (``score_items``: Ray's workers, say), there, else in ``model``. An item a
    respondent was not scored on is NaN in the responses.

    ``shared``: a folder of scores kept across runs; a respondent found there (the same
    recipe over checkpoints with the same files, the same task, items and scorer
    settings, and the same ``context``: device and dtype) with its items scored is not
    scored again.
    """
    item_ids = tuple(it.id for it in evaluator.splits.search)
    parts = respondent_parts(respondents, len(item_ids), share, seed)
    wanted = {r.recipe.digest: [item_ids[j] for j in part] for r, part in zip(respondents, parts, strict=True)}
    # Scores are reused only for the same task, items and scorer settings.
    task = f"{evaluator.name}:{hashlib.sha256(repr(evaluator.scorer).encode()).hexdigest()[:16]}"
    stored = _read_cache(cache, task, item_ids)

    position = {item: j for j, item in enumerate(item_ids)}

    def missing(r: Respondent) -> list[str]:
        """The respondent's items that no stored entry has a score for."""
        entry = stored.get(r.recipe.digest)
        return [i for i in wanted[r.recipe.digest] if entry is None or entry["scores"][position[i]] is None]

    todo = [r for r in respondents if missing(r)]
    pool_file, pool = None, {}
    if shared is not None:
        key = hashlib.sha256(json.dumps([task, context, item_ids]).encode()).hexdigest()[:24]
        pool_file = shared / f"{key}.json"
        try:
            pool = _read_cache(pool_file, task, item_ids)
        except (OSError, EvomergeError) as err:  # a cache across runs: never a reason to stop this one
            log.warning("not reusing respondents' scores (%s); scoring them", err)
            pool_file, pool = None, {}
        keys = {r.recipe.digest: _content_key(r.recipe) for r in todo}
        found = [r for r in todo if keys[r.recipe.digest] in pool]
        for r in found:
            _merge_scores(stored, r, pool[keys[r.recipe.digest]]["scores"])
        if found:
            log.info("reusing %d respondents' scores from %s", sum(not missing(r) for r in found), pool_file)
            _write_cache(cache, task, item_ids, stored)
            todo = [r for r in todo if missing(r)]
    asked = [missing(r) for r in todo]
    if todo:
        log.info("scoring %d respondents on %d items each", len(todo), max(len(a) for a in asked))
    if executor is not None:
        results = executor.score_items(evaluator, [r.recipe for r in todo], asked)
    else:
        results = (
            (k, _score_here(evaluator, model, tokenizer, merger, r.recipe, asked[k])) for k, r in enumerate(todo)
        )
    with phase(f"scoring respondents ({evaluator.name})", len(todo)) as bar:
        for k, scores in results:
            entry = _merge_scores(stored, todo[k], [scores.get(i) for i in item_ids])
            _write_cache(cache, task, item_ids, stored)
            if pool_file is not None:
                pool[_content_key(todo[k].recipe)] = entry
                try:
                    _write_cache(pool_file, task, item_ids, pool)
                except OSError as err:  # the run's own copy is written: nothing is lost
                    log.warning("cannot keep respondents' scores for later runs in %s (%s)", pool_file, err)
                    pool_file = None
            bar.advance()
    rows = [[np.nan if v is None else v for v in stored[r.recipe.digest]["scores"]] for r in respondents]
    # Only each respondent's own items, even where the cache holds more (a run that scored
    # them all): the fit is the same whether the scores were reused or made here.
    return Responses(tuple(respondents), item_ids, np.asarray(rows, dtype=float)).only(parts)


def _merge_scores(stored: dict[str, dict], respondent: Respondent, scores: list[float | None]) -> dict:
    """Add ``scores`` (one per item, None where not scored) to what ``stored`` holds for
    ``respondent``; a score already held is kept."""
    old = stored.get(respondent.recipe.digest, {}).get("scores") or [None] * len(scores)
    entry = {"name": respondent.name, "scores": [o if o is not None else n for o, n in zip(old, scores, strict=True)]}
    stored[respondent.recipe.digest] = entry
    return entry


def _score_here(
    evaluator: Evaluator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    merger: Merger,
    recipe: Recipe,
    items: Sequence[str],
) -> dict[str, float]:
    merger.merge_into(model, recipe)
    return evaluator.score(model, tokenizer, list(items))


def _read_cache(cache: Path | None, task: str, item_ids: tuple[str, ...]) -> dict[str, dict]:
    if cache is None or not cache.exists():
        return {}
    try:
        data = json.loads(cache.read_text())
    except ValueError as err:
        raise EvomergeError(f"{cache} is not valid JSON ({err}); delete it to score the respondents again") from err
    if data.get("task") != task or tuple(data.get("item_ids", ())) != item_ids:
        log.warning("%s holds responses to other items or scorer settings; scoring again", cache)
        return {}
    return dict(data["respondents"])


def _write_cache(cache: Path | None, task: str, item_ids: tuple[str, ...], stored: Mapping[str, dict]) -> None:
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(cache, json.dumps({"task": task, "item_ids": list(item_ids), "respondents": stored}))
