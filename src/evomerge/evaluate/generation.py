"""Batched greedy generation over a model that stays in memory.

Prompts are sorted by length before batching so that a batch holds prompts of
similar length and little padding; results come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    stop: Sequence[str] = ("\n",),
) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded, KV cache), cut at the first stop."""
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs a tokenizer with padding_side='left'")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts, strict=True):
            for s in stop:
                text = text.split(s, 1)[0]
            out[i] = text
    return out
