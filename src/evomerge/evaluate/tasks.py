"""Task items from JSONL or CSV files, and their deterministic splits.

An item is either generative (a question and its answer) or multiple choice (a
question, its choices and the index of the right one). Files name these fields as they
like; ``Columns`` maps them. Every problem with a file is reported with the file and
the row, so a user can fix the data instead of guessing.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvomergeError


class TaskDataError(EvomergeError):
    """A task file is missing, empty or malformed."""


@dataclass(frozen=True)
class Item:
    """One thing to score. ``id`` is stable across runs: per-item scores are stored by it."""

    id: str
    question: str
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_choice(self) -> bool:
        return self.choices is not None


@dataclass(frozen=True)
class Columns:
    """Which field of a row holds what. ``question`` falls back to ``prompt``."""

    question: str = "question"
    answer: str = "answer"
    choices: str = "choices"
    label: str = "label"
    id: str = "id"


def load_items(path: str | Path, columns: Columns | None = None, *, id_prefix: str = "") -> list[Item]:
    """Items from a ``.jsonl`` or ``.csv`` file (choices in CSV: a JSON list in one cell).

    A row without an id gets ``id_prefix`` plus its row number; other fields of a row
    are kept in ``meta`` (e.g. a subject, which stratified anchors can balance)."""
    path = Path(path).expanduser()
    columns = columns or Columns()
    if not path.is_file():
        raise TaskDataError(f"task file {path} not found")
    rows = list(_rows(path))
    if not rows:
        raise TaskDataError(f"{path}: no rows; a task needs at least one item")
    return [_item(str(path), number, row, columns, id_prefix) for number, row in rows]


def load_hf_dataset(
    name: str,
    *,
    split: str,
    config: str | None = None,
    columns: Columns | None = None,
    revision: str | None = None,
) -> list[Item]:
    """Items from a Hugging Face dataset (a hub name, which needs the network, or a local
    dataset directory). Rows are numbered from 1 in error messages."""
    from datasets import load_dataset

    label = f"{name}[{split}]"
    try:
        dataset = load_dataset(name, config, split=split, revision=revision)
    except Exception as err:  # datasets raises many types: not found, offline, bad config ...
        raise TaskDataError(f"dataset {label} could not be loaded: {err}") from err
    if len(dataset) == 0:
        raise TaskDataError(f"{label}: no rows; a task needs at least one item")
    columns = columns or Columns()
    return [_item(label, number, dict(row), columns) for number, row in enumerate(dataset, start=1)]


def _rows(path: Path) -> Any:
    suffix = path.suffix.lower()
    # utf-8-sig: a byte-order mark (Excel and Notepad write one) would otherwise become part
    # of the first column's name ('\ufeffquestion') or the first line's JSON.
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskDataError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
                if not isinstance(row, dict):
                    raise TaskDataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
                yield number, row
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                yield number, row
    else:
        raise TaskDataError(f"{path}: unknown task file type {suffix!r}; use .jsonl or .csv")


def _item(source: str, number: int, row: dict[str, Any], columns: Columns, id_prefix: str = "") -> Item:
    where = f"{source}, row {number}"
    row = {k: v for k, v in row.items() if v is not None}  # a null (or a column other rows have) is absent
    question_key = columns.question if columns.question in row else "prompt"
    if question_key not in row:
        raise TaskDataError(f"{where}: no {columns.question!r} (or 'prompt') column; columns are {sorted(row)}")
    question = str(row[question_key])
    item_id = str(row.get(columns.id, f"{id_prefix}{number}"))
    used = {question_key, columns.id, columns.answer, columns.choices, columns.label}
    meta = {k: v for k, v in row.items() if k not in used}
    if columns.choices in row and row[columns.choices] not in (None, ""):
        choices = _choices(where, row[columns.choices])
        if columns.label not in row:
            raise TaskDataError(f"{where}: has {columns.choices!r} but no {columns.label!r} column")
        label = _label(where, row[columns.label], choices)
        return Item(item_id, question, choices=choices, label=label, meta=meta)
    if columns.answer not in row:
        raise TaskDataError(
            f"{where}: needs {columns.answer!r}, or {columns.choices!r} and {columns.label!r}; "
            f"columns are {sorted(row)}"
        )
    return Item(item_id, question, answer=str(row[columns.answer]), meta=meta)


def _choices(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{where}: choices must be a list (in CSV, a JSON list), got {value!r}") from err
    if not isinstance(value, list) or len(value) < 2:
        raise TaskDataError(f"{where}: choices must be a list of at least two options, got {value!r}")
    return tuple(str(v) for v in value)


def _label(where: str, value: Any, choices: Sequence[str]) -> int:
    """An index into ``choices``, a letter (``"B"``), or the text of a choice."""
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif len(text) == 1 and text.upper().isalpha() and ord(text.upper()) - ord("A") < len(choices):
            value = ord(text.upper()) - ord("A")
        elif text in choices:
            value = choices.index(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
        raise TaskDataError(
            f"{where}: label {value!r} is not an index 0..{len(choices) - 1}, a letter or one of the choices"
        )
    return value


@dataclass(frozen=True)
class Splits:
    """``fewshot`` examples go into prompts and are never scored; ``search`` is what the
    search scores (anchors are drawn from it); ``test`` is held out until the end."""

    fewshot: tuple[Item, ...]
    search: tuple[Item, ...]
    test: tuple[Item, ...]


def split_items(items: Sequence[Item], *, seed: int, test_fraction: float = 0.5, fewshot: int = 0) -> Splits:
    """Deterministic from ``seed``: the same items and seed always give the same splits."""
    if not 0 < test_fraction < 1:
        raise TaskDataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise TaskDataError(f"item id {duplicate!r} appears twice; ids must be unique")
    order = sorted(items, key=lambda it: it.id)
    random.Random(seed).shuffle(order)
    shots, rest = order[:fewshot], order[fewshot:]
    n_test = round(len(rest) * test_fraction)
    if len(rest) < 2 or n_test in (0, len(rest)):
        raise TaskDataError(
            f"{len(items)} items cannot be split into {fewshot} few-shot, search and test items; add items"
        )
    return Splits(tuple(shots), tuple(rest[n_test:]), tuple(rest[:n_test]))
