"""Screenshots of the GUI's pages, as Chromium shows them, for the README.

    .venv/bin/python docs/gui/screenshots.py

Starts `evomerge gui` on a free port (runs in a temporary folder), launches the
multi-objective demo preset at a small budget, then the single-objective one, and saves
each page once the runs have finished: the form, the monitor (fitness and Pareto front;
also 400 px wide, and in dark mode), the runs page with the run chosen, the two runs
compared, and a prompt tried on the run's best candidate.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def main() -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = Path(tempfile.mkdtemp()) / "runs"
    server = subprocess.Popen([sys.executable, "-m", "evomerge", "gui", "--port", str(port), "--runs", str(runs)])
    try:
        for _ in range(240):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("#launch")
            launch(page, "multi-objective, custom data (demo)", "NSGA2", "demo-pareto")
            page.screenshot(path=str(OUT / "new-experiment.png"), full_page=True)
            page.locator("#launch").click()
            page.wait_for_function("document.querySelector('#message').innerText.includes('Started')")
            watch_to_the_end(page)
            page.screenshot(path=str(OUT / "monitor.png"), full_page=True)
            page.set_viewport_size({"width": 400, "height": 900})
            time.sleep(1)
            page.screenshot(path=str(OUT / "monitor-narrow.png"), full_page=True)
            page.set_viewport_size({"width": 1300, "height": 1000})
            dark = browser.new_page(viewport={"width": 1300, "height": 1000}, color_scheme="dark")
            dark.goto(f"http://127.0.0.1:{port}/?__theme=dark")
            choose(dark, "Monitor", "monitor-run", "demo-pareto")
            dark.wait_for_function("document.querySelector('#fitness img') !== null", timeout=60_000)
            time.sleep(2)
            dark.screenshot(path=str(OUT / "monitor-dark.png"), full_page=True)
            launch(page, "single objective, custom data (demo)", "algorithm: GA", "demo-single")
            page.locator("#launch").click()
            page.wait_for_function("document.querySelector('#message').innerText.includes('Started')")
            watch_to_the_end(page)
            page.get_by_role("tab", name="Runs").click()
            page.locator('#runs [role=gridcell][data-col="0"]').get_by_text("demo-pareto", exact=True).click()
            page.wait_for_function("document.querySelector('#runs-tests').innerText.includes('default')")
            time.sleep(1)
            page.screenshot(path=str(OUT / "runs.png"), full_page=True)
            choose(page, "Compare", "compare-runs", "demo-pareto")
            choose(page, "Compare", "compare-runs", "demo-single")
            page.locator("#compare").click()
            page.wait_for_function("document.querySelector('#compare-tests').innerText.includes('demo-single')")
            time.sleep(1)
            page.screenshot(path=str(OUT / "compare.png"), full_page=True)
            choose(page, "Try a model", "try-run", "demo-pareto")
            page.locator("#prompt textarea").fill("gr bado=")
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#answered-by').innerText.includes('From')", timeout=120_000)
            page.screenshot(path=str(OUT / "try-a-model.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("new-experiment", "monitor", "monitor-narrow", "monitor-dark", "runs", "compare", "try-a-model"):
        print(OUT / f"{name}.png")


def launch(page: Any, preset: str, shows: str, name: str) -> None:
    """The preset at a small budget, named ``name``, ready to launch."""
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label(preset).check()
    page.wait_for_function(f"document.querySelector('#config').innerText.includes({shows!r})")
    for elem_id, value in (("population", "8"), ("generations", "6")):
        page.locator(f"#{elem_id} input").fill(value)
        page.locator("h1").click()  # leave the field: its change applies
    page.locator("#run-name textarea, #run-name input").first.fill(name)
    time.sleep(1)


def watch_to_the_end(page: Any) -> None:
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_function("document.querySelector('#progress').innerText.includes('finished |')", timeout=300_000)
    page.wait_for_function("document.querySelector('#tests').innerText.includes('default')", timeout=60_000)
    time.sleep(2)


def choose(page: Any, tab: str, elem_id: str, option: str) -> None:
    """An option of a page's picker (its list is read when the tab opens)."""
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_role("tab", name=tab).click()
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


if __name__ == "__main__":
    main()
