"""A run's models opened from its config: the merger (a recipe's pool and memory plan, or a
layer path's sources) and the live model candidates are put into. The driver and every Ray
worker open them alike."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ..config import ExperimentConfig
from ..merge.candidate import Sources
from ..merge.engine import Merger
from ..merge.pathmodel import PathMerger
from ..merge.run import load_live_model, load_live_tokenizer
from ..models.pool import ModelPool
from .pathrun import open_path_models


def open_models(config: ExperimentConfig, *, device: str | None = None) -> Sources:
    """The pool, checked, and the merger's memory plan (on ``device``, default
    ``output.device``): all from the checkpoints' headers. A layer-path run loads its
    sources instead (``pathrun``)."""
    if config.search.space == "path":
        return open_path_models(config, device=device)
    m = config.models
    base = m.base or m.endpoints[0]
    pool = ModelPool.open(
        base,
        [e for e in m.endpoints if e != base],
        allow_pickle=m.allow_pickle,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        align_vocab=config.merge.tokenizer_source is not None,
    )
    return Merger(
        pool,
        device=device or config.output.device,
        tier=config.merge.tier,
        memory_budget=config.merge.memory_budget,
        tokenizer_source=config.merge.tokenizer_source,
    )


def engine_for(config: ExperimentConfig, merger: Sources) -> str:
    """``output.generation``, except that ``auto`` is ``eager`` for layer paths: a compiled
    step is specialised to the layer list, which a path changes with every candidate."""
    engine = config.output.generation
    return "eager" if engine == "auto" and isinstance(merger, PathMerger) else engine


def live_model(merger: Sources) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The model candidates are put into, and its tokenizer (model A's for a layer path)."""
    if isinstance(merger, PathMerger):
        from transformers import AutoTokenizer

        return merger.model, AutoTokenizer.from_pretrained(merger.tokenizer_source())
    return load_live_model(merger), load_live_tokenizer(merger)
