"""Evaluation of a live, in-memory model: task items, prompts, generation and per-item scores."""

from .generation import generate
from .prompts import PromptTemplate
from .scorers import GenerationScorer, LoglikelihoodChoiceScorer, PerplexityScorer
from .tasks import Columns, Item, Splits, load_items, split_items

__all__ = [
    "Columns",
    "GenerationScorer",
    "Item",
    "LoglikelihoodChoiceScorer",
    "PerplexityScorer",
    "PromptTemplate",
    "Splits",
    "generate",
    "load_items",
    "split_items",
]
