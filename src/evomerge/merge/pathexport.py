"""A layer path saved as an ordinary checkpoint that ``from_pretrained`` loads with no remote code.

Each hop becomes a layer of its own (a repeated layer is written twice) and each hop's
stream scale is folded into its residual outputs (``LayerPath.folded_scales``): the
checkpoint is the path model up to the norms' eps. Beside it, ``mergekit_config.yml`` is
a passthrough config with the same slices and scales, which ``mergekit-yaml`` turns into
the same tensors (the multiplication is mergekit's own: ``tensor * value`` in the
tensor's dtype; ``LayerPath.to_mergekit`` bookends the slices so that mergekit takes the
embeddings and head from the path's head).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import MergeConfigError
from ..models.save import SafetensorsStream, model_card, write_atomically
from .layerpath import RESIDUAL_OUTPUTS, LayerPath
from .pathmodel import PathMerger


def path_tensors(merger: PathMerger, path: LayerPath) -> dict[str, torch.Tensor]:
    """The path model's tensors under ordinary names, scales folded (shared tensors cloned)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in merger.heads[path.head].items():
        for key, tensor in module.state_dict(prefix=f"{prefix}.").items():
            out[key] = tensor.detach().clone()
    for index, (hop, factor) in enumerate(zip(path.hops, path.folded_scales(), strict=True)):
        layer = merger.layers[hop.model][hop.layer]
        for key, tensor in layer.state_dict(prefix=f"{merger.layers_name}.{index}.").items():
            scaled = factor != 1.0 and any(f in key for f in RESIDUAL_OUTPUTS) and tensor.is_floating_point()
            out[key] = (tensor * factor if scaled else tensor).detach().contiguous().clone()
    return out


def path_config(merger: PathMerger, path: LayerPath) -> dict[str, Any]:
    """The head model's config.json with the path's layer count (and layer types)."""
    config = copy.deepcopy(merger.configs[path.head])
    config.get_text_config(decoder=True).num_hidden_layers = len(path.hops)
    if merger.layer_types[path.head] is not None:
        config.layer_types = [merger.layer_types[h.model][h.layer] for h in path.hops]  # type: ignore[index]
    return config.to_dict()


def save_path(merger: PathMerger, path: LayerPath, out: str | Path, *, force: bool = False, card: str = "") -> Path:
    """Write ``path`` to ``out``: safetensors, config.json, the head's tokenizer, the
    mergekit passthrough config and a model card that spells the path."""
    from transformers import AutoTokenizer

    if not path.hops:
        raise MergeConfigError("this path has no layers (every slot off): there is no model to save; pick another")

    def write(tmp: Path) -> None:
        tensors = path_tensors(merger, path)
        config = path_config(merger, path)
        floating = next(t.dtype for t in tensors.values() if t.is_floating_point())
        config["dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"] = str(floating)[6:]
        if config.get("tie_word_embeddings"):
            tensors.pop("lm_head.weight", None)  # from_pretrained ties it to the embeddings again
        stream = SafetensorsStream(tmp, [(k, tuple(t.shape), t.dtype) for k, t in tensors.items()])
        for key, tensor in tensors.items():
            stream.write(key, tensor)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        head = merger.tokenizer_source(path)
        if (head / "generation_config.json").exists():
            shutil.copy(head / "generation_config.json", tmp)
        if any(head.glob("tokenizer*")) or (head / "vocab.json").exists():
            AutoTokenizer.from_pretrained(head).save_pretrained(tmp)
        text = path.to_yaml()  # the passthrough config mergekit-yaml rebuilds these tensors from
        (tmp / "mergekit_config.yml").write_text(text)
        labels = {m: Path(m).name for m in path.models}
        what = f"A layer path of {len(path.hops)} layers: {path.describe(labels)}"
        (tmp / "README.md").write_text(
            model_card(text, "layer-path model", note="\n\n".join(n for n in (what, card) if n), models=path.models)
        )

    return write_atomically(out, write, force=force)
