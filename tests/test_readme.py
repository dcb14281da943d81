"""Every Python block in the README and in docs/ runs, and what its print lines claim to
print is what they print (``doc_numbers``), so neither the documented API nor its numbers
can rot. (docs/tutorial.md's blocks share one session: ``test_tutorial``.) Every docs page
is linked from the README, and every relative link in them leads to a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_numbers import check_claim, run_and_check

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *(p for p in DOCS if p.name != "tutorial.md")]
BLOCKS = [
    pytest.param(page, code, id=f"{page.name}:{i + 1}")
    for page in PAGES
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S))
]


def test_readme_has_python_examples():
    assert any(page == README for page, _ in (b.values for b in BLOCKS))


@pytest.mark.slow
@pytest.mark.parametrize(("page", "code"), BLOCKS)
def test_doc_block_runs(page: Path, code: str, demo_family: Path, monkeypatch, tmp_path: Path):
    """Each block runs in a scratch directory (its runs/ go there), with examples/ at hand."""
    monkeypatch.setenv("EVOMERGE_DEMO_DIR", str(demo_family))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    assert run_and_check(code, str(page), {}) == []


def test_the_readme_is_a_newcomers_page_linking_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 15_000
    assert [p.name for p in DOCS if f"(docs/{p.name}" not in text] == []


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_lead_to_files(page: Path):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
    missing = [link for link in links if "://" not in link and not (page.parent / link).exists()]
    assert missing == []


def test_a_claim_that_differs_from_what_is_printed_fails():
    assert run_and_check("print(round(0.70612, 3))  # 0.706 (on 45 anchors)", "<doc>", {}) == []
    assert run_and_check("print(round(0.7091, 3))  # 0.706 (on 45 anchors)", "<doc>", {}) == [
        "<doc>:1: claims 0.706, printed 0.709 ('0.709')"
    ]
    assert check_claim("about 0.4", "0.3989") is None and check_claim("about 0.4", "0.46") is not None
    assert check_claim("4 generations, about 32 evaluations", "4 generations 32") is None
    assert check_claim("torch.Size([103, 256])", "torch.Size([103, 256])") is None
    assert check_claim("a stable hash", "9f86d08") is None  # prose
    assert run_and_check("x = 1\nprint('a')  # 1", "<doc>", {}) == [
        "<doc>:2: claims '1', but only 0 number(s) were printed: 'a'"
    ]
