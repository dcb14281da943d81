"""The ``compiled`` engine: the eager loop's steps with transformers' ``StaticCache`` and
the decoding step compiled by ``torch.compile`` (CUDA graphs on CUDA: ``mode="reduce-overhead"``).

The cache is sized to the longest prompt bucket seen so far plus the new tokens, so the
step's shape changes only when a longer bucket or another batch size comes: it is compiled
once and replayed for every candidate (``merge_into`` overwrites the parameters in place
and the graph reads the new weights). A short batch is filled up with copies of its last
prompt, and finished rows keep their slot (cheap where a step is launch-bound).
"""

from __future__ import annotations

import math
import weakref
from typing import ClassVar

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from .decoding import Forward, StopCheck, is_oom, left_padded, num_layers, pad_id

#: ``compiled`` sizes its cache for prompts up to the next of these lengths (then multiples of the last).
PROMPT_BUCKETS = (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


class _Compiled:
    """A model's compiled decoding step and its one static cache. The cache is as long as
    the longest prompt bucket seen plus the new tokens, so shorter prompts reuse it (and
    the step compiled for its shape); one cache at a time bounds the memory (at 7B, batch
    32 and 1,280 positions, a cache is 5 GiB)."""

    def __init__(self, model: PreTrainedModel) -> None:
        forward = Forward(model)
        device = next(model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.step = torch.compile(forward.__call__, mode=mode, dynamic=False, fullgraph=False)
        self.forward = forward
        self._cache: StaticCache | None = None
        self.shape = (0, 0)  # (rows, positions) of the cache

    def cache(self, model: PreTrainedModel, rows: int, length: int) -> StaticCache:
        """A zeroed cache of ``rows`` rows and at least ``length`` positions, one slot per
        layer the model has now (a layer-path model's count changes with its path)."""
        stale = self._cache is not None and len(self._cache.layers) != num_layers(model)
        if self._cache is None or stale or self.shape[0] != rows or self.shape[1] < length:
            length = max(length, self.shape[1]) if self.shape[0] == rows else length
            self._cache = None  # freed before the next one is allocated
            self._cache, self.shape = StaticCache(config=model.config, max_cache_len=length), (rows, length)
        self._cache.reset()
        return self._cache


def prompt_bucket(length: int) -> int:
    """The padded prompt length of a prompt of ``length`` tokens (``compiled``)."""
    for bucket in PROMPT_BUCKETS:
        if length <= bucket:
            return bucket
    last = PROMPT_BUCKETS[-1]
    return last * math.ceil(length / last)


class CompiledEngine:
    """Static cache, compiled decoding step (CUDA graphs on CUDA), fixed shapes per
    (batch size, prompt bucket), each compiled once per model and reused across candidates."""

    _state: ClassVar[weakref.WeakKeyDictionary[torch.nn.Module, _Compiled]] = weakref.WeakKeyDictionary()
    #: Rows of the largest batch per model: shorter batches are filled up to it (one shape).
    _rows: ClassVar[weakref.WeakKeyDictionary[torch.nn.Module, int]] = weakref.WeakKeyDictionary()

    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        state = self._state.get(model)
        if state is None:
            state = self._state[model] = _Compiled(model)
        rows = self._rows.get(model, 0)
        if len(prompts) > rows:
            rows = self._rows[model] = len(prompts)
        try:
            # no_grad, not inference mode: CUDA graph trees mishandle inference tensors (pytorch#135892)
            with torch.inference_mode(False), torch.no_grad():
                return self._decode(model, state, rows, prompts, max_new_tokens, stop)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if is_oom(err):  # ``auto`` retries with fewer prompts: the next batch sets the size
                self._rows.pop(model, None)
            raise

    def _decode(
        self,
        model: PreTrainedModel,
        state: _Compiled,
        rows: int,
        prompts: list[list[int]],
        max_new_tokens: int,
        stop: StopCheck,
    ) -> list[list[int]]:
        filled = prompts + [prompts[-1]] * (rows - len(prompts))
        device = next(model.parameters()).device
        width = max(len(p) for p in filled)  # the prefill runs eagerly: no need to pad it further
        ids, mask, positions = left_padded(filled, pad_id(stop), width, device)
        cache = state.cache(model, rows, prompt_bucket(width) + max_new_tokens)
        full_mask = torch.cat([mask, mask.new_ones(rows, state.shape[1] - width)], dim=1)
        answers: list[list[int]] = [[] for _ in filled]
        done = [False] * len(prompts) + [True] * (rows - len(prompts))
        step = state.forward(ids, full_mask, positions, cache)  # the prefill: eager, any length
        last = positions[:, -1:]
        for n in range(max_new_tokens):
            for row, token in enumerate(step.tolist()):
                if done[row]:
                    continue
                if token in stop.eos:
                    done[row] = True
                else:
                    answers[row].append(token)
            live = [r for r in range(rows) if not done[r]]
            for r, ended in zip(live, stop.ended([answers[r] for r in live], live), strict=True):
                done[r] = ended
            if all(done) or n == max_new_tokens - 1:
                break
            last = last + 1
            step = state.step(step[:, None].clone(), full_mask, last, cache).clone()
        return answers[: len(prompts)]
