"""The eager decoding loop, and what every generation engine shares: the engine contract,
stop strings, left padding, the model's forward with a cache, the in-place KV buffer.

``eager`` prefills prompts of similar length together; the KV cache is written in place
into a buffer sized for the whole answer (transformers' ``DynamicCache`` concatenates,
which copies the cache at every step: half of a step's time at batch 128 on the demo
family); stop strings end a row as soon as it writes them, and so does a row's ``settled``
test (its answer can no longer be right); a finished row leaves the batch, so one long
answer does not keep the rest decoding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer


class GenerationEngine(Protocol):
    """Greedy decoding of one batch of tokenised prompts."""

    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]: ...


#: A test on a row's answer so far: True once its score can no longer change (``generate``'s ``settled``).
Settled = Callable[[str], bool]


class StopCheck:
    """Which rows of a batch have ended: an EOS token, a stop string in the decoded answer,
    or, where the row has one, its ``settled`` test (the answer can no longer be right).

    ``settled`` runs only where decoding is prefix-stable (no ``clean_up_tokenization_spaces``,
    which rewrites text already decoded when the next token comes: ``a '`` then ``a's``).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], settled: Sequence[Settled | None] = ()
    ) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        eos = tokenizer.eos_token_id
        self.eos: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        stable = not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.settled: tuple[Settled | None, ...] = tuple(settled) if stable and any(settled) else ()

    def ended(self, answers: Sequence[list[int]], rows: Sequence[int] | None = None) -> list[bool]:
        """For each answer (of batch row ``rows[k]``; default, row ``k``): has it ended?"""
        if not self.stop and not self.settled:
            return [False] * len(answers)
        rows = range(len(answers)) if rows is None else rows
        out = []
        for row, text in zip(rows, self.decode(answers), strict=True):
            settled = self.settled[row] if self.settled else None
            out.append(any(s in text for s in self.stop) or (settled is not None and settled(text)))
        return out

    def decode(self, answers: Sequence[list[int]]) -> list[str]:
        """The answers' texts; through the Rust tokenizer directly where the text is the
        same (``batch_decode`` spends more time checking its input than decoding)."""
        fast = getattr(self.tokenizer, "_tokenizer", None)
        if fast is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            return list(fast.decode_batch(list(answers), skip_special_tokens=True))
        return list(self.tokenizer.batch_decode(list(answers), skip_special_tokens=True))

    def cut(self, text: str) -> str:
        for s in self.stop:
            text = text.split(s, 1)[0]
        return text


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def left_padded(
    prompts: list[list[int]], pad: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids of left-padded prompts ``width`` wide."""
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def pad_id(stop: StopCheck) -> int:
    pad = stop.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


class Forward:
    """The model's forward with a cache, by the argument name this transformers uses, and
    logits for the last position only where the model can skip the others."""

    def __init__(self, model: PreTrainedModel) -> None:
        params = inspect.signature(model.forward).parameters
        self.model = model
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.last_only = "logits_to_keep" in params

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Cache) -> torch.Tensor:
        """The next token of every row (greedy)."""
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if self.last_only:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].argmax(-1)


class _BufferedLayer(DynamicLayer):
    """A cache layer that writes keys and values in place into a buffer with room for the
    whole answer and hands out views of its filled part: no copy of the cache per step.
    ``batch_select_indices`` (rows leaving the batch) copies the buffer once."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, rows: int = 0) -> None:
        self.device = key_states.device
        shape = (rows or key_states.shape[0], key_states.shape[1], self.capacity)
        # zeros, not garbage: a masked-out position still multiplies its (zero) attention weight
        self._keys = key_states.new_zeros((*shape, key_states.shape[-1]))
        self._values = value_states.new_zeros((*shape, value_states.shape[-1]))
        self.is_initialized = True

    def place(self, rows: int, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
        """The prefilled ``keys`` and ``values`` of rows ``index`` (of ``rows``), right-aligned
        at ``width``: where one prefill over all rows, left-padded to ``width``, puts them."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values, rows)
        self._keys[index, :, width - keys.shape[-2] : width] = keys
        self._values[index, :, width - values.shape[-2] : width] = values
        self.length = width
        self.keys, self.values = self._keys[:, :, :width], self._values[:, :, :width]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config(decoder=True).num_hidden_layers)


class EagerEngine:
    """evomerge's decoding loop: in-place cache, per-step stop strings, rows leave when done."""

    @torch.inference_mode()
    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        forward = Forward(model)
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        _, mask, positions = left_padded(prompts, pad_id(stop), width, device)
        cache = Cache(layers=[_BufferedLayer(width + max_new_tokens) for _ in range(num_layers(model))])
        answers: list[list[int]] = [[] for _ in prompts]
        rows = list(range(len(prompts)))  # the answer each batch row writes
        step = self._prefill(forward, model, prompts, pad_id(stop), width, cache)
        last = positions[:, -1]
        for n in range(max_new_tokens):
            ended = []
            for row, token in zip(rows, step.tolist(), strict=True):
                if token in stop.eos:
                    ended.append(True)
                else:
                    answers[row].append(token)
                    ended.append(False)
            by_text = stop.ended([answers[r] for r in rows], rows)
            keep = [k for k, (e, t) in enumerate(zip(ended, by_text, strict=True)) if not (e or t)]
            if not keep or n == max_new_tokens - 1:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, step, last = mask[index], step[index], last[index]
                rows = [rows[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            last = last + 1
            step = forward(step[:, None], mask, last[:, None], cache)
        return answers

    @staticmethod
    def _prefill(
        forward: Forward, model: PreTrainedModel, prompts: list[list[int]], pad: int, width: int, cache: Cache
    ) -> torch.Tensor:
        """The first token of every row. Prompts of similar length are prefilled together,
        each group padded to its own longest (``length_groups``), and their keys and values
        placed in the shared cache: a batch of 5- to 25-token prompts no longer pays a
        prefill of 25 tokens per row (half the cost of a demo candidate's 90 anchors)."""
        device = next(model.parameters()).device
        lengths = [len(p) for p in prompts]
        groups = length_groups(lengths)
        if sum(len(g) * max(lengths[i] for i in g) for g in groups) > GROUP_SAVING * len(prompts) * width:
            groups = [list(range(len(prompts)))]  # similar lengths already: one prefill, no copies
        first = torch.empty(len(prompts), dtype=torch.long, device=device)
        for group in groups:
            own = max(len(prompts[i]) for i in group)
            ids, mask, positions = left_padded([prompts[i] for i in group], pad, own, device)
            part = Cache(layers=[_BufferedLayer(own) for _ in range(num_layers(model))])
            index = torch.tensor(group, device=device)
            first[index] = forward(ids, mask, positions, part)
            for shared, layer in zip(cache.layers, part.layers, strict=True):
                own_keys, own_values = cast(_BufferedLayer, layer).keys, cast(_BufferedLayer, layer).values
                assert own_keys is not None and own_values is not None  # the forward filled them
                cast(_BufferedLayer, shared).place(len(prompts), index, own_keys, own_values, width)
        return first


#: A prefill group ends where a prompt is this much longer than the group's shortest.
GROUP_GROWTH = 1.5
#: ... and holds at least this many prompts (each group is a forward pass of its own).
GROUP_MIN = 8
#: Groups are used only if they leave at most this share of one padded prefill's slots.
GROUP_SAVING = 0.75


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Row indices grouped by prompt length, shortest first: a new group starts where a
    prompt is ``GROUP_GROWTH`` times the group's shortest, once the group has ``GROUP_MIN``."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and (len(groups[-1]) < GROUP_MIN or lengths[i] <= GROUP_GROWTH * lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) > 1 and len(groups[-1]) < GROUP_MIN:  # a short last group joins the one before
        groups[-2].extend(groups.pop())
    return groups
