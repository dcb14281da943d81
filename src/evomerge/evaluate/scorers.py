"""Scorers: a live model and items in, one score in [0, 1] per item out.

Per-item scores (not just a mean) are what fitness estimators and the test phase need.
Every scorer works on the model where it is (cpu or cuda, its own dtype) and never
saves or reloads it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..registry import Registry
from . import extract
from .decoding import Settled
from .forced import forced_completions
from .generation import batch_rows, engine_name, generate
from .prompts import PromptTemplate
from .tasks import Item, TaskDataError

if TYPE_CHECKING:
    from ..config import TaskConfig

Extractor = Literal["number", "exact", "regex", "choice"]


class Scorer(Protocol):
    """What the evaluator needs of a scorer: per-item scores, and which way is better."""

    @property
    def higher_is_better(self) -> bool: ...

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]
    ) -> list[float]: ...


class ScorerClass(Protocol):
    """A registered scorer: built from a ``tasks:`` entry, and able to say what an item lacks
    before a run starts. ``binary``: scores are right/wrong (0 or 1), which IRT estimators need."""

    binary: ClassVar[bool]

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> Scorer: ...

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None: ...


#: The scorers a task can name (``tasks[].scorer``).
SCORERS: Registry[type[ScorerClass]] = Registry("scorer")


def _needs_answer(item: Item) -> str | None:
    return None if item.answer else "an answer"


def _needs_choices(item: Item) -> str | None:
    return None if item.choices is not None and item.label is not None else "choices and a label"


@SCORERS.register("generation")
@dataclass(frozen=True)
class GenerationScorer:
    """Accuracy of a greedy answer: generation, then answer extraction and comparison with
    the reference.

    ``number``: the last number, compared by value; ``exact``: normalised exact match
    (``strict`` compares the raw stripped text); ``regex``: the first group of
    ``pattern``; ``choice``: a choice letter against the item's label. With ``language``
    (an ISO 639-1 code), a right answer also has to be in that language.
    """

    binary: ClassVar[bool] = True
    #: It generates text, so ``language`` can check what it generated.
    generates: ClassVar[bool] = True

    extractor: Extractor = "exact"
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    fewshot: tuple[Item, ...] = ()
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    batch_size: int | Literal["auto"] = 64
    pattern: str | None = None
    digit_map: Mapping[str, str] | None = None
    strict: bool = False
    language: str | None = None
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.extractor == "regex" and not self.pattern:
            raise TaskDataError("the regex extractor needs a pattern (tasks[].pattern)")
        if self.language is not None:
            from .language import check_language_code

            check_language_code(self.language)

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> GenerationScorer:
        return cls(
            task.extractor,
            prompt=prompt,
            max_new_tokens=task.max_new_tokens,
            batch_size=task.batch_size,
            pattern=task.pattern,
            strict=task.strict,
            language=task.language,
        )

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None:
        return _needs_choices(item) if task.extractor == "choice" else _needs_answer(item)

    def completions(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item], *, cut: bool = False
    ) -> list[str]:
        """The greedy answers to ``items``; ``cut``: an answer that can no longer be right
        stops there (``settled``), which changes no score and saves the steps."""
        prompts = [self.prompt.render(it, self.fewshot, tokenizer) for it in items]
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            stop=self.stop,
            settled=[self.settled(it) for it in items] if cut else None,
        )

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]) -> list[float]:
        """Strict exact match is checked in one forward over prompt + answer where that
        settles an item (``forced``); the rest are decoded, each cut once settled. Not with
        ``hf`` (the reference), nor in 16-bit: there one forward's argmax and step-by-step
        decoding's part on near ties (``bench/forced_check.py``: 6 of 64 items in bf16)."""
        completions: list[str | None] = [None] * len(items)
        wide = next(model.parameters()).dtype in (torch.float32, torch.float64)
        forced = self.extractor == "exact" and self.strict and wide and engine_name(model) != "hf"
        if forced and items:
            with contextlib.suppress(torch.OutOfMemoryError):  # decoding backs off (batch_size auto) or says so
                completions = forced_completions(
                    model,
                    tokenizer,
                    [self.prompt.render(it, self.fewshot, tokenizer) for it in items],
                    [it.answer or "" for it in items],
                    max_new_tokens=self.max_new_tokens,
                    stop=self.stop,
                    batch_size=batch_rows(model, self.batch_size),
                )
        rest = [k for k, c in enumerate(completions) if c is None]
        if rest:
            decoded = self.completions(model, tokenizer, [items[k] for k in rest], cut=True)
            for k, text in zip(rest, decoded, strict=True):
                completions[k] = text
        return [self.judge(cast(str, c), it) for c, it in zip(completions, items, strict=True)]

    def settled(self, item: Item) -> Settled | None:
        """A test that says a partial answer to ``item`` can no longer be right, where the
        extractor allows one: strict exact match (``extract.cannot_become``). Every other
        extractor reads the whole answer (the last number, a regex's first match), so None."""
        if self.extractor != "exact" or not self.strict:
            return None
        return functools.partial(extract.cannot_become, reference=(item.answer or "").strip())

    def judge(self, completion: str, item: Item) -> float:
        """1.0 if ``completion`` answers ``item`` (in ``language``, when set), else 0.0."""
        right = self._right(completion, item)
        if right and self.language is not None:
            from .language import detect_language

            return float(detect_language(completion) == self.language)
        return right

    def _right(self, completion: str, item: Item) -> float:
        if self.extractor == "choice":
            if item.choices is None or item.label is None:
                raise TaskDataError(f"item {item.id}: the choice extractor needs choices and a label")
            return float(extract.choice_letter(completion, len(item.choices)) == chr(ord("A") + item.label))
        reference = item.answer if item.answer is not None else ""
        if self.extractor == "number":
            got = extract.last_number(completion, self.digit_map)
            return float(got is not None and got == extract.last_number(reference, self.digit_map))
        if self.extractor == "regex":
            assert self.pattern is not None
            got = extract.regex_answer(completion, self.pattern)
            return float(got is not None and extract.normalize_text(got) == extract.normalize_text(reference))
        if self.strict:
            return float(completion.strip() == reference.strip())
        return float(extract.normalize_text(completion) == extract.normalize_text(reference))


