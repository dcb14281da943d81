"""Batched greedy generation over a model that stays in memory, by one of three engines.

- ``eager``: evomerge's own decoding loop. Prompts of similar length are prefilled
  together; the KV cache is written in place into a buffer sized for the whole answer
  (transformers' ``DynamicCache`` concatenates, which copies the cache at every step:
  half of a step's time at batch 128 on the demo family); stop strings end a row as
  soon as it writes them, and a finished row leaves the batch, so one long answer does
  not keep the rest decoding.
- ``compiled``: the same loop with transformers' ``StaticCache`` and the decoding step
  compiled by ``torch.compile`` (CUDA graphs on CUDA: ``mode="reduce-overhead"``). The
  cache is sized to the longest prompt bucket seen so far plus the new tokens, so the
  step's shape changes only when a longer bucket or another batch size comes: it is
  compiled once and replayed for every candidate (``merge_into`` overwrites the
  parameters in place and the graph reads the new weights). A short batch is filled up
  with copies of its last prompt, and finished rows keep their slot (cheap where a step
  is launch-bound).
- ``hf``: transformers' ``generate``, the reference the others are tested against.

``auto`` is ``compiled`` on CUDA (falling back to ``eager``, with the reason logged, if
compiling fails) and ``eager`` elsewhere: on a CPU a step is compute-bound, compiling
gains little and costs a compile per shape.

Every engine is greedy, sorts prompts by length, cuts each completion at its first stop
string, and returns results in the caller's order. ``batch_size="auto"`` halves on out-of-memory and keeps the size it
found for the model for the rest of the run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal, Protocol, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer, StaticCache

from ..errors import EvomergeError
from ..registry import Registry

log = logging.getLogger(__name__)

#: ``auto`` starts here and halves on out-of-memory errors.
AUTO_BATCH_START = 64
#: ``compiled`` sizes its cache for prompts up to the next of these lengths (then multiples of the last).
PROMPT_BUCKETS = (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)

#: Token ids per row in, generated token ids per row out (EOS and what follows excluded).
Decode = Callable[[PreTrainedModel, list[list[int]], int, "StopCheck"], list[list[int]]]


class GenerationEngine(Protocol):
    """Greedy decoding of one batch of tokenised prompts."""

    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]: ...


#: The engines ``output.generation`` can name (besides ``auto``).
GENERATION_ENGINES: Registry[type[GenerationEngine]] = Registry("generation engine")


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


class StopCheck:
    """Which rows have ended: an EOS token, or a stop string in the decoded answer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        eos = tokenizer.eos_token_id
        self.eos: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def ended(self, answers: Sequence[list[int]]) -> list[bool]:
        if not self.stop:
            return [False] * len(answers)
        return [any(s in t for s in self.stop) for t in self.decode(answers)]

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


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


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
) -> list[str]:
    """Greedy completions of ``prompts``, cut at the first stop sequence.

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
    size = _found_batch.get(model, AUTO_BATCH_START) if batch_size == "auto" else batch_size
    start = 0
    while start < len(order):
        idx = order[start : start + size]
        try:
            with generation_ready(tokenizer):
                answers = decoder.decode(model, [encoded[i] for i in idx], max_new_tokens, stops)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if batch_size != "auto" or size == 1 or not _is_oom(err):
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


def _left_padded(
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


def _pad_id(stop: StopCheck) -> int:
    pad = stop.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


class _Forward:
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


def _layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config(decoder=True).num_hidden_layers)


@GENERATION_ENGINES.register("eager")
class EagerEngine:
    """evomerge's decoding loop: in-place cache, per-step stop strings, rows leave when done."""

    @torch.inference_mode()
    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        forward = _Forward(model)
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        _, mask, positions = _left_padded(prompts, _pad_id(stop), width, device)
        cache = Cache(layers=[_BufferedLayer(width + max_new_tokens) for _ in range(_layers(model))])
        answers: list[list[int]] = [[] for _ in prompts]
        rows = list(range(len(prompts)))  # the answer each batch row writes
        step = self._prefill(forward, model, prompts, _pad_id(stop), width, cache)
        last = positions[:, -1]
        for n in range(max_new_tokens):
            ended = []
            for row, token in zip(rows, step.tolist(), strict=True):
                if token in stop.eos:
                    ended.append(True)
                else:
                    answers[row].append(token)
                    ended.append(False)
            by_text = stop.ended([answers[r] for r in rows])
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
        forward: _Forward, model: PreTrainedModel, prompts: list[list[int]], pad: int, width: int, cache: Cache
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
            ids, mask, positions = _left_padded([prompts[i] for i in group], pad, own, device)
            part = Cache(layers=[_BufferedLayer(own) for _ in range(_layers(model))])
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


class _Compiled:
    """A model's compiled decoding step and its one static cache. The cache is as long as
    the longest prompt bucket seen plus the new tokens, so shorter prompts reuse it (and
    the step compiled for its shape); one cache at a time bounds the memory (at 7B, batch
    32 and 1,280 positions, a cache is 5 GiB)."""

    def __init__(self, model: PreTrainedModel) -> None:
        forward = _Forward(model)
        device = next(model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.step = torch.compile(forward.__call__, mode=mode, dynamic=False, fullgraph=False)
        self.forward = forward
        self._cache: StaticCache | None = None
        self.shape = (0, 0)  # (rows, positions) of the cache

    def cache(self, model: PreTrainedModel, rows: int, length: int) -> StaticCache:
        """A zeroed cache of ``rows`` rows and at least ``length`` positions, one slot per
        layer the model has now (a layer-path model's count changes with its path)."""
        stale = self._cache is not None and len(self._cache.layers) != _layers(model)
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


@GENERATION_ENGINES.register("compiled")
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
            if _is_oom(err):  # ``auto`` retries with fewer prompts: the next batch sets the size
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
        ids, mask, positions = _left_padded(filled, _pad_id(stop), width, device)
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
            for r, ended in zip(live, stop.ended([answers[r] for r in live]), strict=True):
                done[r] = ended
            if all(done) or n == max_new_tokens - 1:
                break
            last = last + 1
            step = state.step(step[:, None].clone(), full_mask, last, cache).clone()
        return answers[: len(prompts)]


@GENERATION_ENGINES.register("hf")
class HFEngine:
    """transformers' ``generate`` (greedy, ``DynamicCache``): the reference. Rows stop at
    EOS only; stop strings are cut after generation."""

    @torch.inference_mode()
    def decode(
        self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, stop: StopCheck
    ) -> list[list[int]]:
        device = next(model.parameters()).device
        pad = _pad_id(stop)
        ids, mask, _ = _left_padded(prompts, pad, max(len(p) for p in prompts), device)
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
                if _is_oom(err):
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
