"""The models of one merge: a base and its fine-tuned endpoints, checked to be mergeable.

Checks fail early, before any merge or evaluation runs, with a message that names
the model and the tensor or field at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from ..errors import IncompatibleModelsError
from .checkpoint import Checkpoint
from .groups import TensorGroup, tensor_group

#: Architecture fields that must agree, each under the names model families use for it.
_ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "model_type": ("model_type",),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden size": ("hidden_size", "n_embd", "d_model"),
}


def _field(checkpoint: Checkpoint, aliases: tuple[str, ...]) -> object:
    return next((checkpoint.config[a] for a in aliases if a in checkpoint.config), None)


def check_compatible(models: Sequence[Checkpoint]) -> None:
    """Raise ``IncompatibleModelsError`` unless every model matches the first one."""
    ref = models[0]
    ref_vocab = _tokenizer_vocab(ref.path)
    for other in models[1:]:
        for label, aliases in _ARCH_FIELDS.items():
            a, b = _field(ref, aliases), _field(other, aliases)
            if a != b:
                raise IncompatibleModelsError(
                    f"{other.name} has {label} {b!r} but {ref.name} has {a!r}: models of different "
                    "architectures cannot be merged; use endpoints fine-tuned from the same base."
                )
        missing = sorted(set(ref.tensor_names) - set(other.tensor_names))
        extra = sorted(set(other.tensor_names) - set(ref.tensor_names))
        if missing or extra:
            name, where = (missing[0], f"missing from {other.name}") if missing else (extra[0], f"only in {other.name}")
            raise IncompatibleModelsError(
                f"tensor {name!r} is {where} ({len(missing)} missing, {len(extra)} extra in all, "
                f"compared with {ref.name})"
            )
        for name in ref.tensor_names:
            a, b = ref.shape(name), other.shape(name)
            if a == b:
                continue
            if tensor_group(name).kind in ("embeddings", "lm_head") and a[1:] == b[1:]:
                raise IncompatibleModelsError(
                    f"{name}: vocabulary sizes differ ({ref.name} {a[0]}, {other.name} {b[0]}); "
                    "merging models with different vocabularies is not supported yet."
                )
            raise IncompatibleModelsError(f"{name}: shape {b} in {other.name} but {a} in {ref.name}")
        vocab = _tokenizer_vocab(other.path)
        if ref_vocab is not None and vocab is not None and vocab != ref_vocab:
            changed = sorted(t for t in set(ref_vocab) | set(vocab) if ref_vocab.get(t) != vocab.get(t))
            raise IncompatibleModelsError(
                f"{other.name} and {ref.name} have different tokenizers ({len(changed)} tokens differ, "
                f"e.g. {changed[:3]}); the same row of the embeddings would mean different tokens."
            )


def _tokenizer_vocab(path: Path) -> dict[str, int] | None:
    file = path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)


class ModelPool:
    """A base and endpoints that share an architecture, tensor names, shapes and vocabulary."""

    def __init__(self, base: Checkpoint, endpoints: Sequence[Checkpoint]) -> None:
        if not endpoints:
            raise IncompatibleModelsError("a merge needs at least one endpoint model besides the base")
        names = [base.name, *(e.name for e in endpoints)]
        if len(set(names)) != len(names):
            raise IncompatibleModelsError(f"a model is listed twice: {names}")
        self.base = base
        self.endpoints = list(endpoints)
        check_compatible(self.models)

    @classmethod
    def open(cls, base: str | Path, endpoints: Sequence[str | Path], *, allow_pickle: bool = False) -> ModelPool:
        """Open a base and endpoints from local directories or hub ids."""
        return cls(
            Checkpoint.open(base, allow_pickle=allow_pickle),
            [Checkpoint.open(e, allow_pickle=allow_pickle) for e in endpoints],
        )

    @property
    def models(self) -> list[Checkpoint]:
        return [self.base, *self.endpoints]

    @property
    def tensor_names(self) -> list[str]:
        return self.base.tensor_names

    @cached_property
    def groups(self) -> dict[str, TensorGroup]:
        return {name: tensor_group(name) for name in self.tensor_names}

    @cached_property
    def num_layers(self) -> int:
        layers = [g.layer for g in self.groups.values() if g.layer is not None]
        return max(layers) + 1 if layers else 0