@SCORERS.register("choice")
@dataclass(frozen=True)
class LoglikelihoodChoiceScorer:
    """Log-likelihood multiple choice: the choice most likely after the prompt (lm-eval's
    ``acc``); ``length_normalized`` divides by the choice's length in bytes (``acc_norm``)."""

    binary: ClassVar[bool] = True

    prompt: PromptTemplate = field(default_factory=lambda: PromptTemplate("{question}", separator="\n"))
    fewshot: tuple[Item, ...] = ()
    continuation: str = " {choice}"
    length_normalized: bool = False
    batch_size: int = 32
    higher_is_better: bool = True

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> LoglikelihoodChoiceScorer:
        return cls(prompt=prompt)

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None:
        return _needs_choices(item)

    @torch.inference_mode()
    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]) -> list[float]:
        pairs: list[tuple[str, str]] = []
        starts: list[int] = []
        for it in items:
            if it.choices is None or it.label is None:
                raise TaskDataError(f"item {it.id}: log-likelihood multiple choice needs choices and a label")
            context = self.prompt.render(it, self.fewshot, tokenizer)
            starts.append(len(pairs))
            pairs.extend((context, self.continuation.format(choice=c)) for c in it.choices)
        logprobs = continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size)
        scores = []
        for it, start in zip(items, starts, strict=True):
            assert it.choices is not None
            values = logprobs[start : start + len(it.choices)]
            if self.length_normalized:
                values = [
                    v / max(1, len(self.continuation.format(choice=c).encode()))
                    for v, c in zip(values, it.choices, strict=True)
                ]
            scores.append(float(max(range(len(values)), key=values.__getitem__) == it.label))
        return scores


