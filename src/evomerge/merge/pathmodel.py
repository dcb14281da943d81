"""Layer paths in memory: a candidate is a list of references to loaded layers, no copies.

The source models are loaded once. The live model is the first source's module; a path
is put into it by replacing its decoder-layer list with ``HopLayer`` wrappers, each
holding a *reference* to a source layer, the stream scale of its hop and its own hop
index. The hop index is the layer's KV-cache slot, so a layer that appears twice
writes two slots: the wrapper hands the layer a view of the cache (``HopCache``) whose
``update`` writes the hop's slot, whatever ``layer_idx`` the shared layer was built
with. The embeddings, final norm and head are swapped (as references too) when the
path's head model changes. Assembling a candidate allocates no weights and takes
microseconds per hop; generation engines and scorers see an ordinary HF model whose
config says how many layers it now has.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers.cache_utils import Cache

from ..errors import MergeConfigError
from ..models.checkpoint import Checkpoint, resolve
from ..models.integrity import check_checkpoint
from .layerpath import LayerPath, check_hops

log = logging.getLogger(__name__)


class HopCache:
    """A cache as one hop sees it: ``update`` writes the hop's own slot; the rest is the cache's."""

    def __init__(self, cache: Cache, index: int) -> None:
        self._cache, self._index = cache, index

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> Any:
        return self._cache.update(key_states, value_states, self._index, *args, **kwargs)

    @property
    def layers(self) -> Any:
        """Indexed by ``layer_idx`` (GPT-2 reads cross-attention keys so): the hop's slot at every index."""
        slot = self._cache.layers[self._index]
        return _Same(slot)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


class _Same:
    def __init__(self, item: Any) -> None:
        self.item = item

    def __getitem__(self, index: int) -> Any:
        return self.item


class HopLayer(nn.Module):
    """One hop: a reference to a source layer, the scale on the stream entering it, and
    the hop's KV-cache slot."""

    def __init__(self, layer: nn.Module, index: int, scale: float = 1.0) -> None:
        super().__init__()
        self.layer, self.index, self.scale = layer, index, float(scale)
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.scale != 1.0:
            hidden_states = hidden_states * self.scale
        args = tuple(HopCache(a, self.index) if isinstance(a, Cache) else a for a in args)
        kwargs = {k: HopCache(v, self.index) if isinstance(v, Cache) else v for k, v in kwargs.items()}
        return self.layer(hidden_states, *args, **kwargs)


def num_layers(config: Any) -> int:
    return int(config.get_text_config(decoder=True).num_hidden_layers)


def _width(model: nn.Module) -> int:
    config: Any = model.config
    return int(config.get_text_config(decoder=True).hidden_size)


def layer_list_name(model: nn.Module) -> str:
    """The dotted name of the decoder-layer list (``model.layers``, ``transformer.h``, ...):
    the first module list as long as the config's layer count."""
    n = num_layers(model.config)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name
    raise MergeConfigError(f"{type(model).__name__}: no list of {n} decoder layers found; layer paths need one")


def head_modules(model: nn.Module, layers_name: str) -> dict[str, nn.Module]:
    """Everything outside the layer list, by dotted name: the siblings of the list and of
    each of its ancestors (embeddings, final norm, rotary embedding, LM head)."""
    parts = layers_name.split(".")
    out: dict[str, nn.Module] = {}
    for depth in range(len(parts)):
        prefix = ".".join(parts[:depth])
        parent = model.get_submodule(prefix) if prefix else model
        for child_name, child in parent.named_children():
            if child_name != parts[depth]:
                out[f"{prefix}.{child_name}" if prefix else child_name] = child
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


class PathMerger:
    """The layer bank: the source models, loaded once, and the live model paths are put into.

    ``sources`` maps each model's name (as paths name it) to its loaded module; the first
    is model A, whose module is the live model."""

    tier = "device"  # every source stays where it was loaded

    def __init__(self, sources: Mapping[str, nn.Module], device: str = "cpu") -> None:
        if not sources:
            raise MergeConfigError("a layer-path search needs at least one source model")
        self.device = device
        self.names = list(sources)
        self.model = sources[self.names[0]]
        self.layers_name = layer_list_name(self.model)
        self.layers: dict[str, list[nn.Module]] = {}
        self.heads: dict[str, dict[str, nn.Module]] = {}
        self.layer_types: dict[str, list[str] | None] = {}
        self.configs: dict[str, Any] = {}
        for name, module in sources.items():
            if type(module) is not type(self.model):
                raise MergeConfigError(
                    f"{name} is a {type(module).__name__}, {self.names[0]} a {type(self.model).__name__}: "
                    "a layer path joins layers of one architecture"
                )
            width, own = _width(module), _width(self.model)
            if width != own:
                raise MergeConfigError(
                    f"{name} has hidden size {width}, {self.names[0]} {own}: a hidden state flows only "
                    "through layers of one width"
                )
            listed = layer_list_name(module)
            self.layers[name] = list(cast(nn.ModuleList, module.get_submodule(listed)))
            self.heads[name] = head_modules(module, listed)
            types = getattr(module.config, "layer_types", None)
            self.layer_types[name] = list(types) if types is not None else None
            self.configs[name] = module.config
        self.num_layers = {name: len(layers) for name, layers in self.layers.items()}
        self._head = self.names[0]

    @classmethod
    def open(cls, sources: Sequence[str], *, device: str = "cpu", trust_remote_code: bool = False) -> PathMerger:
        """Load each source (a checkpoint folder or hub id; safetensors) in its own dtype on ``device``."""
        from transformers import AutoModelForCausalLM

        loaded: dict[str, nn.Module] = {}
        for name in sources:
            folder = resolve(name)
            check_checkpoint(Checkpoint(name, folder, trust_remote_code=trust_remote_code))
            model: Any = AutoModelForCausalLM.from_pretrained(
                folder, dtype="auto", use_safetensors=True, trust_remote_code=trust_remote_code
            )
            loaded[name] = model.to(device).eval()
        return cls(loaded, device)

    def tokenizer_source(self, path: LayerPath | None = None) -> Path:
        return resolve(path.head if path is not None else self.names[0])

    def merge_into(self, model: nn.Module, path: LayerPath) -> nn.Module:
        """Put ``path`` into the live model: references only, nothing copied."""
        if model is not self.model:
            raise MergeConfigError("a path is put into the live model this merger was made with")
        check_hops(path, self.num_layers, self.names)
        hops = [HopLayer(self.layers[h.model][h.layer], i, h.scale) for i, h in enumerate(path.hops)]
        _set(model, self.layers_name, nn.ModuleList(hops))
        if path.head != self._head:
            for name, module in self.heads[path.head].items():
                _set(model, name, module)
            self._head = path.head
        config: Any = model.config
        config.get_text_config(decoder=True).num_hidden_layers = len(hops)
        if self.layer_types[self.names[0]] is not None:
            config.layer_types = [self.layer_types[h.model][h.layer] for h in path.hops]  # type: ignore[index]
        return model
