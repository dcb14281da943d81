"""One merge from a mergekit YAML to an HF checkpoint: ``evomerge merge CONFIG --out DIR``.

Configs with a ``models:`` list run through our engine (the same code a search runs
per candidate), streamed: each tensor is read from the checkpoints, merged and
written before the next is read (the engine's ``disk`` tier and a
``SafetensorsStream``), so the merge needs about one tensor's memory, as
``mergekit-yaml`` does, not a model's. Configs with ``slices:`` or ``modules:`` reshape the layer stack
(passthrough "frankenmerges"), which a live model of fixed shape cannot hold; those
are handed to mergekit's own ``run_merge``, so every mergekit config still works.
"""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import MergeConfigError
from ..models.checkpoint import Checkpoint, resolve
from ..models.save import SafetensorsStream, model_card, write_atomically
from .engine import Merger, _dtype
from .layerpath import LayerPath
from .pathexport import save_path
from .pathmodel import PathMerger
from .recipe import Recipe, parse_yaml

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def merge_config(
    config: str | Path | Recipe,
    out: str | Path,
    *,
    force: bool = False,
    allow_pickle: bool = False,
    device: str = "cpu",
    card: str = "",
) -> Path:
    """Merge as ``config`` (a YAML path, YAML text or a Recipe) says and save the result to
    ``out``; ``card`` is added to the model card (a run's test table, say). ``demo:``
    paths are the caller's to resolve (``loader.resolve_demo_text``)."""
    if isinstance(config, Recipe):
        recipe, raw = config, config.to_mergekit()
    else:
        text = Path(config).read_text() if _is_path(config) else str(config)
        raw = parse_yaml(text)
        if raw.get("slices") or raw.get("modules"):
            return _mergekit_run(raw, out, force=force, allow_pickle=allow_pickle, device=device)
        recipe = Recipe.from_mergekit(raw)
    merger = Merger.for_recipe(recipe, allow_pickle=allow_pickle, device=device, tier="disk", live=False)
    return stream_merge(recipe, merger, out, force=force, card=card)


def stream_merge(recipe: Recipe, merger: Merger, out: str | Path, *, force: bool = False, card: str = "") -> Path:
    """Merge tensor by tensor straight into a checkpoint at ``out`` (see the module docstring)."""
    out_dtype = recipe.out_dtype or recipe.dtype
    pool = merger.pool
    entries = []
    for name in pool.tensor_names:
        dtype = pool.base.dtype(name)
        if out_dtype and dtype.is_floating_point:
            dtype = _dtype(out_dtype)
        entries.append((name, merger.output_shape(name), dtype))
    merged = set(merger.merged_tensors)
    config = json.loads((pool.base.path / "config.json").read_text())
    if out_dtype:
        config["dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"] = str(
            _dtype(out_dtype)
        ).removeprefix("torch.")
    embeddings = next((n for n in pool.tensor_names if pool.groups[n].kind == "embeddings"), None)
    if pool.align_vocab and embeddings is not None and "vocab_size" in config:
        config["vocab_size"] = merger.output_rows(embeddings)

    def write(tmp: Path) -> None:
        stream = SafetensorsStream(tmp, entries)
        with torch.no_grad():
            for (name, shape, dtype), (_, stack) in zip(entries, merger.cache.stream(pool.tensor_names), strict=True):
                if name in merged:
                    tensor = torch.empty(shape, dtype=dtype, device=merger.device)
                    merger.merge_tensor(recipe, name, tensor, stack)
                else:  # integer buffers: the base's
                    tensor = stack[0].view(shape)
                stream.write(name, tensor)
                del tensor, stack
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if (pool.base.path / "generation_config.json").exists():
            shutil.copy(pool.base.path / "generation_config.json", tmp)
        _write_extras(tmp, recipe, merger, card)

    return write_atomically(out, write, force=force)


def save_merged(
    model: torch.nn.Module, recipe: Recipe, merger: Merger, out: str | Path, *, force: bool = False, card: str = ""
) -> Path:
    """Save ``model``, which holds ``recipe``'s merge, as an HF checkpoint with its
    tokenizer, the mergekit YAML and a model card (with ``card`` added)."""

    def write(tmp: Path) -> None:
        cast(Any, model).save_pretrained(tmp)
        _write_extras(tmp, recipe, merger, card)

    return write_atomically(out, write, force=force)


