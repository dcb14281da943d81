"""What a layer-path run needs beyond a recipe run: its models, its space, its baselines.

``search.space: path`` swaps three things in ``run_experiment`` and nothing else (the
loop, the store, resume, the test phase and the report are the recipe run's): the
models are a ``PathMerger`` (the sources loaded once; a candidate is references to
their layers), the space is a ``PathSpace``, and the baselines are each source alone
(its own path). Parameter space then data flow: ``search.path.from_run`` makes a
finished run's winner (its ``best/`` checkpoint) model A.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError, ExperimentConfig
from ..merge.layerpath import LayerPath
from ..merge.pathmodel import PathMerger
from .heldout import Candidate
from .pathspace import PathSpace
from .rundir import RunDir


def path_sources(config: ExperimentConfig) -> list[str]:
    """The bank's models in order: model A (``from_run``'s winner, else the first endpoint), then the rest."""
    endpoints = list(config.models.endpoints)
    from_run = config.search.path.from_run
    if from_run is None:
        return endpoints
    best = RunDir(Path(from_run)).best
    if not (best / "config.json").is_file():
        raise ConfigError(
            f"search.path.from_run: {from_run} has no winner saved in {best} (a finished single-objective run "
            "with output.save_best writes it); finish that run with `evomerge resume`, or point at another"
        )
    return [str(best), *(e for e in endpoints if e != str(best))]


def open_path_models(config: ExperimentConfig, *, device: str | None = None) -> PathMerger:
    return PathMerger.open(
        path_sources(config), device=device or config.output.device, trust_remote_code=config.models.trust_remote_code
    )


def path_space(config: ExperimentConfig, merger: PathMerger) -> PathSpace:
    p = config.search.path
    return PathSpace(
        merger.names,
        merger.num_layers,
        repeats=p.repeats,
        scales=p.scales,
        scale_range=p.scale_range,
        max_length=p.max_length,
        keep_first=p.keep_first,
        keep_last=p.keep_last,
        frozen=config.search.frozen,
    )


def path_options(space: PathSpace, algorithm: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The algorithm's options for a path search: CMA-ES starts from model A's own path (as
    in the paper); CMA-ES with margin also learns which genes are binary."""
    out = dict(options)
    if algorithm in ("CMAES", "CMAwM"):
        out.setdefault("x0", space.initial_x())
    if algorithm == "CMAwM":
        out.setdefault("discrete", space.inclusion_genes())
    return out


def path_baselines(merger: PathMerger) -> list[Candidate]:
    """Each source alone: its own layers, embeddings and head (model A first)."""
    out = []
    for k, name in enumerate(merger.names):
        kind = "model A" if k == 0 else "source"
        label = f"{kind}:{Path(name).name if Path(name).name != 'best' else Path(name).parent.name}"
        out.append(Candidate(label, "endpoint", LayerPath.identity(name, merger.num_layers[name])))
    return out
