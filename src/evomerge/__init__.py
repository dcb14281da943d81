"""evomerge: evolutionary merging of LLMs, with candidates merged in memory."""

from typing import TYPE_CHECKING

from .errors import EvomergeError

if TYPE_CHECKING:
    from .api import EvolveResult, evolve
    from .loader import load_config

__version__ = "0.1.0"

__all__ = ["EvolveResult", "EvomergeError", "__version__", "evolve", "load_config"]


def __getattr__(name: str) -> object:
    """``evolve`` and ``load_config`` load torch and transformers; ``import evomerge`` stays
    light until one is used."""
    if name in ("evolve", "EvolveResult"):
        from . import api

        return getattr(api, name)
    if name == "load_config":
        from . import loader

        return loader.load_config
    raise AttributeError(f"module 'evomerge' has no attribute {name!r}")
