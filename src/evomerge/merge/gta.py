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


#: the methods whose fast path also computes in bf16/fp16 as mergekit does (DELLA's does not)
HALF_METHODS = frozenset(m for m, (_, kind) in GTA_METHODS.items() if kind != "della_magprune")


def gta(job: TensorJob) -> None:
    merger, recipe, name, stack, dtype = job.merger, job.recipe, job.name, job.stack, job.dtype
    consensus, method = GTA_METHODS[recipe.method]
    if recipe.base_model is None or merger.row(recipe.base_model) != 0:
        raise MergeConfigError(f"{recipe.method} needs base_model (the pool's first model, {merger.names[0]})")
    shared, per_input = merger.tensor_params(recipe, name)
    entries = [n for n in merger.inputs(recipe) if n != recipe.base_model]
    rows = [merger.row(n) for n in entries]
    weights = [float(per_input[n]["weight"]) for n in entries]
    densities = [float(per_input[n].get("density", 1.0)) for n in entries]
    lam, normalize = float(shared["lambda"]), bool(shared["normalize"])
    half = dtype != torch.float32
    if method is None or all(d >= 1 for d in densities):
        if consensus:  # a dense TIES still elects signs
            method = "magnitude"
        elif half:  # mergekit's rounding after each op: the eager kernel in that dtype
            method = None
        else:
            divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
            combine(job, {0: 1.0, **{r: lam * w / divisor for r, w in zip(rows, weights, strict=True)}})
            return
    if method == "della_magprune":
        _della(job, rows, entries, per_input, shared, consensus)
        return
    if method is None:
        cuts = Cuts.keep_all(len(rows))
    elif method == "random":
        cuts = Cuts.random([masks.seed_of(recipe.seed, name, r) for r in rows], densities)
    else:
        gammas = [float(per_input[n].get("gamma", 0.0)) for n in entries]
        histograms, _ = merger.stats(name, stack, dtype)
        mine = [histograms[r] for r in rows]
        cuts = masks.magnitude_cuts(method, densities, gammas, stack.shape[1], mine, merger.sweep(stack, rows, dtype))
    rescale = _rescale(job, cuts, rows, densities, method) if shared["rescale"] else [1.0] * len(rows)
    # fused: fp32, or bf16 (mergekit's weights are a tensor of that dtype); eager: any dtype
    bf16 = dtype == torch.bfloat16
    w = torch.tensor(weights, dtype=dtype).float().numpy() if bf16 else np.asarray(weights, np.float32)
    scale = np.asarray(rescale, np.float32) * w
    sparse = [d < 1 for d in densities]
    fused_pass = merger.fused and (bf16 or not half)
    for start, reference, deltas, out in merger.chunks(stack, rows, job.target, dtype, raw=fused_pass):
        if fused_pass:
            from . import fused  # numba: compiled on first use

            arrays = tuple(fused.as_array(d) for d in deltas)
            fused.gta_merge(
                fused.as_array(reference),
                arrays,
                cuts.arrays(),
                start,
                scale,
                w,
                consensus,
                normalize,
                lam,
                out.numpy(),
                bf16_rescale=np.asarray(rescale, np.float32) if bf16 else None,
            )
            continue
        # eager, in the dtype mergekit computes in: mask (exact), rescale, then its arithmetic
        masked = [
            (d.to(dtype) * cuts.mask(i, d, start) if sparse[i] else d.to(dtype)) * rescale[i]
            for i, d in enumerate(deltas)
        ]
        out.copy_(
            generalized_task_arithmetic(
                reference.to(dtype), masked, weights, consensus=consensus, normalize=normalize, lambda_=lam
            )
        )


def _rescale(job: TensorJob, cuts: Cuts, rows: list[int], densities: list[float], method: str | None) -> list[float]:
    """mergekit's L1 rescale: a masked task vector keeps the L1 norm of the whole one.

    In bf16/fp16 mergekit's norms and their ratio are tensors of that dtype, so they are
    rounded as they are there; except DARE in fp16 on the CPU, which mergekit computes in fp32
    (``torch.bernoulli`` has no fp16 CPU kernel) before rounding its result to fp16."""
    merger, name, stack, dtype = job.merger, job.name, job.stack, job.dtype
    if dtype == torch.float16 and method == "random" and merger.device.type == "cpu":
        dtype = torch.float32
    _, l1 = merger.stats(name, stack, job.dtype)
    factors = []
    for i, (r, d) in enumerate(zip(rows, densities, strict=True)):
        if d >= 1:
            factors.append(1.0)
            continue
        if cuts.seeds is not None:
            stop = int(cuts.hi[i])
            table = merger.level_table(name, stack, r, int(cuts.seeds[i]), job.dtype)
            after = float(table[stop - 1]) if stop > 0 else 0.0
        else:
            sweep = merger.sweep(stack, [r], job.dtype)
            after = sum(masks.cut_l1(cuts, i, delta, start) for start, (delta,) in sweep())
        # mergekit: the two norms are 0-dim tensors of the dtype it computes in
        before_t, after_t = (torch.tensor(np.float32(x)).to(dtype) for x in (l1[r], after))
        factors.append(1.0 if before_t < 1e-7 or after_t < 1e-7 else float(before_t / after_t))
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
