"""Strict exact-match answers checked in one forward pass over prompt + answer, not decoded.

Greedy decoding writes an item's reference answer exactly when, fed the prompt and the
answer's tokens, the model's argmax at every answer position is the answer's next token
(lm-eval's ``is_greedy``), and the argmax after the answer ends the row (EOS, a stop
string). Where the argmax leaves the answer's tokens, the text so far is what decoding
would have written up to there: if it can no longer be right (``extract.cannot_become``)
or has ended, that is the row's (cut) completion. One forward replaces a decoding step
per token, and no row waits for the batch's longest answer.

The reference is tried as written, then after a space (a model prompted ``Answer:``
writes `` 42``, whose tokens are not those of ``42``). A row that neither spelling settles
(the argmax leaves the answer's tokens with a text that may still be right: another
tokenisation of the same text, more leading spaces) gets ``None`` and is decoded by the
caller as before, so every completion judged is greedy decoding's, cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .decoding import StopCheck, left_padded, length_groups, pad_id
from .extract import cannot_become
from .generation import generation_ready

#: An item to check: its index, its prompt's token ids, its answer's.
_Row = tuple[int, list[int], list[int]]


def forced_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str],
    batch_size: int,
) -> list[str | None]:
    """Per prompt, the completion greedy decoding gives (cut at a stop string, or where it
    can no longer strip to its reference), or None where one forward cannot tell."""
    stops = StopCheck(tokenizer, stop)
    out: list[str | None] = [None] * len(prompts)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return out  # decoded text is rewritten as tokens come: a partial text is no guide
    for lead in ("", " "):
        todo = [i for i, c in enumerate(out) if c is None and not (lead and references[i][:1].isspace())]
        found = _check(
            model, stops, [prompts[i] for i in todo], [lead + references[i] for i in todo], max_new_tokens, batch_size
        )
        for i, completion in zip(todo, found, strict=True):
            out[i] = completion
    return out


@torch.inference_mode()
def _check(
    model: PreTrainedModel,
    stops: StopCheck,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str | None]:
    """``forced_completions`` for one spelling of each reference (``answers``)."""
    out: list[str | None] = [None] * len(prompts)
    if not prompts:
        return out
    tokenizer = stops.tokenizer
    with generation_ready(tokenizer):
        encoded = tokenizer(list(prompts))["input_ids"]
        joint = tokenizer([p + a for p, a in zip(prompts, answers, strict=True)])["input_ids"]
    rows: list[_Row] = []
    for i, (prompt, whole) in enumerate(zip(encoded, joint, strict=True)):
        answer = whole[len(prompt) :][:max_new_tokens]
        checkable = whole[: len(prompt)] == prompt and answer and not stops.eos.intersection(answer)
        if checkable and not any(s in answers[i] for s in stops.stop):
            rows.append((i, prompt, answer))
    device = next(model.parameters()).device
    last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
    for batch in _batches(rows, batch_size):
        seqs = [prompt + answer for _, prompt, answer in batch]
        ids, mask, positions = left_padded(seqs, pad_id(stops), max(len(s) for s in seqs), device)
        keep = max(len(answer) for _, _, answer in batch) + 1  # each answer position and the one after
        kwargs = {"logits_to_keep": keep} if last_only else {}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **kwargs).logits
        greedy = logits[:, -keep:].argmax(-1)
        for (i, _, answer), row in zip(batch, greedy.tolist(), strict=True):
            out[i] = _settle(row[keep - len(answer) - 1 :], answer, answers[i], max_new_tokens, stops)
    return out


def _batches(rows: list[_Row], batch_size: int) -> list[list[_Row]]:
    """Rows of similar length together (``length_groups``, as the eager prefill groups
    prompts), at most ``batch_size`` a batch: each forward runs as wide as its longest row."""
    lengths = [len(prompt) + len(answer) for _, prompt, answer in rows]
    return [
        [rows[k] for k in group[start : start + batch_size]]
        for group in length_groups(lengths)
        for start in range(0, len(group), batch_size)
    ]


def _settle(greedy: list[int], answer: list[int], reference: str, max_new_tokens: int, stops: StopCheck) -> str | None:
    """The completion of a row whose argmax tokens after the prompt are ``greedy`` (one per
    answer position, then one after), or None where decoding must go on to tell."""

    def text_of(ids: list[int]) -> str:
        return str(stops.tokenizer.decode(ids, skip_special_tokens=True))  # as ``generate`` decodes

    j = next((k for k, (g, a) in enumerate(zip(greedy, answer, strict=False)) if g != a), len(answer))
    if j == max_new_tokens:  # the answer fills the budget: decoding stops after it
        return stops.cut(text_of(answer))
    token = greedy[j]
    if token in stops.eos:
        return stops.cut(text_of(answer[:j]))
    text = text_of([*answer[:j], token])
    if any(s in text for s in stops.stop) or j + 1 == max_new_tokens or cannot_become(text, reference.strip()):
        return stops.cut(text)
    return None
