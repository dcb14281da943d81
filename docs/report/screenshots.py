"""Screenshots of the report's figures, as Chromium shows them: one PNG per figure of the
demo run (one objective) and of the multi-objective example (a Pareto front).

    .venv/bin/python docs/report/screenshots.py [RUN_DIR ...]

Without arguments it runs both examples at a small budget into runs/screenshots-*.
Needs Debian's chromium (make browser) and the dev extra (Playwright).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def example_runs() -> list[Path]:
    from evomerge.loader import load_config
    from evomerge.search.experiment import resume_run, run_experiment

    runs = []
    for name, overrides in [("demo", []), ("multi-objective", ["search.generations=6"])]:
        run_dir = ROOT / "runs" / f"screenshots-{name}"
        if (run_dir / "run.sqlite").exists():
            resume_run(run_dir)
        else:
            run_experiment(load_config(ROOT / "examples" / f"{name}.yaml", overrides), run_dir)
        runs.append(run_dir)
    return runs


def shoot(run_dir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from evomerge.report import write_report

    report = write_report(run_dir)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(report.as_uri())
        for image in page.locator("img").all():
            alt = image.get_attribute("alt") or "figure"
            out = (
                OUT
                / f"{run_dir.name.removeprefix('screenshots-')}-{re.sub(r'[^a-z]+', '-', alt.lower()).strip('-')}.png"
            )
            image.screenshot(path=str(out))
            saved.append(out)
        browser.close()
    return saved


if __name__ == "__main__":
    runs = [Path(a).resolve() for a in sys.argv[1:]] or example_runs()
    for run in runs:
        for path in shoot(run):
            print(path.relative_to(ROOT))
