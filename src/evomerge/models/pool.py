"""The models of one merge: a base and its fine-tuned endpoints, checked to be mergeable.

Checks fail early, before any merge or evaluation runs, with a message that names
the model and the tensor or field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

from ..errors import IncompatibleModelsError
from .checkpoint import Checkpoint
from .groups import TensorGroup, tensor_group
from .integrity import check_config_matches_tensors, check_float_weights
from .vocab import read_vocab

#: Architecture fields that must agree, each under the names model families use for it.
_ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "model_type": ("model_type",),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden size": ("hidden_size", "n_embd", "d_model"),
}


def _field(checkpoint: Checkpoint, aliases: tuple[str, ...]) -> object:
    return next((checkpoint.config[a] for a in aliases if a in checkpoint.config), None)


def is_vocab_tensor(model: Checkpoint, name: str) -> bool:
    """Rows indexed by token id: embeddings and lm_head with one row per vocabulary entry."""
    if tensor_group(name).kind not in ("embeddings", "lm_head"):
        return False
    vocab_size = model.config.get("vocab_size") or model.config.get("text_config", {}).get("vocab_size")
    return vocab_size is None or model.shape(name)[0] == vocab_size


def check_compatible(models: Sequence[Checkpoint], *, align_vocab: bool = False) -> None:
    """Raise ``IncompatibleModelsError`` unless every model matches the first one.

    With ``align_vocab`` (a ``tokenizer_source`` or vocabulary truncation was chosen),
    vocabularies may differ: embeddings and lm_head are aligned when merged.
    """
    ref = models[0]
    ref_vocab = read_vocab(ref.path)
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
            if is_vocab_tensor(ref, name) and a[1:] == b[1:]:
                if align_vocab:
                    continue
                raise IncompatibleModelsError(
                    f"{name}: vocabulary sizes differ ({ref.name} {a[0]}, {other.name} {b[0]}). Set "
                    "tokenizer_source (base, or a model; merge.tokenizer_source in an experiment config) to align "
                    "embeddings by token, or "
                    "unsafe_truncate_embeddings to keep the common prefix of token ids."
                )
            raise IncompatibleModelsError(f"{name}: shape {b} in {other.name} but {a} in {ref.name}")
        vocab = read_vocab(other.path)
        if not align_vocab and ref_vocab is not None and vocab is not None and vocab != ref_vocab:
            changed = sorted(t for t in set(ref_vocab) | set(vocab) if ref_vocab.get(t) != vocab.get(t))
            raise IncompatibleModelsError(
                f"{other.name} and {ref.name} have different tokenizers ({len(changed)} tokens differ, "
                f"e.g. {changed[:3]}); the same row of the embeddings would mean different tokens. "
                "Set tokenizer_source (base, or a model; merge.tokenizer_source in an experiment config) to align "
                "embeddings by token."
            )


class ModelPool:
    """A base and endpoints that share an architecture, tensor names, shapes and vocabulary."""

    def __init__(self, base: Checkpoint, endpoints: Sequence[Checkpoint], *, align_vocab: bool = False) -> None:
        if not endpoints:
            raise IncompatibleModelsError("a merge needs at least one endpoint model besides the base")
        names = [base.name, *(e.name for e in endpoints)]
        if len(set(names)) != len(names):
            raise IncompatibleModelsError(f"a model is listed twice: {names}")
        self.base = base
        self.endpoints = list(endpoints)
        self.align_vocab = align_vocab
        for model in self.models:
            check_float_weights(model)
        check_compatible(self.models, align_vocab=align_vocab)  # first: "vocabularies differ" says more
        for model in self.models:
            check_config_matches_tensors(model)

    @classmethod
    def open(
        cls,
        base: str | Path,
        endpoints: Sequence[str | Path],
        *,
        allow_pickle: bool = False,
        align_vocab: bool = False,
        revision: str | Mapping[str, str] | None = None,
        trust_remote_code: bool = False,
    ) -> ModelPool:
        """Open a base and endpoints from local directories or hub ids. ``revision``: one
        for every hub id, or {hub id: revision}."""

        def one(name: str | Path) -> Checkpoint:
            rev = revision.get(str(name)) if isinstance(revision, Mapping) else revision
            return Checkpoint.open(name, allow_pickle=allow_pickle, revision=rev, trust_remote_code=trust_remote_code)

        return cls(one(base), [one(e) for e in endpoints], align_vocab=align_vocab)

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
