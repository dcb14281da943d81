"""The fast path of mergekit's task-arithmetic family: task arithmetic, TIES, DARE,
breadcrumbs (each with or without sign consensus) and DELLA.

TIES, DARE and breadcrumbs are one fused pass on CPU (``fused.py``) and a few eager passes
elsewhere, their masks found per candidate (``masks.py``) from small once-per-run tables;
DELLA's masks are built eagerly per tensor (its per-row ranks need whole rows); without
sparsification the method is one weighted sum (``linear.combine``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import MergeConfigError
from . import masks
from .kernels import generalized_task_arithmetic
from .linear import combine
from .masks import Cuts
from .tensorjob import TensorJob

#: mergekit's task-arithmetic family: method -> (sign consensus, sparsification)
GTA_METHODS: dict[str, tuple[bool, str | None]] = {
    "task_arithmetic": (False, None),
    "ties": (True, "magnitude"),
    "dare_ties": (True, "random"),
    "dare_linear": (False, "random"),
    "breadcrumbs": (False, "magnitude_outliers"),
    "breadcrumbs_ties": (True, "magnitude_outliers"),
    "della": (True, "della_magprune"),
    "della_linear": (False, "della_magprune"),
}


def gta(job: TensorJob) -> None:
    merger, recipe, name, stack = job.merger, job.recipe, job.name, job.stack
    consensus, method = GTA_METHODS[recipe.method]
    if recipe.base_model is None or merger.row(recipe.base_model) != 0:
        raise MergeConfigError(f"{recipe.method} needs base_model (the pool's first model, {merger.names[0]})")
    shared, per_input = merger.tensor_params(recipe, name)
    entries = [n for n in merger.inputs(recipe) if n != recipe.base_model]
    rows = [merger.row(n) for n in entries]
    weights = [float(per_input[n]["weight"]) for n in entries]
    densities = [float(per_input[n].get("density", 1.0)) for n in entries]
    lam, normalize = float(shared["lambda"]), bool(shared["normalize"])
    if method is None or all(d >= 1 for d in densities):
        if consensus:  # a dense TIES still elects signs
            method = "magnitude"
        else:
            divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
            combine(job, {0: 1.0, **{r: lam * w / divisor for r, w in zip(rows, weights, strict=True)}})
            return
    if method == "della_magprune":
        _della(job, rows, entries, per_input, shared, consensus)
        return
    if method == "random":
        cuts = Cuts.random([masks.seed_of(recipe.seed, name, r) for r in rows], densities)
    else:
        gammas = [float(per_input[n].get("gamma", 0.0)) for n in entries]
        histograms, _ = merger.stats(name, stack)
        mine = [histograms[r] for r in rows]
        cuts = masks.magnitude_cuts(method, densities, gammas, stack.shape[1], mine, merger.sweep(stack, rows))
    rescale = _rescale(job, cuts, rows, densities) if shared["rescale"] else [1.0] * len(rows)
    w = np.asarray(weights, np.float32)
    scale = np.asarray(rescale, np.float32) * w
    for start, reference, deltas, out in merger.chunks(stack, rows, job.target):
        if merger.fused:
            from . import fused  # numba: compiled on first use

            arrays = tuple(d.numpy() for d in deltas)
            fused.gta_merge(
                reference.numpy(), arrays, cuts.arrays(), start, scale, w, consensus, normalize, lam, out.numpy()
            )
        else:
            masked = [d * cuts.mask(i, d, start) * rescale[i] for i, d in enumerate(deltas)]
            out.copy_(
                generalized_task_arithmetic(
                    reference, masked, weights, consensus=consensus, normalize=normalize, lambda_=lam
                )
            )


def _rescale(job: TensorJob, cuts: Cuts, rows: list[int], densities: list[float]) -> list[float]:
    """mergekit's L1 rescale: a masked task vector keeps the L1 norm of the whole one."""
    merger, name, stack = job.merger, job.name, job.stack
    _, l1 = merger.stats(name, stack)
    factors = []
    for i, (r, d) in enumerate(zip(rows, densities, strict=True)):
        if d >= 1:
            factors.append(1.0)
            continue
        if cuts.seeds is not None:
            stop = int(cuts.hi[i])
            after = float(merger.level_table(name, stack, r, int(cuts.seeds[i]))[stop - 1]) if stop > 0 else 0.0
        else:
            after = sum(masks.cut_l1(cuts, i, delta, start) for start, (delta,) in merger.sweep(stack, [r])())
        before = l1[r]
        factors.append(1.0 if before < 1e-7 or after < 1e-7 else float(np.float32(before) / np.float32(after)))
    return factors


def _della(
    job: TensorJob,
    rows: list[int],
    entries: list[str],
    per_input: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    consensus: bool,
) -> None:
    """DELLA (per tensor, eagerly: its per-row ranks need whole rows)."""
    recipe, name, stack = job.recipe, job.name, job.stack
    shape = job.merger.output_shape(name)
    reference = stack[0].float()
    masked = []
    for r, n in zip(rows, entries, strict=True):
        density, epsilon = float(per_input[n]["density"]), float(per_input[n]["epsilon"])
        delta = stack[r].float() - reference
        if density >= 1:
            masked.append(delta)
            continue
        if density + epsilon >= 1 or density - epsilon <= 0:
            raise MergeConfigError(
                f"{recipe.method}: density ± epsilon must stay in (0, 1); got density {density}, "
                f"epsilon {epsilon} for {n}"
            )
        fraction = masks.row_rank_fraction(delta.view(shape))
        j = torch.arange(delta.numel(), device=delta.device)
        levels = masks.random_levels(j, masks.seed_of(recipe.seed, name, r))
        m = delta * masks.della_mask(fraction, levels, density, epsilon)
        if shared["rescale"]:
            after, before = float(m.abs().sum()), float(delta.abs().sum())
            if before >= 1e-7 and after >= 1e-7:
                m = m * (before / after)
        masked.append(m)
    weights = [float(per_input[n]["weight"]) for n in entries]
    merged = generalized_task_arithmetic(
        reference,
        masked,
        weights,
        consensus=consensus,
        normalize=bool(shared["normalize"]),
        lambda_=float(shared["lambda"]),
    )
    job.target.copy_(merged.view(job.target.shape))
