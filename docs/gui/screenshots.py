"""Screenshots of the GUI's pages, as Chromium shows them, for the README.

    .venv/bin/python docs/gui/screenshots.py

Starts `evomerge gui` on a free port (runs in a temporary folder), launches the demo
preset at a small budget, and saves each page once the run has finished.
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
            for elem_id, value in (("population", "8"), ("generations", "6")):
                page.locator(f"#{elem_id} input").fill(value)
                page.locator("h1").click()  # leave the field: its change applies
            time.sleep(1)
            page.screenshot(path=str(OUT / "new-experiment.png"), full_page=True)
            page.locator("#launch").click()
            page.get_by_role("tab", name="Monitor").click()
            page.wait_for_function(
                "document.querySelector('#progress').innerText.startsWith('finished')", timeout=300_000
            )
            page.wait_for_function("document.querySelector('#tests').innerText.includes('default')", timeout=60_000)
            page.screenshot(path=str(OUT / "monitor.png"), full_page=True)
            page.get_by_role("tab", name="Runs").click()
            page.locator("#refresh").click()
            time.sleep(2)
            page.screenshot(path=str(OUT / "runs.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("new-experiment", "monitor", "runs"):
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
