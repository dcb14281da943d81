"""Screenshots of the GUI's pages, as Chromium shows them, for the README.

    .venv/bin/python docs/gui/screenshots.py

Starts `evomerge gui` on a free port (runs in a temporary folder), launches the
multi-objective demo preset at a small budget, and saves each page once the run has
finished: the form, the monitor (fitness and Pareto front), the runs page with the run
chosen, and a prompt tried on the run's best candidate.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
            page.get_by_label("multi-objective, custom data (demo)").check()
            page.wait_for_function("document.querySelector('#config').innerText.includes('NSGA2')")
            for elem_id, value in (("population", "8"), ("generations", "6")):
                page.locator(f"#{elem_id} input").fill(value)
                page.locator("h1").click()  # leave the field: its change applies
            page.locator("#run-name textarea, #run-name input").first.fill("demo-pareto")
            time.sleep(1)
            page.screenshot(path=str(OUT / "new-experiment.png"), full_page=True)
            page.locator("#launch").click()
            page.get_by_role("tab", name="Monitor").click()
            page.wait_for_function(
                "document.querySelector('#progress').innerText.includes('finished |')", timeout=300_000
            )
            page.wait_for_function("document.querySelector('#tests').innerText.includes('default')", timeout=60_000)
            time.sleep(2)
            page.screenshot(path=str(OUT / "monitor.png"), full_page=True)
            page.get_by_role("tab", name="Runs").click()
            page.locator("#runs").get_by_text("demo-pareto", exact=True).locator("visible=true").first.click()
            page.wait_for_function("document.querySelector('#runs-tests').innerText.includes('default')")
            time.sleep(1)
            page.screenshot(path=str(OUT / "runs.png"), full_page=True)
            page.get_by_role("tab", name="Try a model").click()
            page.locator("#try-run textarea, #try-run input").first.fill("demo-pareto")
            page.locator("#prompt textarea").fill("gr bado=")
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#answered-by').innerText.includes('From')", timeout=120_000)
            page.screenshot(path=str(OUT / "try-a-model.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("new-experiment", "monitor", "runs", "try-a-model"):
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