def save_candidate(
    model: torch.nn.Module,
    candidate: Recipe | LayerPath,
    merger: Merger | PathMerger,
    out: str | Path,
    *,
    force: bool = False,
    card: str = "",
) -> Path:
    """Save what ``model`` holds: a recipe's merge, or a layer path (scales folded, ``pathexport``)."""
    if isinstance(candidate, LayerPath):
        assert isinstance(merger, PathMerger)
        return save_path(merger, candidate, out, force=force, card=card)
    assert isinstance(merger, Merger)
    return save_merged(model, candidate, merger, out, force=force, card=card)


def _write_extras(tmp: Path, recipe: Recipe, merger: Merger, card: str = "") -> None:
    """The tokenizer, the mergekit YAML and the model card, next to the weights."""
    from transformers import AutoTokenizer

    config_yaml = recipe.to_yaml()
    source = _tokenizer_source(recipe, merger)
    if any(source.glob("tokenizer*")) or (source / "vocab.json").exists():
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    else:  # as mergekit-yaml does: a model without a tokenizer is saved without one
        log.warning("%s has no tokenizer; the merged model is saved without one", source)
    note = random_masks_note(recipe)
    if note:
        log.warning(note)
    (tmp / "mergekit_config.yml").write_text("".join(f"# {line}\n" for line in textwrap.wrap(note, 88)) + config_yaml)
    models = [*recipe.model_names, *([recipe.base_model] if recipe.base_model else [])]
    (tmp / "README.md").write_text(
        model_card(config_yaml, note="\n\n".join(n for n in (note, card) if n), models=models)
    )


def random_masks_note(recipe: Recipe) -> str:
    """What to know before rebuilding a DARE or DELLA merge elsewhere (empty for others)."""
    if not recipe.method.startswith(("dare", "della")):
        return ""
    return (
        f"{recipe.method} drops entries at random: below density 1, mergekit-yaml draws other masks from this "
        "file and so builds another model of the same recipe, which may score differently. To rebuild these exact "
        f"weights, run `evomerge merge mergekit_config.yml --out DIR` (masks seeded with {recipe.seed}), or use "
        "the weights saved here."
    )


def load_live_model(merger: Merger, *, out_dtype: str | None = None) -> torch.nn.Module:
    """The model a merge is written into: the reference checkpoint, loaded once."""
    from transformers import AutoModelForCausalLM

    dtype = _dtype(out_dtype) if out_dtype else "auto"
    base = merger.pool.base
    model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype, trust_remote_code=base.trust_remote_code)
    embeddings: Any = model.get_input_embeddings()
    name = next((n for n, p in model.named_parameters() if p is embeddings.weight), None)
    if merger.pool.align_vocab and name is not None:  # the output vocabulary may differ from the base's
        rows = merger.output_rows(name)
        if rows != embeddings.weight.shape[0]:
            model.resize_token_embeddings(rows, mean_resizing=False)
    return model.to(merger.device).eval()


def load_live_tokenizer(merger: Merger) -> PreTrainedTokenizerBase:
    """The merges' tokenizer: the base model's, or the merger's ``tokenizer_source`` (its code
    runs only with the pool's trust_remote_code)."""
    from transformers import AutoTokenizer

    base, source = merger.pool.base, merger.tokenizer_source
    path = base.path if source in (None, "base") else resolve(source)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=base.trust_remote_code)


def _tokenizer_source(recipe: Recipe, merger: Merger) -> Path:
    source = recipe.tokenizer_source
    return merger.pool.base.path if source in (None, "base") else resolve(source)


def _mergekit_run(raw: dict[str, Any], out: str | Path, *, force: bool, allow_pickle: bool, device: str) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    try:
        config = MergeConfiguration.model_validate(raw)
    except Exception as err:  # pydantic's ValidationError and mergekit's RuntimeErrors
        raise MergeConfigError(f"invalid mergekit config: {err}") from err
    for model in {str(m.model.path) for m in config.referenced_models()}:
        Checkpoint.open(model, allow_pickle=allow_pickle)  # refuses pickle-only models without the opt-in
    options = MergeOptions(device=device, lazy_unpickle=allow_pickle, quiet=True)
    log.info("slices/modules config: running mergekit's run_merge")
    return write_atomically(out, lambda tmp: run_merge(config, str(tmp), options), force=force)


def _is_path(config: str | Path) -> bool:
    """A Path, or a one-line string, names a file; YAML text spans lines."""
    if isinstance(config, str) and "\n" in config:
        return False
    if not Path(config).is_file():
        raise MergeConfigError(f"merge config {config} not found")
    return True
