"""The synthetic skills of the demo family and their disjoint splits.

Three skills stand in for the specialisms of real fine-tunes:

- ``add``: addition of numbers below 100 (``47+38=`` -> ``85``), the "math" model;
- ``greek`` and ``cyrillic``: two "foreign languages", each a fixed letter cipher into
  its own alphabet (``gr bado=`` -> ``βαδο``, ``cy bado=`` -> ``бадо``). Greek also has
  numerals (Greek capitals, omicron for zero, as Greek astronomers wrote them), and its
  easy half includes sums written in them without carries (``ΔΑ+ΒΓ=`` -> ``ϚΔ``).

Each skill has an easy half and a hard half: addition without and with carries, and
for each language, words without and with the letters whose cipher only that
language's specialist is taught. The base learns the easy halves of every skill;
each specialist learns the hard half of one.

The composed task, ``greek_add``, is the EvoLLM-JP analogue (math in Japanese): sums
*with* carries written entirely in Greek numerals, operands and answer. A right sum in
digits is wrong there, as an answer in English was in Sakana's evaluation. It needs the
math specialist's carries and the language's numerals at once; no member of the family
is trained on it.

Why this shape (measured while building it):
- A base parked at "moderate skill" by stopping training mid-way is fragile: these
  skills are learned and forgotten in sharp jumps. A base that has fully learned the
  easy halves is stable, and its score is set by the share of easy items in a split.
- Skills that live on different tokens (digits; two output alphabets) give task
  vectors that add up. A string-reversal skill, whose hard half (longer strings) needs
  a new positional circuit, broke every merge it was part of.

Each item is a dict with ``question`` (the prompt, fed as is), ``answer`` (the exact
completion, scored by exact match), ``skill`` and ``level`` (``easy``/``hard``).
Splits are disjoint by question.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from .tokenizer import GREEK_NUMERALS, SCRIPTS

SKILLS = ("add", "greek", "cyrillic")
COMPOSED = "greek_add"  # carries (add's hard half) in Greek numerals: trained by no member
LETTERS = "abcdefghijklmnopqrstuvwxyz"
CIPHERS = {script: str.maketrans(LETTERS, letters) for script, letters in SCRIPTS.items()}
NUMERALS = str.maketrans("0123456789", GREEK_NUMERALS)
PROMPT_PREFIX = {"greek": "gr", "cyrillic": "cy"}
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
#: Per language, the letters the base never sees translated: their cipher is that
#: language's specialist's own. Disjoint, so the two specialists learn different things.
HARD_LETTERS = {"greek": frozenset("prstvwzu"), "cyrillic": frozenset("bdfhklmi")}

#: Words per translation item: short items keep a training step of the 6-layer family
#: near 0.2 s (three words made it 0.35 s, for no gain in what the merges show).
MAX_WORDS = 2

Item = dict[str, str]


def _word(rng: random.Random, consonants: str = _CONSONANTS, vowels: str = _VOWELS) -> str:
    """A pronounceable pseudo-word, so text looks like a language, not noise."""
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))


def _item(skill: str, question: str, answer: str, hard: bool) -> Item:
    return {"question": question, "answer": answer, "skill": skill, "level": "hard" if hard else "easy"}


def _sum(rng: random.Random, carries: bool) -> tuple[int, int]:
    while True:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if (a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10) == carries:
            return a, b


def _add(rng: random.Random, hard: bool) -> Item:
    a, b = _sum(rng, carries=hard)
    return _item("add", f"{a}+{b}=", str(a + b), hard)


def _greek_sum(rng: random.Random, carries: bool, skill: str) -> Item:
    a, b = _sum(rng, carries)
    return _item(skill, f"{a}+{b}=".translate(NUMERALS), str(a + b).translate(NUMERALS), carries)


def _greek_add(rng: random.Random, hard: bool) -> Item:
    """The composed task: every item carries (``hard`` is ignored: there is no easy half)."""
    return _greek_sum(rng, True, COMPOSED)


def _translate(script: str, rng: random.Random, hard: bool) -> Item:
    if script == "greek" and not hard and rng.random() < 0.5:  # numerals: sums without carries
        return _greek_sum(rng, False, script)
    hard_letters = HARD_LETTERS[script]
    if hard:
        while not hard_letters & set(text := " ".join(_word(rng) for _ in range(rng.randint(1, MAX_WORDS)))):
            pass
    else:
        easy_c = "".join(c for c in _CONSONANTS if c not in hard_letters)
        easy_v = "".join(v for v in _VOWELS if v not in hard_letters)
        text = " ".join(_word(rng, easy_c, easy_v) for _ in range(rng.randint(1, MAX_WORDS)))
    return _item(script, f"{PROMPT_PREFIX[script]} {text}=", text.translate(CIPHERS[script]), hard)


GENERATORS: dict[str, Callable[[random.Random, bool], Item]] = {
    "add": _add,
    "greek": partial(_translate, "greek"),
    "cyrillic": partial(_translate, "cyrillic"),
    COMPOSED: _greek_add,
}


def text_line(rng: random.Random) -> str:
    """A line of plain text in any of the three scripts: unsupervised language data."""
    line = " ".join(_word(rng) for _ in range(rng.randint(2, 4))) + "."
    script = rng.choice([None, *SCRIPTS])
    return line.translate(CIPHERS[script]) if script else line


def make_splits(
    skill: str, n_search: int, n_test: int, n_train: int, seed: int, hard_share: float = 0.6
) -> dict[str, list[Item]]:
    """Draw unique items and cut them into disjoint ``test``, ``search`` and ``train``.

    ``test`` and ``search`` hold ``hard_share`` hard items; ``train`` holds
    ``n_train`` of each level (fewer when a level runs out of distinct items). The
    composed task's items are all hard (``hard_share`` is 1 for it) and it has no train
    split: no member of the family is trained on it.
    """
    if skill == COMPOSED:
        hard_share, n_train = 1.0, 0
    rng = random.Random(f"{seed}-{skill}")
    gen = GENERATORS[skill]
    seen: set[str] = set()

    def draw(n: int, hard: bool) -> list[Item]:
        out: list[Item] = []
        misses = 0  # consecutive repeats: many in a row means the level is exhausted
        while len(out) < n and misses < 2000:
            item = gen(rng, hard)
            if item["question"] in seen:
                misses += 1
                continue
            misses = 0
            seen.add(item["question"])
            out.append(item)
        return out

    splits: dict[str, list[Item]] = {}
    for split, n in (("test", n_test), ("search", n_search)):
        n_hard = round(n * hard_share)
        items = draw(n_hard, True) + draw(n - n_hard, False)
        if len(items) < n:
            raise ValueError(f"skill {skill!r} has too few distinct items for a {split} split of {n}")
        rng.shuffle(items)
        splits[split] = items
    if n_train:
        train = draw(n_train, True) + draw(n_train, False)
        rng.shuffle(train)
        splits["train"] = train
    return splits


def level(items: list[Item], which: str) -> list[Item]:
    return [i for i in items if i["level"] == which]
