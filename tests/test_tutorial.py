"""docs/tutorial.md runs: its Python blocks, in order, in one namespace (as a reader
pastes them into one session), and its print lines print what they claim (``doc_numbers``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_numbers import run_and_check

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_the_tutorial_runs_block_by_block(demo_family: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    problems = []
    for i, code in enumerate(blocks):
        problems += run_and_check(code, f"{TUTORIAL}:block{i + 1}", namespace)
    assert problems == []
    assert namespace["result"].tests[0].name == "best"
