"""Evaluation of a live, in-memory model: generation and per-item scores."""

from .generation import exact_match_scores, generate

__all__ = ["exact_match_scores", "generate"]
