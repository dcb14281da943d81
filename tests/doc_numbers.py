"""Run a documentation code block and check what its ``print`` lines claim to print.

A line ``print(...)  # claim`` in a README or tutorial block makes a claim, checked so:

- if the printed text equals the claim, it holds;
- else the numbers the claim starts with (after an optional "about") are compared, in
  order, with the first numbers printed, each within half a unit of its last shown
  digit (``# 0.706`` holds for 0.7055..0.7065, ``# about 0.4`` for 0.35..0.45);
- a claim that starts with words and is not the exact text is prose, and is not checked.

So a doc that states a number which the code no longer prints fails its test.
"""

from __future__ import annotations

import builtins
import re
import sys
from collections import defaultdict
from typing import Any

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
CLAIM = re.compile(r"^\s*print\(.*\)\s*#\s*(?P<claim>.+?)\s*$")


def leading_numbers(claim: str) -> list[str]:
    tokens = claim.split()
    if tokens and tokens[0] in ("about", "~", "≈"):
        tokens = tokens[1:]
    numbers = []
    for token in tokens:
        token = token.rstrip(",;:")
        if not NUMBER.fullmatch(token):
            break
        numbers.append(token)
    return numbers


def check_claim(claim: str, printed: str) -> str | None:
    """None if ``printed`` bears ``claim`` out, else what differs."""
    if claim == printed.strip():
        return None
    wanted = leading_numbers(claim)
    got = NUMBER.findall(printed)
    for i, want in enumerate(wanted):
        if i >= len(got):
            return f"claims {want!r}, but only {len(got)} number(s) were printed: {printed!r}"
        decimals = len(want.partition(".")[2]) if "." in want and "e" not in want else 0
        if abs(float(want) - float(got[i])) > 0.5 * 10**-decimals + 1e-12:
            return f"claims {want}, printed {got[i]} ({printed!r})"
    return None


def run_and_check(code: str, filename: str, namespace: dict[str, Any]) -> list[str]:
    """Execute ``code`` in ``namespace``; return one message per claim that does not hold."""
    printed: dict[int, list[str]] = defaultdict(list)

    def recording_print(*args: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
        frame = sys._getframe(1)
        if file is None and frame.f_code.co_filename == filename:
            printed[frame.f_lineno].append(sep.join(str(a) for a in args))
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

    namespace["print"] = recording_print
    exec(compile(code, filename, "exec"), namespace)
    problems = []
    for lineno, line in enumerate(code.splitlines(), 1):
        match = CLAIM.match(line)
        if match is None:
            continue
        if lineno not in printed:
            problems.append(f"{filename}:{lineno}: never printed ({line.strip()})")
            continue
        problem = check_claim(match["claim"], " ".join(printed[lineno]))
        if problem:
            problems.append(f"{filename}:{lineno}: {problem}")
    return problems
