"""Where the pool's tensors live during a run: the tier a ``MemoryPlan`` chose.

Each tensor is a *stack*: row 0 the reference model's tensor, row ``r`` model ``r``'s,
flattened, in the checkpoints' own dtype (bf16 stays bf16: lossless, and half of fp32's
bytes). A tier only decides where stacks are kept:

- ``device``: built once, on the merge device;
- ``host``: built once in CPU RAM (pinned when the merge device is a GPU) and copied to
  the device as a candidate reaches each tensor, the next tensor's copy overlapping the
  current tensor's merge on a second CUDA stream;
- ``hybrid``: the plan's ``cached`` stacks as in ``host``, every other one as in ``disk``;
- ``disk``: read from the checkpoints for every candidate, with ``pread`` (no mapped
  pages left resident), into one buffer the size of the largest stack.

``bytes_read`` counts what was read from the checkpoints (a tier's cost per candidate).

Every tier checks each tensor for NaN/Inf once per run. Vocabulary-aligned embeddings
(``models/vocab.py``) are stacked in fp32, as the alignment averages rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..errors import CheckpointError
from ..models import vocab
from ..models.checkpoint import Checkpoint, resolve
from ..models.pool import ModelPool, is_vocab_tensor


class TensorCache:
    """The stacks of one pool in one tier, plus once-per-run tables keyed by the caller."""

    def __init__(
        self,
        pool: ModelPool,
        device: torch.device,
        tier: str,
        *,
        tokenizer_source: str | None = None,
        unsafe_truncate_embeddings: bool = False,
        cached: Iterable[str] = (),
    ) -> None:
        self.pool, self.device, self.tier = pool, device, tier
        self.cached = frozenset(cached)  # the hybrid tier's kept stacks
        self.bytes_read = 0
        self.tokenizer_source = tokenizer_source
        self.unsafe_truncate_embeddings = unsafe_truncate_embeddings
        self._stacks: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._checked: set[str] = set()
        self.tables: dict[tuple, object] = {}  # per-run values derived from stacks (see Merger)
        self._pin = tier in ("host", "hybrid") and device.type == "cuda"
        self._buffer: torch.Tensor | None = None  # the disk tier reads every stack into it

    def kept(self, name: str) -> bool:
        """Whether ``name``'s stack stays in memory once read (else it is read per candidate)."""
        return self.tier in ("device", "host") or (self.tier == "hybrid" and name in self.cached)

    def _empty(self, rows: int, numel: int, dtype: torch.dtype, *, kept: bool) -> torch.Tensor:
        """Room for a stack: one not kept is a view of one reused buffer (no allocation, no
        page faults per tensor; a stack is valid until the next one is read)."""
        if kept:
            return torch.empty((rows, numel), dtype=dtype)
        nbytes = rows * numel * dtype.itemsize
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = torch.empty(nbytes, dtype=torch.uint8)
        return self._buffer[:nbytes].view(dtype).view(rows, numel)

    def shape(self, name: str) -> tuple[int, ...]:
        """A merged tensor's shape: the base's, unless vocabulary alignment changes its rows."""
        if self.aligned(name):
            if name not in self._shapes:
                self._read(name)
            return self._shapes[name]
        return self.pool.base.shape(name)

    def aligned(self, name: str) -> bool:
        return self.pool.align_vocab and is_vocab_tensor(self.pool.base, name)

    def stack(self, name: str) -> torch.Tensor:
        """``(models, numel)`` on the merge device."""
        if not self.kept(name):
            return self._read(name).to(self.device)
        if name not in self._stacks:
            stack = self._read(name)
            if self._pin:
                stack = stack.pin_memory()
            self._stacks[name] = stack if self.tier != "device" else stack.to(self.device)
        stack = self._stacks[name]
        return stack if self.tier == "device" else stack.to(self.device, non_blocking=True)

    def stream(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, stack)`` for each name in turn; in the host tier on a GPU the next
        stack's copy runs on a side stream while the caller merges the current one."""
        names = list(names)
        if not (self._pin and names):
            for name in names:
                yield name, self.stack(name)
            return
        copier = torch.cuda.Stream(self.device)  # pragma: no cover - needs a GPU

        def issue(name: str) -> tuple[torch.Tensor, torch.cuda.Event]:  # pragma: no cover
            if not self.kept(name):  # hybrid: read now, on this stream
                moved = self.stack(name)
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))
                return moved, done
            if name not in self._stacks:
                self.stack(name)  # builds the pinned host stack
            with torch.cuda.stream(copier):
                moved = self._stacks[name].to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(copier)
            return moved, done

        pending = issue(names[0])  # pragma: no cover
        for i, name in enumerate(names):  # pragma: no cover
            moved, done = pending
            if i + 1 < len(names):
                pending = issue(names[i + 1])
            torch.cuda.current_stream(self.device).wait_event(done)
            moved.record_stream(torch.cuda.current_stream(self.device))
            yield name, moved

    def _read(self, name: str) -> torch.Tensor:
        """Every model's tensor ``name``, checked and stacked, on the CPU."""
        models = self.pool.models
        if self.aligned(name):
            tensors = [m.read(name) for m in models]
            for m, t in zip(models, tensors, strict=True):
                self._check(m, name, t)
            aligned = self._align_vocab(tensors)
            self._shapes[name] = tuple(aligned[0].shape)
            self.bytes_read += sum(t.numel() * t.element_size() for t in tensors)
            return torch.stack([t.reshape(-1) for t in aligned])
        dtypes = [m.dtype(name) for m in models]
        dtype = dtypes[0]
        for d in dtypes[1:]:
            dtype = torch.promote_types(dtype, d)
        stack = self._empty(len(models), models[0].numel(name), dtype, kept=self.kept(name))
        self.bytes_read += sum(m.numel(name) * d.itemsize for m, d in zip(models, dtypes, strict=True))
        for row, (m, d) in enumerate(zip(models, dtypes, strict=True)):
            if d == dtype:
                m.read(name, out=stack[row])
            else:
                stack[row] = m.read(name).reshape(-1)
            if name not in self._checked:
                self._check(m, name, stack[row])
        self._checked.add(name)
        return stack

    @staticmethod
    def _check(model: Checkpoint, name: str, tensor: torch.Tensor) -> None:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{model.name}: tensor {name!r} holds {bad} NaN/Inf value(s); the checkpoint is corrupt "
                "or was saved after a diverged training run. Merging it would poison every candidate."
            )

    def _align_vocab(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.unsafe_truncate_embeddings and self.tokenizer_source is None:
            return [t.float() for t in vocab.common_prefix(tensors)]
        source = self.tokenizer_source or "base"
        out_vocab = vocab.read_vocab(self.pool.base.path if source == "base" else resolve(source))
        vocabs = [vocab.read_vocab(m.path) for m in self.pool.models]
        if out_vocab is None or any(v is None for v in vocabs):
            raise CheckpointError("aligning vocabularies needs every model's tokenizer, and one is missing")
        return vocab.align_rows(tensors, vocab.row_maps([v for v in vocabs if v is not None], out_vocab), base=0)
