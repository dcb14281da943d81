"""Embedding and lm_head rows across models whose vocabularies differ, as mergekit aligns them.

Row ``i`` of an embedding means token ``i`` of *that model's* tokenizer, so models with
different tokenizers (or extra added tokens) cannot be merged row by row. mergekit
offers two ways, and so do we:

- ``tokenizer_source`` (``base`` or a model): the output vocabulary is that tokenizer's;
  each model's rows are permuted to it by token string. A token a model lacks takes a
  default row: the only model that has it, else the base's, else the mean over the
  models that have it, else zeros (``mergekit/tokenizer/embed.py``, ``PermutedVocabulary``);
- ``unsafe_truncate_embeddings``: keep the common prefix of token ids (mergekit's
  ``truncate_vocabulary``), trusting that ids below it mean the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

Vocab = dict[str, int]


def read_vocab(path: Path) -> Vocab | None:
    """A checkpoint's token -> id map (added tokens included), or None without a tokenizer."""
    file = path / "tokenizer.json"
    if file.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)
    if any(path.glob("tokenizer*")) or (path / "vocab.json").exists():
        from transformers import AutoTokenizer

        return dict(AutoTokenizer.from_pretrained(path).get_vocab())
    return None


def row_maps(vocabs: Sequence[Vocab], out_vocab: Vocab) -> list[torch.Tensor]:
    """For each model, the row holding each output token (-1 where the model lacks it)."""
    size = max(out_vocab.values()) + 1
    maps = []
    for vocab in vocabs:
        rows = torch.full((size,), -1, dtype=torch.long)
        for token, out_id in out_vocab.items():
            if token in vocab:
                rows[out_id] = vocab[token]
        maps.append(rows)
    return maps


def align_rows(tensors: Sequence[torch.Tensor], maps: Sequence[torch.Tensor], base: int | None) -> list[torch.Tensor]:
    """Each model's tensor with its rows in the output vocabulary's order (mergekit's rules)."""
    present = torch.stack([m >= 0 for m in maps])  # (models, out_rows)
    count = present.sum(0)
    shape = (maps[0].numel(), *tensors[0].shape[1:])
    default = torch.zeros(shape, dtype=torch.float32)
    total = torch.zeros(shape, dtype=torch.float32)
    for t, m, p in zip(tensors, maps, present, strict=True):
        total[p] += t.float()[m[p]]
    default[count > 0] = total[count > 0] / count[count > 0].unsqueeze(-1).to(torch.float32).view(
        -1, *[1] * (len(shape) - 1)
    )
    if base is not None:  # a token the base has, but some model lacks, takes the base's row
        p = present[base]
        default[p] = tensors[base].float()[maps[base][p]]
    aligned = []
    for t, m, p in zip(tensors, maps, present, strict=True):
        out = default.clone()
        out[p] = t.float()[m[p]]
        aligned.append(out)
    return aligned


def common_prefix(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """mergekit's unsafe truncation: the first ``min(rows)`` rows of each tensor."""
    rows = min(t.shape[0] for t in tensors)
    return [t[:rows] for t in tensors]
