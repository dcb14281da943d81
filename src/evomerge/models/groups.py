"""Which layer and which kind of module a tensor belongs to, from its name alone.

Granular recipes (per layer, per module kind, layer selection) need every tensor
assigned to a group. Names follow a few families: Llama/Mistral/Qwen2/Gemma/Phi-3
(``model.layers.N.``), GPT-2 (``transformer.h.N.``), GPT-NeoX (``gpt_neox.layers.N.``)
and OPT-style decoders (``model.decoder.layers.N.``).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

Kind = Literal["attention", "mlp", "embeddings", "norms", "lm_head", "other"]
KINDS: tuple[Kind, ...] = ("attention", "mlp", "embeddings", "norms", "lm_head", "other")

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
# Checked in order: a norm inside an attention block is a norm.
_KIND_PATTERNS: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    ("norms", re.compile(r"norm|(?:^|\.)ln_|layernorm")),
    ("lm_head", re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.")),
    ("embeddings", re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")),
    ("attention", re.compile(r"attn|attention")),
    ("mlp", re.compile(r"mlp|feed_forward|(?:^|\.)ffn\.|moe|experts")),
)


class TensorGroup(NamedTuple):
    layer: int | None  # None for tensors outside the repeated blocks
    kind: Kind


def tensor_group(name: str) -> TensorGroup:
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(name):
            return TensorGroup(layer, kind)
    return TensorGroup(layer, "other")
