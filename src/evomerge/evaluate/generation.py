"""Batched greedy generation over a model that stays in memory.

Prompts are sorted by length before batching so that a batch holds prompts of
similar length and little padding; results come back in the caller's order.
Generation runs on the model's device and in its dtype, left-padded, with the KV cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvomergeError

log = logging.getLogger(__name__)

#: ``auto`` starts here and halves on out-of-memory errors.
AUTO_BATCH_START = 64


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


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int | Literal["auto"] = 64,
    stop: Sequence[str] = ("\n",),
) -> list[str]:
    """Greedy completions of ``prompts``, cut at the first stop sequence.

    ``batch_size="auto"`` starts at ``AUTO_BATCH_START`` and halves whenever a batch runs
    out of memory, keeping the smaller size for the rest.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    size = AUTO_BATCH_START if batch_size == "auto" else batch_size
    start = 0
    with generation_ready(tokenizer):
        while start < len(order):
            idx = order[start : start + size]
            try:
                texts = _generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, device)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if batch_size != "auto" or size == 1 or not _is_oom(err):
                    raise
                size //= 2
                log.info("out of memory at batch %d; retrying at %d", size * 2, size)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for i, text in zip(idx, texts, strict=True):
                for s in stop:
                    text = text.split(s, 1)[0]
                out[i] = text
            start += len(idx)
    return out


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    gen = cast(Any, model).generate(  # transformers' annotations type generate() as a tensor
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
