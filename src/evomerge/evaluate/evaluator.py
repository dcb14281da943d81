"""One objective's evaluation: its items split three ways, and a scorer.

The search scores ``search`` items only (all of them, or an anchor subset drawn from
them); ``test`` items are scored once, after the search, through ``score_test``. The
few-shot items go into prompts and are never scored. Keeping that rule here, not in
every caller, is what makes a held-out score trustworthy.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvomergeError
from .prompts import PromptTemplate
from .scorers import SCORERS, Scorer
from .tasks import Columns, Item, Splits, TaskDataError, load_items, split_items

if TYPE_CHECKING:
    from ..config import TaskConfig


class HeldOutError(EvomergeError):
    """A search asked for a score on items it must not see."""


class Evaluator:
    def __init__(self, name: str, splits: Splits, scorer: Scorer) -> None:
        self.name = name
        self.splits = splits
        if splits.fewshot and dataclasses.is_dataclass(scorer) and hasattr(scorer, "fewshot"):
            scorer = dataclasses.replace(scorer, fewshot=tuple(splits.fewshot))
        self.scorer = scorer
        self._search = {it.id: it for it in splits.search}

    @property
    def higher_is_better(self) -> bool:
        return self.scorer.higher_is_better

    def anchors(self, k: int, seed: int) -> list[str]:
        """``k`` search item ids, drawn reproducibly from ``search`` and nowhere else."""
        ids = sorted(self._search)
        if not 0 < k <= len(ids):
            raise HeldOutError(f"{self.name}: cannot draw {k} anchors from {len(ids)} search items")
        return sorted(random.Random(seed).sample(ids, k))

    def score(
        self,
        model: PreTrainedModel | torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        ids: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Per-item scores on search items (all, or ``ids``); test and few-shot ids are refused."""
        wanted = list(self._search) if ids is None else list(ids)
        outside = [i for i in wanted if i not in self._search]
        if outside:
            raise HeldOutError(
                f"{self.name}: items {outside[:5]} are not search items (test or few-shot items are never "
                "scored during a search)"
            )
        items = [self._search[i] for i in wanted]
        return dict(zip(wanted, self.scorer.score(_causal_lm(model), tokenizer, items), strict=True))

    def score_test(
        self, model: PreTrainedModel | torch.nn.Module, tokenizer: PreTrainedTokenizerBase
    ) -> dict[str, float]:
        """Per-item scores on the held-out test items: once, for the final model."""
        items = list(self.splits.test)
        return dict(zip([it.id for it in items], self.scorer.score(_causal_lm(model), tokenizer, items), strict=True))

    def __repr__(self) -> str:
        s = self.splits
        return f"Evaluator({self.name!r}, fewshot={len(s.fewshot)}, search={len(s.search)}, test={len(s.test)})"


def _causal_lm(model: PreTrainedModel | torch.nn.Module) -> PreTrainedModel:
    """The live model, which ``load_live_model`` made with ``AutoModelForCausalLM``, as such."""
    return cast(PreTrainedModel, model)


def evaluator_for(task: TaskConfig) -> Evaluator:
    """The evaluator a ``tasks:`` entry of the config describes."""
    if task.lm_eval is not None:
        return _lmeval_evaluator(task)
    columns = Columns(**task.columns)
    if task.data is not None:
        splits = split_items(
            load_items(task.data, columns), seed=task.seed, test_fraction=task.test_fraction, fewshot=task.fewshot
        )
    else:
        assert task.search is not None and task.test is not None
        search = load_items(task.search, columns, id_prefix="search:")
        test = load_items(task.test, columns, id_prefix="test:")
        shared = {it.id for it in search} & {it.id for it in test}
        if shared:
            raise TaskDataError(
                f"task {task.name}: ids {sorted(shared)[:5]} are in both the search and the test file; "
                "a held-out score needs disjoint items"
            )
        order = random.Random(task.seed).sample(search, len(search))
        shots = sorted(order[: task.fewshot], key=lambda it: it.id)
        shot_ids = {it.id for it in shots}
        rest = [it for it in search if it.id not in shot_ids]
        splits = Splits(tuple(shots), tuple(rest), tuple(test))
    scorer_class = SCORERS.get(task.scorer)
    _check_items(task, splits, scorer_class.missing)
    return Evaluator(task.name, splits, scorer_class.from_task(task, PromptTemplate(task.template)))


def _check_items(task: TaskConfig, splits: Splits, missing: Callable[[Item, TaskConfig], str | None]) -> None:
    """What the scorer needs of every item, checked when the task is loaded, not mid-run."""
    items = [*splits.fewshot, *splits.search, *splits.test]
    lacking = [(it.id, what) for it in items if (what := missing(it, task)) is not None]
    if lacking:
        source = task.data or f"{task.search} / {task.test}"
        raise TaskDataError(
            f"task {task.name} ({source}): {len(lacking)} item(s) without {lacking[0][1]}, "
            f"e.g. {[i for i, _ in lacking[:3]]}; scorer {task.scorer} (extractor {task.extractor}) needs it"
        )


def _lmeval_evaluator(task: TaskConfig) -> Evaluator:
    """An lm-eval task's documents, split into search and test; lm-eval does its own few-shot."""
    from .lmeval import LMEvalScorer

    source: str = task.lm_eval  # type: ignore[assignment]  # checked by the caller; demo: paths resolved by the loader
    batch = 16 if task.batch_size == "auto" else task.batch_size
    scorer = LMEvalScorer(source, metric=task.metric, batch_size=batch)
    splits = split_items(scorer.items(), seed=task.seed, test_fraction=task.test_fraction)
    return Evaluator(task.name, splits, scorer)
