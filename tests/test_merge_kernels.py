"""Our kernels against mergekit's own in-memory API on the same tensors."""

import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.demo import load_member
from evomerge.merge import linear, task_arithmetic, task_arithmetic_into


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=g)
    return base, [base + 0.05 * torch.randn(64, 32, generator=g) for _ in range(3)]


@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic_matches_mergekit(tensors, normalize):
    base, ends = tensors
    weights = [0.7, -0.2, 1.1]
    ref = merge_tensors(
        [base, *ends], "task_arithmetic", base_index=0, parameters={"weight": weights, "normalize": normalize}
    )
    ours = task_arithmetic(base, ends, weights, normalize=normalize)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_task_arithmetic_with_weights_summing_to_zero_matches_mergekit(tensors):
    """normalize=True divides by the weight sum; mergekit guards a zero sum, and so must we."""
    base, ends = tensors
    weights = [0.5, -0.5, 0.0]
    params = {"weight": weights, "normalize": True}
    ref = merge_tensors([base, *ends], "task_arithmetic", base_index=0, parameters=params)
    ours = task_arithmetic(base, ends, weights, normalize=True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_linear_matches_mergekit(tensors):
    _, ends = tensors
    weights = [0.2, 0.3, 0.9]
    ref = merge_tensors(ends, "linear", parameters={"weight": weights})
    torch.testing.assert_close(linear(ends, weights), ref, rtol=1e-5, atol=1e-6)


def test_task_arithmetic_into_writes_the_live_model(demo_family):
    model, _ = load_member(demo_family, "base")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ends = [load_member(demo_family, n)[0].state_dict() for n in ("add", "greek")]
    ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    task_arithmetic_into(model, base, ends, [1.0, 0.0])
    for name, param in model.named_parameters():
        assert param.data_ptr() == ptrs[name]  # written in place, no new tensors
        torch.testing.assert_close(param, ends[0][name])
