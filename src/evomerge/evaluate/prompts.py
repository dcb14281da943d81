"""Turning an item into the text a model sees: a template, few-shot examples, and
optionally the tokenizer's chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import EvomergeError
from .tasks import Item


class PromptError(EvomergeError):
    """A prompt template does not fit the items or the tokenizer."""


@dataclass(frozen=True)
class PromptTemplate:
    """``template`` formats an item (``{question}``, and ``{choices}`` for multiple choice);
    ``answer_template`` formats a few-shot example's answer after it."""

    template: str = "{question}"
    answer_template: str = "{answer}"
    separator: str = "\n"
    chat: bool = False  # wrap the prompt in the tokenizer's chat template

    def render(self, item: Item, fewshot: Sequence[Item] = (), tokenizer: PreTrainedTokenizerBase | None = None) -> str:
        shots = [self._one(shot) + self.answer_template.format(answer=_answer(shot)) for shot in fewshot]
        text = self.separator.join([*shots, self._one(item)])
        if not self.chat:
            return text
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PromptError("chat=True needs a tokenizer with a chat template; this one has none")
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )

    def _one(self, item: Item) -> str:
        choices = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(item.choices or ()))
        try:
            return self.template.format(question=item.question, choices=choices)
        except KeyError as err:
            raise PromptError(
                f"prompt template {self.template!r} uses {{{err.args[0]}}}; it may use {{question}} and {{choices}}"
            ) from err


def _answer(item: Item) -> str:
    if item.answer is not None:
        return item.answer
    assert item.choices is not None and item.label is not None
    return chr(ord("A") + item.label)
