"""Pulling the answer out of a generated completion, and comparing it with the reference.

Each extractor returns a string (or None when it finds nothing); ``matches`` decides
whether it equals the reference in the extractor's sense. Numbers compare by value,
so ``1,234.0`` matches ``1234``; digits in other scripts (``١٢٣``, ``１２３``) are read
through Unicode's decimal values, and a ``digit_map`` adds what Unicode does not call a
decimal digit (e.g. ``{"〇": "0", "一": "1"}``).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?|[-+−]?\.\d+")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")


def to_ascii_digits(text: str, digit_map: Mapping[str, str] | None = None) -> str:
    """Unicode decimal digits (any script) and ``digit_map`` entries as ASCII digits."""
    out = []
    for ch in text:
        if digit_map and ch in digit_map:
            out.append(digit_map[ch])
        elif ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch)))
        elif ch == "，":  # full-width comma, common in CJK number formatting
            out.append(",")
        elif ch == "．":
            out.append(".")
        else:
            out.append(ch)
    return "".join(out)


def last_number(text: str, digit_map: Mapping[str, str] | None = None) -> str | None:
    """The last number in ``text``, canonical (``-1234.5``), or None."""
    found = _NUMBER.findall(to_ascii_digits(text, digit_map))
    if not found:
        return None
    return canonical_number(found[-1])


def canonical_number(text: str) -> str | None:
    cleaned = text.replace(",", "").replace("−", "-").lstrip("+")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    normal = value.normalize()
    return format(normal, "f") if normal != 0 else "0"


def normalize_text(text: str) -> str:
    """Case-folded, punctuation stripped, whitespace collapsed: for exact match."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def cannot_become(text: str, reference: str) -> bool:
    """True when no continuation of ``text`` can strip to ``reference`` (already stripped):
    strict exact match is settled as wrong. Conservative where decoding is still moving:
    a trailing U+FFFD (half a multi-byte character) and trailing whitespace are ignored."""
    head = text.lstrip().rstrip("\ufffd").rstrip()
    return not reference.startswith(head)


def regex_answer(text: str, pattern: str) -> str | None:
    """The first group of the first match (or the whole match when there is no group)."""
    match = re.search(pattern, text)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def choice_letter(text: str, n_choices: int) -> str | None:
    """The first standalone capital letter that names a choice: ``B``, ``(C)``, ``Answer: D``."""
    for match in _LETTER.finditer(text):
        letter = match.group(1)
        if ord(letter) - ord("A") < n_choices:
            return letter
    return None
