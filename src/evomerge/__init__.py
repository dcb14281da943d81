"""evomerge: evolutionary merging of LLMs, with candidates merged in memory."""

from .errors import EvomergeError

__version__ = "0.1.0"

__all__ = ["EvolveResult", "EvomergeError", "__version__", "evolve"]


def __getattr__(name: str) -> object:
    """``evolve`` loads torch and transformers; ``import evomerge`` stays light until it is used."""
    if name in ("evolve", "EvolveResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'evomerge' has no attribute {name!r}")
