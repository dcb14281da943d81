"""Checkpoints on disk, read lazily, and the pool of models one merge draws on."""

from .checkpoint import Checkpoint, resolve
from .groups import KINDS, TensorGroup, tensor_group
from .pool import ModelPool, check_compatible

__all__ = ["KINDS", "Checkpoint", "ModelPool", "TensorGroup", "check_compatible", "resolve", "tensor_group"]
