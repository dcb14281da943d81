"""Every Python block in the README runs, so the documented API cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS)
def test_readme_block_runs(code: str, demo_family: Path, monkeypatch, tmp_path: Path):
    """Each block runs in a scratch directory (its runs/ go there), with examples/ at hand."""
    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
