"""The fast paths that are one weighted sum of ``[reference; task vectors]``: linear, slerp,
and (via ``combine``) task arithmetic and the dense variants of the sparse methods."""

from __future__ import annotations

import math

import torch

from ..errors import MergeConfigError
from .tensorjob import TensorJob


def combine(job: TensorJob, coefficients: dict[int, float]) -> None:
    """``target = sum_r c_r * input_r``, with ``input_0`` the reference and ``input_r`` task
    vector ``r``: one fused pass on CPU, a matrix-vector product elsewhere."""
    merger, stack, target = job.merger, job.stack, job.target
    rows = sorted(r for r in coefficients if r and coefficients[r] != 0)
    c = [coefficients.get(0, 0.0)] + [coefficients[r] for r in rows]
    if c[0] == 1 and (not rows or (len(rows) == 1 and c[1] == 1)):  # one model, whole: its own bytes
        target.copy_(stack[rows[0] if rows else 0].view(target.shape))
        return
    vector = torch.tensor(c, dtype=torch.float32, device=merger.device)
    for _, reference, deltas, out in merger.chunks(stack, rows, target, raw=merger.fused and bool(rows)):
        if merger.fused and rows:
            from . import fused  # numba: compiled on first use

            fused.combine((fused.as_array(reference), *(fused.as_array(d) for d in deltas)), c, out.numpy())
        else:
            torch.mv(torch.stack([reference, *deltas]).t(), vector, out=out)


def linear(job: TensorJob) -> None:
    merger, recipe = job.merger, job.recipe
    shared, per_input = merger.tensor_params(recipe, job.name)
    weights = {n: float(per_input[n]["weight"]) for n in merger.inputs(recipe)}
    total = sum(weights.values()) if shared["normalize"] else 1.0
    coefficients: dict[int, float] = {0: 0.0}
    for n, w in weights.items():  # input r = reference + task vector r
        coefficients[0] += w / total
        r = merger.row(n)
        if r:
            coefficients[r] = coefficients.get(r, 0.0) + w / total
    combine(job, coefficients)


def slerp(job: TensorJob) -> None:
    merger, recipe = job.merger, job.recipe
    if recipe.base_model is None:
        raise MergeConfigError("slerp needs base_model: it interpolates from the base to the other model")
    shared, _ = merger.tensor_params(recipe, job.name)
    inputs = merger.inputs(recipe)
    a, b = merger.row(recipe.base_model), merger.row(next(n for n in inputs if n != recipe.base_model))
    dot = merger.once(("slerp", job.name, a, b), lambda: _cosine(job.stack, a, b))
    t = float(shared["t"])
    if abs(dot) > 0.9995:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(dot)
        coef_a = math.sin((1 - t) * theta) / math.sin(theta)
        coef_b = math.sin(t * theta) / math.sin(theta)
    # tensor x = reference (row 0) + task vector x (zero for the reference itself)
    coefficients = {0: coef_a + coef_b}
    for r, c in ((a, coef_a), (b, coef_b)):
        if r:
            coefficients[r] = coefficients.get(r, 0.0) + c
    combine(job, coefficients)


def _cosine(stack: torch.Tensor, a: int, b: int) -> float:
    """The cosine of two whole tensors, as mergekit's slerp computes it."""
    x, y = (stack[r].double() for r in (a, b))
    norm_a, norm_b = (n if n > 1e-8 else 1.0 for n in (float(x.norm()), float(y.norm())))
    return max(-1.0, min(1.0, float((x / norm_a) @ (y / norm_b))))
