"""Task files, splits, prompts and answer extraction: pure functions, checked case by case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.evaluate import extract
from evomerge.evaluate.prompts import PromptError, PromptTemplate
from evomerge.evaluate.tasks import Columns, Item, TaskDataError, load_items, split_items


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_generative_and_choice_items(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"id": "q1", "question": "2+2=", "answer": "4"},
            {"prompt": "Capital of France?", "choices": ["Rome", "Paris"], "label": "B"},
            {"question": "Colour of snow?", "choices": ["white", "black", "red"], "label": "white"},
        ],
    )
    items = load_items(path)
    assert items[0] == Item("q1", "2+2=", answer="4")
    assert items[1].question == "Capital of France?" and items[1].label == 1 and items[1].id == "2"
    assert items[2].label == 0 and items[2].is_choice


def test_csv_with_custom_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('q,gold,opts,y\n"1+1=",2,,\n"Pick",,"[""x"", ""y""]",1\n')
    items = load_items(path, Columns(question="q", answer="gold", choices="opts", label="y"))
    assert items[0].answer == "2" and items[0].id == "2"  # ids default to the line number
    assert items[1].choices == ("x", "y") and items[1].label == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"t.jsonl: no rows"),
        ('{"question": "a", "answer": "b"}\n{"answer": "c"}\n', r"t.jsonl, row 2: no 'question' \(or 'prompt'\)"),
        ('{"question": "a"}\n', r"row 1: needs 'answer', or 'choices' and 'label'"),
        ('{"question": "a", "choices": ["x", "y"], "label": 2}\n', r"row 1: label 2 is not an index 0..1"),
        ('{"question": "a", "choices": ["x", "y"], "label": "Z"}\n', r"label 'Z'"),
        ('{"question": "a", "choices": ["x", "y"]}\n', r"row 1: has 'choices' but no 'label'"),
        ('{"question": "a", "choices": "x", "label": 0}\n', r"choices must be a list"),
        ('{"question": "a", "answer": "b"}\nnot json\n', r"line 2: not valid JSON"),
        ("[1, 2]\n", r"line 1: expected a JSON object"),
    ],
)
def test_bad_task_files_name_the_file_and_row(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message):
        load_items(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(TaskDataError, match="not found"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "t.parquet").write_text("x")
    with pytest.raises(TaskDataError, match="unknown task file type"):
        load_items(tmp_path / "t.parquet")


def test_splits_are_deterministic_disjoint_and_keep_fewshot_out():
    items = [Item(str(i), f"q{i}", answer=str(i)) for i in range(50)]
    a = split_items(items, seed=3, test_fraction=0.4, fewshot=5)
    b = split_items(list(reversed(items)), seed=3, test_fraction=0.4, fewshot=5)
    assert a == b  # input order does not matter, the seed does
    assert a != split_items(items, seed=4, test_fraction=0.4, fewshot=5)
    ids = [set(it.id for it in part) for part in (a.fewshot, a.search, a.test)]
    assert sum(map(len, ids)) == 50 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(a.fewshot) == 5 and len(a.test) == 18


def test_split_errors():
    with pytest.raises(TaskDataError, match="appears twice"):
        split_items([Item("1", "a", answer="b"), Item("1", "c", answer="d")], seed=0)
    with pytest.raises(TaskDataError, match="cannot be split"):
        split_items([Item("1", "a", answer="b")], seed=0)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 1,234.", "1234"),
        ("so x = -5.50 dollars", "-5.5"),
        ("first 3 then 7", "7"),
        ("答えは３４です", "34"),  # full-width digits
        ("الجواب ٤٢", "42"),  # Arabic-Indic digits
        ("+12.0", "12"),
        ("no digits here", None),
        ("0.0", "0"),
    ],
)
def test_last_number(text, number):
    assert extract.last_number(text) == number


def test_last_number_with_a_digit_map():
    kanji = dict(zip("〇一二三四五六七八九", "0123456789", strict=True))
    assert extract.last_number("答えは四二", digit_map=kanji) == "42"
    assert extract.last_number("答えは四二") is None


def test_text_extractors():
    assert extract.normalize_text("  The Answer!  ") == extract.normalize_text("the answer")
    assert extract.regex_answer("Final: 42 units", r"Final: (\d+)") == "42"
    assert extract.regex_answer("nothing", r"Final: (\d+)") is None
    assert extract.choice_letter("Answer: (C) because", 4) == "C"
    assert extract.choice_letter("Answer is A", 4) == "A"
    assert extract.choice_letter("I pick E", 4) is None  # 'I' is a word, E is out of range


@pytest.mark.parametrize(
    ("text", "settled"),
    [
        ("", False),
        ("  ", False),  # leading whitespace: strip() drops it
        ("12", False),  # a prefix of the answer
        (" 123", False),  # the answer itself: it may still stop here
        ("123  ", False),  # the answer and trailing whitespace: strip() drops it
        ("12\ufffd", False),  # half a character: the next token may complete it
        ("124", True),
        ("1234", True),  # one more character after the answer: strip() keeps it
        ("123 4", True),
        ("x", True),
    ],
)
def test_cannot_become_settles_a_strict_exact_match_only_when_no_continuation_is_right(text, settled):
    assert extract.cannot_become(text, "123") is settled
    # and it agrees with the strict comparison on every continuation tried
    if settled:
        assert all((text + tail).strip() != "123" for tail in ("", "3", "23", "123", "\n", " "))


def test_cannot_become_an_empty_answer():
    assert not extract.cannot_become(" \t", "")
    assert extract.cannot_become("0", "")


def test_prompt_template_with_fewshot_and_choices():
    shots = (Item("s", "1+1=", answer="2"), Item("c", "Pick", choices=("x", "y"), label=1))
    template = PromptTemplate("Q: {question}\n{choices}A:", answer_template=" {answer}\n")
    text = template.render(Item("t", "2+2=", answer="4"), shots)
    assert text == "Q: 1+1=\nA: 2\n\nQ: Pick\nA. x\nB. yA: B\n\nQ: 2+2=\nA:"
    with pytest.raises(PromptError, match=r"uses \{answer\}"):
        PromptTemplate("{answer}").render(Item("t", "q", answer="a"))
    with pytest.raises(PromptError, match="chat template"):
        PromptTemplate(chat=True).render(Item("t", "q", answer="a"))


def test_a_task_config_maps_the_files_columns(tmp_path):
    """The config's `columns` does what the Python API's Columns does: a file that says
    problem/solution/uid is read without renaming its columns."""
    from evomerge.config import ConfigError
    from evomerge.evaluate.evaluator import evaluator_for
    from evomerge.loader import load_config

    rows = [{"uid": f"q{i}", "problem": f"{i}+1=", "solution": str(i + 1)} for i in range(10)]
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": "math", "data": str(data), "columns": {"question": "problem", "answer": "solution", "id": "uid"}}
    config = load_config({"models": {"base": "o", "endpoints": ["a", "b"]}, "tasks": [task]}, resolve_demo=False)
    splits = evaluator_for(config.tasks[0]).splits
    items = {it.id: it for it in [*splits.search, *splits.test]}
    assert len(items) == 10 and items["q3"].question == "3+1=" and items["q3"].answer == "4"
    unmapped = {**task, "columns": {}}
    with pytest.raises(TaskDataError, match="no 'question'"):
        evaluator_for(
            load_config(
                {"models": {"base": "o", "endpoints": ["a", "b"]}, "tasks": [unmapped]}, resolve_demo=False
            ).tasks[0]
        )
    with pytest.raises(ConfigError, match="did you mean 'answer'"):
        load_config({"models": {"base": "o", "endpoints": ["a", "b"]}, "tasks": [{**task, "columns": {"answr": "x"}}]})
