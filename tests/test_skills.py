from evomerge.demo.skills import (
    CIPHERS,
    COMPOSED,
    HARD_LETTERS,
    NUMERALS,
    PROMPT_PREFIX,
    SKILLS,
    level,
    make_splits,
)
from evomerge.demo.tokenizer import GREEK_NUMERALS

FROM_NUMERALS = str.maketrans(GREEK_NUMERALS, "0123456789")


def _sum(question: str, answer: str) -> tuple[int, int, int, bool]:
    a, b = map(int, question.rstrip("=").split("+"))
    return a, b, int(answer), a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10


def test_splits_are_disjoint_deterministic_and_stratified():
    for skill in SKILLS:
        a = make_splits(skill, 50, 50, 500, seed=3)
        assert a == make_splits(skill, 50, 50, 500, seed=3)
        assert make_splits(skill, 50, 50, 500, seed=4)["test"] != a["test"]
        questions = {split: {i["question"] for i in items} for split, items in a.items()}
        assert len(questions["test"]) == 50 and len(questions["search"]) == 50
        assert not questions["test"] & questions["search"]
        assert not questions["train"] & (questions["test"] | questions["search"])
        assert len(level(a["test"], "hard")) == 30  # hard_share 0.6
        assert len(level(a["train"], "hard")) == len(level(a["train"], "easy")) == 500


def test_answers_are_correct_and_levels_mean_what_they_say():
    for item in make_splits("add", 50, 50, 200, seed=0)["test"]:
        a, b, total, carries = _sum(item["question"], item["answer"])
        assert total == a + b and carries == (item["level"] == "hard")
    sums = 0
    for script in ("greek", "cyrillic"):
        for item in make_splits(script, 50, 50, 200, seed=0)["test"]:
            if script == "greek" and item["question"][0] in GREEK_NUMERALS:  # a sum in Greek numerals
                sums += 1
                a, b, total, carries = _sum(*(item[k].translate(FROM_NUMERALS) for k in ("question", "answer")))
                assert total == a + b and not carries and item["level"] == "easy"
                assert item["answer"] == str(total).translate(NUMERALS)
                continue
            prefix = f"{PROMPT_PREFIX[script]} "
            assert item["question"].startswith(prefix) and item["question"].endswith("=")
            plain = item["question"][len(prefix) : -1]
            assert item["answer"] == plain.translate(CIPHERS[script]) and item["answer"] != plain
            assert bool(HARD_LETTERS[script] & set(plain)) == (item["level"] == "hard")

    assert 5 <= sums <= 15, "about half of Greek's easy items (20 of 50) are sums in its numerals"


def test_the_composed_task_is_sums_with_carries_written_only_in_greek_numerals():
    splits = make_splits(COMPOSED, 100, 100, 500, seed=0)
    assert set(splits) == {"test", "search"}  # no train split: no member learns it
    assert not {i["question"] for i in splits["test"]} & {i["question"] for i in splits["search"]}
    for item in splits["test"] + splits["search"]:
        assert set(item["question"]) <= set(GREEK_NUMERALS + "+=") and set(item["answer"]) <= set(GREEK_NUMERALS)
        a, b, total, carries = _sum(*(item[k].translate(FROM_NUMERALS) for k in ("question", "answer")))
        assert total == a + b and carries and item["level"] == "hard"


def test_the_two_languages_have_different_hard_letters():
    assert not HARD_LETTERS["greek"] & HARD_LETTERS["cyrillic"]
