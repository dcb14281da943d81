"""Batched greedy generation over a model that stays in memory, by one of three engines
(``GENERATION_ENGINES``), and the choice among them.

- ``eager``: evomerge's own decoding loop (``decoding``).
- ``compiled``: the same loop with a static cache and a compiled step (``compiled``).
- ``hf``: transformers' ``generate``, the reference the others are tested against.

``auto`` is ``compiled`` on CUDA (falling back to ``eager``, with the reason logged, if
compiling fails) and ``eager`` elsewhere: on a CPU a step is compute-bound, compiling
gains little and costs a compile per shape.

Every engine is greedy, sorts prompts by length, cuts each completion at its first stop
string, and returns results in the caller's order. ``batch_size="auto"`` halves on
out-of-memory and keeps the size it found for the model for the rest of the run.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvomergeError
from ..registry import Registry
from .compiled import CompiledEngine
from .decoding import EagerEngine, GenerationEngine, Settled, StopCheck, is_oom, left_padded, pad_id

log = logging.getLogger(__name__)

#: ``auto`` starts here and halves on out-of-memory errors.
AUTO_BATCH_START = 64

#: The engines ``output.generation`` can name (besides ``auto``).
GENERATION_ENGINES: Registry[type[GenerationEngine]] = Registry("generation engine")
GENERATION_ENGINES.register("eager", EagerEngine)
GENERATION_ENGINES.register("compiled", CompiledEngine)


@contextlib.contextmanager
def generation_ready(tokenizer: PreTrainedTokenizerBase) -> Iterator[PreTrainedTokenizerBase]:
    """Left padding, and a pad token (the EOS token) when the tokenizer has none; restored after."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    if pad is None:
        if tokenizer.eos_token is None:
            raise EvomergeError("the tokenizer has neither a pad token nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


#: The batch size ``auto`` found for each live model, kept for the rest of the run.
_found_batch: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int | Literal["auto"] = 64,
    stop: Sequence[str] = ("\n",),
    engine: str | None = None,
    settled: Sequence[Settled | None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``, cut at the first stop sequence.

    ``settled``: per prompt, a test on its completion so far that says its score can no
    longer change (e.g. no longer a prefix of the one right answer): the row stops there,
    so that completion is cut short (``eager`` and ``compiled``; ``hf`` decodes on).

    ``batch_size="auto"`` starts at ``AUTO_BATCH_START`` (or the size found before for
    this model) and halves whenever a batch runs out of memory, keeping the smaller size.
    ``engine``: default, the one ``use_engine`` set for the model, else ``auto``.
    """
    decoder = resolve_engine(engine or engine_name(model), model)
    stops = StopCheck(tokenizer, stop)
    with generation_ready(tokenizer):
        encoded = tokenizer(list(prompts))["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    size = batch_rows(model, batch_size)
    start = 0
    while start < len(order):
        idx = order[start : start + size]
        try:
            with generation_ready(tokenizer):
                check = StopCheck(tokenizer, stop, [settled[i] for i in idx]) if settled else stops
                answers = decoder.decode(model, [encoded[i] for i in idx], max_new_tokens, check)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if batch_size != "auto" or size == 1 or not is_oom(err):
                raise
            size //= 2
            _found_batch[model] = size
            log.info("out of memory at batch %d; retrying at %d", size * 2, size)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True)  # as transformers decodes
        for i, text in zip(idx, texts, strict=True):
            out[i] = stops.cut(text)
        start += len(idx)
    return out


def batch_rows(model: torch.nn.Module, batch_size: int | Literal["auto"]) -> int:
    """The rows of a batch: ``batch_size``, or for ``auto`` the size found for ``model`` so far."""
    return _found_batch.get(model, AUTO_BATCH_START) if batch_size == "auto" else batch_size


@GENERATION_ENGINES.register("hf")
class HFEngine:
    """transformers' ``generate`` (greedy, ``DynamicCache``): the reference. Rows stop at
    EOS only; stop strings are cut after generation."""

    @torch.inference_mode()
    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        device = next(model.parameters()).device
        pad = pad_id(stop)
        ids, mask, _ = left_padded(prompts, pad, max(len(p) for p in prompts), device)
        eos = sorted(stop.eos) or None
        gen = cast(Any, model).generate(  # transformers' annotations type generate() as a tensor
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        out = []
        for row in gen[:, ids.shape[1] :].tolist():
            answer = []
            for token in row:
                if token in stop.eos:
                    break
                answer.append(token)
            out.append(answer)
        return out


#: Engines that failed on a model (``auto`` then uses ``eager`` for it), with the reason.
_failed: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


class _Fallback:
    """``compiled`` that switches to ``eager`` for good if compiling fails (``auto`` on CUDA)."""

    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        if model not in _failed:
            try:
                return CompiledEngine().decode(model, prompts, max_new_tokens, stop)
            except Exception as err:  # any failure to compile or run compiled: decode eagerly instead
                if is_oom(err):
                    raise
                _failed[model] = f"{type(err).__name__}: {err}"
                log.warning("compiled generation failed (%s); generating with the eager engine", _failed[model])
        return EagerEngine().decode(model, prompts, max_new_tokens, stop)


_logged: set[tuple[str, str]] = set()
#: The engine each live model generates with (``use_engine``), for the rest of the run.
_chosen: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def engine_name(model: torch.nn.Module) -> str:
    """The engine ``model`` generates with when none is named: ``use_engine``'s, or ``auto``."""
    return _chosen.get(model, "auto")


def use_engine(model: torch.nn.Module, name: str) -> None:
    """Generate with engine ``name`` (``output.generation``) whenever ``model`` generates and
    no engine is named: set once where a run loads its live model."""
    resolve_engine(name, model)  # an unknown name fails here, not mid-run
    _chosen[model] = name


def resolve_engine(name: str, model: torch.nn.Module, *, device: str | None = None) -> GenerationEngine:
    """The engine ``name`` means for ``model`` (``auto``: by the model's device type, or
    ``device``; the choice logged once)."""
    if name != "auto":
        return GENERATION_ENGINES[name]()
    device = device or next(model.parameters()).device.type
    chosen, reason = (
        ("compiled", "CUDA: a compiled step with CUDA graphs")
        if device == "cuda"
        else ("eager", f"{device}: a decoding step is compute-bound, compiling gains little")
    )
    if (device, chosen) not in _logged:
        _logged.add((device, chosen))
        log.info("generation engine: %s (%s)", chosen, reason)
    return _Fallback() if chosen == "compiled" else GENERATION_ENGINES[chosen]()


def engine_names() -> list[str]:
    """What ``output.generation`` accepts."""
    return ["auto", *GENERATION_ENGINES.names()]
