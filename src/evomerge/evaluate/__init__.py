"""Evaluation of a live, in-memory model: task items, prompts, generation and per-item scores."""

from .evaluator import Evaluator, HeldOutError, evaluator_for
from .generation import generate
from .prompts import PromptTemplate
from .scorers import AnswerLossScorer, GenerationScorer, LoglikelihoodChoiceScorer, PerplexityScorer
from .tasks import Columns, Item, Splits, TaskDataError, load_hf_dataset, load_items, split_items

__all__ = [
    "AnswerLossScorer",
    "Columns",
    "Evaluator",
    "GenerationScorer",
    "HeldOutError",
    "Item",
    "LoglikelihoodChoiceScorer",
    "PerplexityScorer",
    "PromptTemplate",
    "Splits",
    "TaskDataError",
    "evaluator_for",
    "generate",
    "load_hf_dataset",
    "load_items",
    "split_items",
]
