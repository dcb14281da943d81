"""Recipes computed in bf16/fp16 (mergekit's ``dtype:``) on the fast paths of task
arithmetic, TIES, DARE and breadcrumbs, against mergekit computing in the same dtype
(``merge_tensors(..., dtype=...)``), bit for bit, on the demo family (Llama) and the GPT-2
family. The fast path must be the one taken: mergekit's kernels are refused here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.merge import Merger, Recipe, masks
from evomerge.merge.gta import HALF_METHODS
from evomerge.merge.run import load_live_model
from test_merge_engine import DETERMINISTIC, ENDPOINTS, W3, _StableSorts, recipe

HALF = [case for case in DETERMINISTIC if case[0] in HALF_METHODS]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class _MergekitTorch(_StableSorts):
    """``torch`` as ``mergekit.sparsify`` sees it: stable sorts (equal magnitudes at a cut kept
    in index order, as evomerge keeps them) and, when given, evomerge's DARE masks in place of
    ``torch.bernoulli``'s draws, in the order mergekit asks for them."""

    def __init__(self, bernoulli: list[torch.Tensor] | None = None) -> None:
        self.draws = bernoulli

    def bernoulli(self, p: torch.Tensor) -> torch.Tensor:
        assert self.draws, "mergekit drew more DARE masks than evomerge"
        return self.draws.pop(0).reshape(p.shape).to(p.dtype)


@contextmanager
def mergekit_as_compared(bernoulli: list[torch.Tensor] | None = None) -> Iterator[_MergekitTorch]:
    """mergekit on one torch thread: its rescale's L1 norms are whole-tensor sums in bf16/fp16,
    and with several threads torch rounds each thread's partial sum to that dtype, so mergekit's
    own result depends on the machine's thread count (``test_mergekits_half_norms_depend_on_threads``).
    evomerge rounds the exact sum once, as mergekit does on one thread."""
    import mergekit.sparsify

    saved, threads = mergekit.sparsify.torch, torch.get_num_threads()
    patched = _MergekitTorch(bernoulli)
    mergekit.sparsify.torch = patched
    torch.set_num_threads(1)
    try:
        yield patched
    finally:
        mergekit.sparsify.torch = saved
        torch.set_num_threads(threads)


