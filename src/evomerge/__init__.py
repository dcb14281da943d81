"""evomerge: evolutionary merging of LLMs, with candidates merged in memory."""

from .errors import EvomergeError

__version__ = "0.1.0"

__all__ = ["EvomergeError", "__version__"]
