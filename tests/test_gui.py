"""`evomerge gui` in a real browser: the server runs in a subprocess on a free port and
Debian's Chromium, driven by Playwright, uses it as a person would: preset, budget,
launch, watch, stop, resume. The runs it starts are real `evomerge run` processes."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evomerge.search.store import TIME_COLUMNS

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

POP, GENERATIONS = 8, 6  # about 10 s of search here: long enough to watch and to stop
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_address() -> str | None:
    """This machine's address on its network (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def server(demo_family, tmp_path_factory):
    runs = tmp_path_factory.mktemp("gui") / "runs"
    port = free_port()
    env = {**os.environ, "EVOMERGE_DEMO_DIR": str(demo_family)}
    command = [sys.executable, "-m", "evomerge", "gui", "--port", str(port), "--runs", str(runs)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", port, runs
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(server[0])
        page.wait_for_selector("#launch", timeout=60_000)
        yield page
        browser.close()


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def launch(page, name: str, population: int, generations: int) -> None:
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label("multi-objective, custom data (demo)").check()  # then back: the form is the preset's again
    page.wait_for_function("document.querySelector('#config').innerText.includes('NSGA2')")
    page.get_by_label("single objective, custom data (demo)").check()
    page.wait_for_function("document.querySelector('#config').innerText.includes('algorithm: GA')")
    set_number(page, "population", population)
    set_number(page, "generations", generations)
    page.locator("#run-name textarea, #run-name input").first.fill(name)
    page.wait_for_function(
        "([p, g]) => { const t = document.querySelector('#config').innerText;"
        " return t.includes('population_size: ' + p) && t.includes('generations: ' + g); }",
        arg=[str(population), str(generations)],
        timeout=30_000,
    )
    page.locator("#launch").click()


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def wait_for(page, condition, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = progress(page)
        if condition(text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"timed out; progress shows: {progress(page)}")


def evaluations(text: str) -> int:
    match = re.search(r"(\d+) evaluations", text)
    return int(match[1]) if match else 0


def csv_without_times(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(path.open())]


def test_a_bad_population_shows_the_message_and_starts_nothing(page, server):
    launch(page, "bad", population=-3, generations=2)
    page.wait_for_function("document.querySelector('#message').innerText.includes('Not started')", timeout=30_000)
    assert "population_size" in page.locator("#message").inner_text()
    assert not (server[2] / "bad").exists()


def watch_until_finished(page, timeout: float = 300) -> tuple[list[str], set[str]]:
    """Every distinct progress line, and every fitness image, seen until the run finished."""
    lines: list[str] = []
    images: set[str] = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = progress(page)
        if not lines or text != lines[-1]:
            lines.append(text)
        image = page.locator("#fitness img")
        if image.count():
            images.add(image.first.get_attribute("src") or "")
        if text.startswith("finished"):
            return lines, images
        time.sleep(0.2)
    raise AssertionError(f"timed out; progress shows: {progress(page)}")


def test_launch_watch_and_test_table(page, server):
    launch(page, "a", population=POP, generations=GENERATIONS)
    page.wait_for_function("document.querySelector('#message').innerText.includes('Started')", timeout=30_000)
    page.get_by_role("tab", name="Monitor").click()
    lines, images = watch_until_finished(page)
    running = [line for line in lines if line.startswith("running")]
    assert len({evaluations(line) for line in running}) >= 2, lines  # the progress moved while it ran
    assert len(images - {""}) >= 2, images  # and the fitness plot was redrawn
    assert f"generation {GENERATIONS}/{GENERATIONS} | {POP * GENERATIONS} evaluations" in lines[-1]
    page.wait_for_function("document.querySelector('#tests').innerText.includes('default task_arithmetic')")
    table = page.locator("#tests").inner_text()
    assert all(name in table for name in ("candidate", "mix", "best", "endpoint:greek", "base"))
    assert (server[2] / "a" / "results.json").exists()


def test_the_yaml_downloads_and_a_pasted_config_fills_the_form(page, server):
    page.get_by_role("tab", name="New experiment").click()
    set_number(page, "population", 6)
    page.wait_for_function("document.querySelector('#config').innerText.includes('population_size: 6')")
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = yaml.safe_load(Path(download.value.path()).read_text())
    assert saved["search"]["population_size"] == 6 and saved["models"]["base"] == "demo:models/base"
    pasted = {**saved, "search": {**saved["search"], "population_size": 11, "algorithm": "DE"}}
    page.locator("#config .cm-content").fill(yaml.safe_dump(pasted, sort_keys=False))  # as a paste would
    page.locator("#load").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('Loaded')")
    assert page.locator("#population input").input_value() == "11"


def test_try_a_model_generates_from_an_evaluated_candidate(page, server):
    """Run `a` (finished above): its best recipe, merged in memory, answers a cipher prompt."""
    page.get_by_role("tab", name="Try a model").click()
    page.locator("#try-run textarea, #try-run input").first.fill("a")
    page.locator("#prompt textarea").fill("gr bado=")
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#completion textarea').value.length > 0", timeout=120_000)
    assert page.locator("#completion textarea").input_value().startswith("βαδο")


def test_stop_then_resume_finishes_with_the_same_results(page, server):
    launch(page, "b", population=POP, generations=GENERATIONS)
    page.get_by_role("tab", name="Monitor").click()
    wait_for(page, lambda t: t.startswith("running") and evaluations(t) >= POP)
    page.locator("#stop").click()
    wait_for(page, lambda t: t.startswith("interrupted"), timeout=120)
    stopped_at = evaluations(progress(page))
    assert stopped_at < POP * GENERATIONS, "the run finished before it was stopped"
    page.locator("#resume").click()
    wait_for(page, lambda t: t.startswith("finished"))
    runs = server[2]
    assert csv_without_times(runs / "b" / "evaluations.csv") == csv_without_times(runs / "a" / "evaluations.csv")


def test_the_server_answers_on_loopback_only(server):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(OSError):
        socket.create_connection((address, server[1]), timeout=3).close()


def test_without_the_extra_the_command_names_it():
    """Gradio is installed here; the import is made to fail as if it were not."""
    code = "import sys; sys.modules['gradio'] = None; from evomerge.cli import app; app(['gui'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "pip install 'evomerge[gui]'" in out.stdout