def assert_bitwise(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    """Equal to the last bit (ours is written into an fp32 live model; every value is exact there),
    NaN where mergekit gives NaN (fp16 can overflow as mergekit's does)."""
    theirs = theirs.to(ours.dtype)
    same = (ours == theirs) | (ours.isnan() & theirs.isnan())
    assert bool(same.all()), f"{name}: {int((~same).sum())} of {ours.numel()} entries differ"


@pytest.fixture(scope="module", params=["demo", "gpt2"])
def family(request, demo_family, gpt2_family):
    """(root, endpoints, {fused: Merger}, live model) of the demo family or the GPT-2 one."""
    root, endpoints = (demo_family, ENDPOINTS) if request.param == "demo" else (gpt2_family, ("a", "b", "c"))
    first = recipe(root, "ties", [{"weight": 1.0}] * 3, endpoints=endpoints)
    mergers = {fused: Merger.for_recipe(first, fused=fused) for fused in (True, False)}
    return root, endpoints, mergers, load_live_model(mergers[True])


#: bf16 runs the fused CPU kernel, or torch's bf16 ops (other devices); fp16 always the latter
KERNELS = [("bfloat16", True), ("bfloat16", False), ("float16", False)]


@pytest.fixture
def no_mergekit_kernels(monkeypatch):
    """Refuse the fallback through mergekit's kernels: the fast path must do the merge."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the merge went through mergekit's kernels, not the fast path")

    monkeypatch.setattr(Merger, "_mergekit", refuse)


def merged(merger: Merger, live: torch.nn.Module, rec: Recipe) -> dict[str, torch.Tensor]:
    merger.merge_into(live, rec)
    return {n: t.detach().clone() for n, t in live.state_dict().items()}


@pytest.mark.parametrize(("dtype", "fused"), KERNELS, ids=["bf16-fused", "bf16-eager", "fp16-eager"])
@pytest.mark.parametrize(("method", "per_model", "params"), HALF)
def test_half_precision_recipes_equal_mergekit_bit_for_bit(
    family, no_mergekit_kernels, dtype, fused, method, per_model, params
):
    root, endpoints, mergers, live = family
    merger = mergers[fused]
    rec = dataclasses.replace(recipe(root, method, per_model, endpoints=endpoints, **params), dtype=dtype)
    ours = merged(merger, live, rec)
    for name in merger.pool.tensor_names:
        tensors, kwargs = merger.mergekit_arguments(rec, name, dtype=DTYPES[dtype])
        with mergekit_as_compared():
            theirs = merge_tensors(tensors, rec.method, dtype=DTYPES[dtype], **kwargs)
        assert_bitwise(ours[name], theirs, name)


@pytest.mark.parametrize(("dtype", "fused"), [("float32", True), *KERNELS])
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_equals_mergekit_given_the_same_masks(demo_family, no_mergekit_kernels, dtype, fused, method):
    """DARE's masks are evomerge's own draws (``masks.random_levels``), not torch's; given them
    (in place of ``torch.bernoulli``), mergekit's DARE, its L1 rescale included, gives ours: bit
    for bit in bf16. In fp16 on the CPU mergekit rescales in fp32: its ratio of two fp32 sums has
    last bits that depend on the order of summation, so a rescaled entry at an fp16 rounding
    boundary can land one fp16 step away (under 0.1% of the entries; a few of 1.3M here). In fp32 the fused
    kernel multiplies by weight x rescale at once, within an fp32 rounding."""
    densities = (0.3, 0.6, 1.0)
    per_model = [{"weight": w, "density": d} for w, d in zip(W3, densities, strict=True)]
    rec = dataclasses.replace(recipe(demo_family, method, per_model, seed=5), dtype=dtype)
    merger = Merger.for_recipe(rec, fused=fused)
    ours = merged(merger, load_live_model(merger), rec)
    compute = DTYPES.get(dtype, torch.float32)
    endpoints = [n for n in merger.inputs(rec) if n != rec.base_model]
    differ = total = 0
    for name in merger.pool.tensor_names:
        tensors, kwargs = merger.mergekit_arguments(rec, name, dtype=compute)
        j = torch.arange(tensors[0].numel())
        draws = [
            masks.random_levels(j, masks.seed_of(rec.seed, name, merger.row(e))) < int(d * masks.LEVELS)
            for e, d in zip(endpoints, densities, strict=True)
            if d < 1
        ]
        with mergekit_as_compared(bernoulli=draws) as patched:
            theirs = merge_tensors(tensors, rec.method, dtype=compute, **kwargs)
        assert patched.draws == [], name  # mergekit drew exactly the sparse endpoints' masks
        if dtype == "float32":
            torch.testing.assert_close(ours[name], theirs, rtol=1e-5, atol=1e-6, msg=name)
        elif dtype == "float16":  # one fp16 step of a task vector's entry, weighted, at most
            torch.testing.assert_close(ours[name], theirs.float(), rtol=2e-3, atol=1e-4, msg=name)
            differ += int((ours[name] != theirs.float()).sum())
            total += theirs.numel()
        else:
            assert_bitwise(ours[name], theirs, name)
    assert differ <= 1e-3 * total, differ


def test_only_equal_magnitudes_at_the_cut_differ_from_stock_mergekit_in_bf16(demo_family, capsys):
    """Against mergekit with torch's default (unstable) sort, in bf16, where equal magnitudes are
    common: one endpoint at weight 1, so the merged delta is the masked task vector. Both keep the
    same number of entries; an entry kept by one only has exactly the cut's magnitude."""
    rec = dataclasses.replace(
        recipe(demo_family, "ties", [{"weight": 1.0, "density": 0.35}], endpoints=("add",)), dtype="bfloat16"
    )
    merger = Merger.for_recipe(rec)
    ours = merged(merger, load_live_model(merger), rec)
    differ = total = 0
    for name in merger.pool.tensor_names:
        tensors, kwargs = merger.mergekit_arguments(rec, name, dtype=torch.bfloat16)
        add, base = tensors
        theirs = merge_tensors(tensors, "ties", dtype=torch.bfloat16, **kwargs)
        delta = (add - base).reshape(-1)
        kept_ours = (ours[name].to(torch.bfloat16) - base).reshape(-1) != 0
        kept_theirs = (theirs - base).reshape(-1) != 0
        assert int(kept_ours.sum()) == int(kept_theirs.sum()), name
        changed = kept_ours != kept_theirs
        if changed.any():
            assert torch.all(delta[changed].abs() == delta[kept_ours].abs().min()), name
        differ += int(changed.sum())
        total += delta.numel()
    with capsys.disabled():
        print(f"\nties bf16 density 0.35: {differ / total:.3%} of entries unlike stock mergekit's (equal at the cut)")


def test_mergekits_half_norms_depend_on_threads():
    """Why the comparisons run mergekit on one thread: a bf16 sum over a tensor large enough to
    be split between threads rounds each thread's part, so two threads and one disagree here;
    evomerge's norm (the exact sum, rounded once) is mergekit's on one thread."""
    values = torch.zeros(1 << 16)  # two threads: [0, 2**15) and [2**15, 2**16), summed apart
    values[: 1 << 15] = 2**-7
    values[0] = values[(1 << 15) + 5] = 0.90625  # halves of 256.90 and 0.91: exact sum 257.80
    values = values.to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = float(values.sum())
        torch.set_num_threads(2)
        two = float(values.sum())
    finally:
        torch.set_num_threads(threads)
    exact = float(torch.tensor(float(values.double().sum()), dtype=torch.float32).to(torch.bfloat16))
    assert one == exact == 258.0
    assert two == 256.0  # the first half rounded to 256 before the second is added
