"""report.html in a real browser: Debian's headless Chromium driven by Playwright opens
the file offline and checks that the test table and every figure are shown (images
decoded, not broken). A screenshot is kept next to the report for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evomerge.loader import load_config
from evomerge.search.experiment import run_experiment

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def multi_run(demo_family, tmp_path_factory):
    """The multi-objective example at a small budget: a Pareto front to draw."""
    config = load_config(
        ROOT / "examples" / "multi-objective.yaml",
        ["search.generations=2", "search.population_size=6", "fitness={estimator: mean, anchors: 20}"],
    )
    return run_experiment(config, tmp_path_factory.mktemp("report") / "multi")


def test_report_shows_the_table_and_the_figures_in_chromium(multi_run):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    report = multi_run.run_dir / "report.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(report.as_uri())
        rows = page.locator("table#tests tr").count()
        headers = page.locator("h2").all_inner_texts()
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        page.screenshot(path=str(multi_run.run_dir / "report-screenshot.png"), full_page=True)
        browser.close()
    assert rows == 1 + len(multi_run.tests)  # a header row, then every tested candidate
    for title in ("Held-out test", "Fitness per generation", "Pareto front", "Evolved genes",
                  "Estimated vs held-out score"):  # fmt: skip
        assert title in headers
    assert len(images) == 4
    assert all(complete and width > 300 and height > 200 for _, complete, width, height in images), images
    assert (multi_run.run_dir / "report-screenshot.png").stat().st_size > 20_000