@SCORERS.register("perplexity")
@dataclass(frozen=True)
class PerplexityScorer:
    """Perplexity: the mean negative log-likelihood per token of each item's text
    (``question``, plus ``answer`` when present). Lower is better: ``higher_is_better`` is
    False, and a fitness built on it minimises."""

    binary: ClassVar[bool] = False
    batch_size: int = 16
    higher_is_better: bool = False

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> PerplexityScorer:
        return cls()

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None:
        return None

    @torch.inference_mode()
    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]) -> list[float]:
        texts = [it.question + (it.answer or "") for it in items]
        pairs = [("", t) for t in texts]
        return [
            -lp / max(1, n)
            for lp, n in zip(
                continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size),
                _token_counts(tokenizer, texts),
                strict=True,
            )
        ]


@SCORERS.register("loss")
@dataclass(frozen=True)
class AnswerLossScorer:
    """Answer loss: the mean negative log-likelihood per token of each item's ``answer``
    after its prompt, the loss a fine-tune minimised, a smooth companion to accuracy on
    the same items (lower is better)."""

    binary: ClassVar[bool] = False
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    fewshot: tuple[Item, ...] = ()
    batch_size: int = 32
    higher_is_better: bool = False

    @classmethod
    def from_task(cls, task: TaskConfig, prompt: PromptTemplate) -> AnswerLossScorer:
        return cls(prompt=prompt, batch_size=64 if task.batch_size == "auto" else task.batch_size)

    @staticmethod
    def missing(item: Item, task: TaskConfig) -> str | None:
        return _needs_answer(item)

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item]) -> list[float]:
        missing = [it.id for it in items if not it.answer]
        if missing:
            raise TaskDataError(f"items {missing[:5]} have no answer; the loss scorer scores the answer's tokens")
        answers = [str(it.answer) for it in items]
        pairs = [(self.prompt.render(it, self.fewshot, tokenizer), a) for it, a in zip(items, answers, strict=True)]
        counts = _token_counts(tokenizer, answers)
        logprobs = continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size)
        return [-lp / max(1, n) for lp, n in zip(logprobs, counts, strict=True)]


def _token_counts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


@torch.inference_mode()
def continuation_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each ``(context, continuation)``.

    Context and continuation are tokenised separately and concatenated (as lm-eval does),
    so the continuation's tokens are exactly its own. The context starts with BOS when the
    tokenizer puts one before a prompt (Llama's does, GPT-2's does not), as generation
    sees it: without it, the demo's add specialist picked the right sum 47% of the time
    against 98% with it. Sequences are sorted by length and
    left-padded, so every continuation ends at the last position: the model computes
    logits for the last positions only (``logits_to_keep``), and the softmax runs over
    those, not over every prompt position times the vocabulary (gigabytes at 7B with long
    few-shot prompts).
    """
    device = next(model.parameters()).device
    encoded = []
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    for context, continuation in pairs:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        if bos is not None and (not ctx or adds_bos) and ctx[:1] != [bos]:
            ctx = [bos, *ctx]  # as the model is prompted to generate (lm-eval's add_bos_token=True)
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        encoded.append((ctx, cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    out: list[float] = [0.0] * len(pairs)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        longest = max(len(encoded[i][1]) for i in idx)
        kwargs = {"logits_to_keep": longest + 1} if keep_arg else {}
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **kwargs
        ).logits
        logprobs = F.log_softmax(logits[:, -(longest + 1) : -1].float(), dim=-1)  # predicts the last `longest`
        for row, i in enumerate(idx):
            cont = encoded[i][1]
            if not cont:
                continue
            targets = torch.tensor(cont, device=device)
            out[i] = float(logprobs[row, longest - len(cont) :].gather(-1, targets[:, None]).sum())
    return out
