from evomerge.demo.skills import CIPHERS, HARD_LETTERS, PROMPT_PREFIX, SKILLS, level, make_splits


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
        a, b = map(int, item["question"].rstrip("=").split("+"))
        assert int(item["answer"]) == a + b
        carries = a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10
        assert carries == (item["level"] == "hard")
    for script in ("greek", "cyrillic"):
        for item in make_splits(script, 50, 50, 200, seed=0)["test"]:
            prefix = f"{PROMPT_PREFIX[script]} "
            assert item["question"].startswith(prefix) and item["question"].endswith("=")
            plain = item["question"][len(prefix) : -1]
            assert item["answer"] == plain.translate(CIPHERS[script]) and item["answer"] != plain
            assert bool(HARD_LETTERS[script] & set(plain)) == (item["level"] == "hard")


def test_the_two_languages_have_different_hard_letters():
    assert not HARD_LETTERS["greek"] & HARD_LETTERS["cyrillic"]
