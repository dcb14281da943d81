"""One checkpoint's own consistency, checked before a run directory exists: its weights are
floating point, and its ``config.json`` describes its tensors.

Without these checks an integer weight is cast into the merge and the model scores 0
with no warning, an FP8 weight crashes deep in the engine, and a ``config.json`` that
disagrees with the tensors (heads, intermediate size) fails minutes in, inside
transformers. The shapes are compared with the model transformers builds from the
config on the ``meta`` device: no memory, and every architecture transformers knows.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from .checkpoint import Checkpoint, needs_remote_code

#: The weights evomerge merges; FP8, integer and bool tensors are refused by name.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_TORCH_FLOATS = {torch.float64, torch.float32, torch.float16, torch.bfloat16}


def check_float_weights(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint with a weight that is not F32, F16, BF16 or F64, naming it."""
    for name in checkpoint.tensor_names:
        kind = checkpoint.dtype_name(name)
        if kind in FLOAT_DTYPES or kind in {str(d) for d in _TORCH_FLOATS}:
            continue
        what = "8-bit floats, a quantized format" if "F8" in kind.upper() or "float8" in kind else "integers or bools"
        raise CheckpointError(
            f"{checkpoint.name}: tensor {name!r} holds {kind} weights ({what}); evomerge merges floating-point "
            "weights only (F32, F16, BF16, F64), and casting these would silently change the model. "
            "Use the model's unquantized release, or dequantize it first."
        )


def check_config_matches_tensors(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose ``config.json`` implies other shapes than its tensors have
    (heads, sizes), or that transformers cannot build a model from. A model with its own
    code is not built here: its code is run only where the run loads it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if needs_remote_code(checkpoint.config):
        return
    try:
        config = AutoConfig.from_pretrained(checkpoint.path)
        with torch.device("meta"):
            model: Any = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers raises ValueError, KeyError, its own validation errors
        reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{checkpoint.name}: its config.json does not describe a model transformers can build ({reason}); "
            "fix config.json, or fetch the model again"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in checkpoint.tensor_names:
        if name in expected and expected[name] != checkpoint.shape(name):
            raise CheckpointError(
                f"{checkpoint.name}: tensor {name!r} has shape {list(checkpoint.shape(name))} but its config.json "
                f"implies {list(expected[name])}: config.json does not describe these weights "
                "(heads, hidden or intermediate size?); fix it, or fetch the model again"
            )


def check_checkpoint(checkpoint: Checkpoint) -> None:
    """Both checks: what every model of a layer path passes before it is used (a pool runs
    them around its own comparison of the models, whose messages say more)."""
    check_float_weights(checkpoint)
    check_config_matches_tensors(checkpoint)
