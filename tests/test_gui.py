"""`evomerge gui` in a real browser: the server runs in a subprocess on a free port and
Debian's Chromium, driven by Playwright, uses it as a person would: preset, budget,
launch, watch, stop, resume. The runs it starts are real `evomerge run` processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import csv_without_times, resume_cli, small_config

pytestmark = pytest.mark.slow  # end-to-end: `make check` skips it, `make test` (CI) runs it

POP, GENERATIONS = 4, 5  # scored on every item of the small mix task; long enough to be stopped mid-run
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
def small_tasks(demo_family) -> str:
    """The small mix task, as YAML for the Tasks box."""
    return yaml.safe_dump(small_config(demo_family)["tasks"], sort_keys=False)


@pytest.fixture(scope="module")
def server(demo_family, tmp_path_factory):
    runs = tmp_path_factory.mktemp("gui") / "runs"
    port = free_port()
    env = {**os.environ, "EVOMERGE_DEMO_DIR": str(demo_family)}
    command = [sys.executable, "-m", "evomerge", "gui", "--port", str(port), "--runs", str(runs)]
    # SIGINT ignored, as `nohup evomerge gui &` starts it: the runs it starts inherit that,
    # and Stop (SIGINT) must still stop them (test_stop_then_resume_finishes_with_the_same_results).
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731  (in the child, before exec)
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", port, runs, {}  # the last: what one test leaves the next
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


def choose(page, elem_id: str, option: str) -> None:
    """Pick a dropdown's option as a person does: open it, click the option."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def pick_run(page, tab: str, elem_id: str, name: str, timeout: float = 60) -> None:
    """Choose run ``name`` in a page's run picker; its list is read when the tab is opened,
    so the tab is opened again until a run just started elsewhere is listed."""
    deadline = time.time() + timeout
    while True:
        page.get_by_role("tab", name="New experiment").click()
        page.get_by_role("tab", name=tab).click()
        page.locator(f"#{elem_id} input").click()
        option = page.get_by_role("option", name=name, exact=True)
        try:
            option.click(timeout=2_000)
            page.keyboard.press("Escape")  # a multiselect stays open
            return
        except Exception:
            page.keyboard.press("Escape")
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def config_shows(page, *texts: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "texts => texts.every(t => document.querySelector('#config').innerText.includes(t))",
        arg=list(texts),
        timeout=timeout,
    )


def launch(page, name: str, population: int, generations: int, tasks: str) -> None:
    """The demo preset with the given budget, every candidate scored on all its items: the
    items of the small mix task, typed into the Tasks box (plumbing: a sixth of the cost)."""
    fill_form(page, name, population, generations, tasks)
    page.locator("#launch").click()


def fill_form(page, name: str, population: int, generations: int, tasks: str) -> None:
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label("multi-objective, custom data (demo)").check()  # then back: the form is the preset's again
    config_shows(page, "NSGA2")
    page.get_by_label("single objective, custom data (demo)").check()
    config_shows(page, "algorithm: GA")
    set_number(page, "population", population)
    set_number(page, "generations", generations)
    choose(page, "estimator", "full")
    page.locator("#tasks .cm-content").fill(tasks)
    config_shows(page, "evomerge-test-tasks")
    page.locator("#run-name textarea, #run-name input").first.fill(name)
    config_shows(page, f"population_size: {population}", f"generations: {generations}", "estimator: full")


#: The first column of the Runs page's table: the run names.
RUN_CELLS = '#runs [role=gridcell][data-col="0"]'

#: The monitor's line (the box also shows Gradio's own "processing | 0.1s" while it updates).
STATUS_LINE = r"^(running|finished|interrupted|empty) \|.*$"


def progress(page) -> str:
    match = re.search(STATUS_LINE, page.locator("#progress").inner_text(), re.MULTILINE)
    return match[0] if match else ""


def wait_for(page, condition, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = progress(page)
        if condition(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out; progress shows: {progress(page)}")


def evaluations(text: str) -> int:
    match = re.search(r"(\d+) evaluations", text)
    return int(match[1]) if match else 0


#: Records, in the page itself, every progress line and fitness picture the monitor shows
#: (each with the progress line shown beside it), so that no state is missed between polls.
RECORDER = """STATUS_LINE => {
  const seen = window.__seen = {progress: [], images: []};
  const record = () => {
    const found = document.querySelector('#progress').innerText.match(new RegExp(STATUS_LINE, 'm'));
    if (!found) return;
    const line = found[0];
    if (!seen.progress.length || seen.progress[seen.progress.length - 1] !== line) seen.progress.push(line);
    const img = document.querySelector('#fitness img');
    if (img && img.src && !seen.images.some(([src]) => src === img.src)) seen.images.push([img.src, line]);
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                       attributes: true});
}"""


def test_a_bad_population_shows_the_message_by_the_field_and_starts_nothing(page, server, small_tasks):
    launch(page, "bad", population=-3, generations=2, tasks=small_tasks)
    page.wait_for_function("document.querySelector('#message').innerText.includes('Not started')", timeout=30_000)
    page.wait_for_function("document.querySelector('#population-error').innerText.includes('must be 1 or more')")
    # while its event is pending, Gradio's status tracker shows a timer on each output ("0.0s",
    # "processing | 0.1s", "queue: 1/2 | 0.0s", "0.2/1.5s"): wait it out
    page.wait_for_function(r"!/\d(\.\d+)?s\s*$/.test(document.querySelector('#generations-error').innerText)")
    assert page.locator("#generations-error").inner_text().strip() == ""  # only the field at fault
    assert not (server[2] / "bad").exists()
    set_number(page, "population", POP)  # fixed: the message goes
    page.wait_for_function("document.querySelector('#population-error').innerText.trim() === ''")
    shown = yaml.safe_load(page.locator("#config .cm-content").inner_text())
    page.locator("#config .cm-content").fill(yaml.safe_dump({**shown, "outputs": {"run_dir": "x"}}))
    page.locator("#launch").click()  # a problem that no field shows is said under the form
    page.wait_for_function(  # (the edit's check said it first, in the summary box)
        "document.querySelector('#message').innerText.includes(\"did you mean 'output'\")", timeout=30_000
    )
    assert "Not started" in page.locator("#message").inner_text()
    assert not (server[2] / "bad").exists()


@pytest.mark.parametrize("box", ["tasks", "options", "frozen", "bounds"])
def test_broken_yaml_in_a_box_is_said_under_it_and_launch_waits(box, page, server, small_tasks):
    """It used to be dropped in silence: the YAML view kept the last valid value and Launch
    ran a config the user never wrote."""
    fill_form(page, f"broken-{box}", population=POP, generations=2, tasks=small_tasks)
    page.locator(f"#{box} .cm-content").fill("key: [unclosed")
    page.wait_for_function(
        f"document.querySelector('#{box}-error').innerText.includes('not valid YAML at line 1')", timeout=30_000
    )
    assert "last valid value, and Launch waits until it is fixed" in page.locator(f"#{box}-error").inner_text()
    page.locator("#launch").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('Not started')", timeout=30_000)
    assert not (server[2] / f"broken-{box}").exists()
    page.locator(f"#{box} .cm-content").fill(small_tasks if box == "tasks" else "")  # fixed: the message goes
    page.wait_for_function(f"document.querySelector('#{box}-error').innerText.trim() === ''", timeout=30_000)


def test_launch_watch_and_test_table(page, server, small_tasks):
    launch(page, "a", population=POP, generations=GENERATIONS, tasks=small_tasks)
    page.wait_for_function("document.querySelector('#message').innerText.includes('Started')", timeout=30_000)
    page.get_by_role("tab", name="Monitor").click()
    page.evaluate(RECORDER, STATUS_LINE)
    page.wait_for_function("window.__seen.progress.some(t => t.startsWith('finished'))", timeout=300_000)
    seen = page.evaluate("window.__seen")
    running = [line for line in seen["progress"] if line.startswith("running")]
    assert len({evaluations(line) for line in running}) >= 2, seen  # the progress moved while it ran
    assert len([src for src, line in seen["images"] if line.startswith("running")]) >= 2, seen  # plot redrawn
    assert f"generation {GENERATIONS}/{GENERATIONS} | {POP * GENERATIONS} evaluations" in progress(page)
    page.wait_for_function("document.querySelector('#tests').innerText.includes('default task_arithmetic')")
    table = page.locator("#tests").inner_text()
    assert all(name in table for name in ("candidate", "mix", "best", "endpoint:greek", "base"))
    assert not page.locator("#pareto").is_visible()  # one objective: no Pareto front
    evaluated = page.locator("#evaluations").inner_text()
    assert "weight[greek]@all" in evaluated and str(POP * GENERATIONS) in evaluated  # the table, newest first
    assert (server[2] / "a" / "results.json").exists()
    other = page.context.browser.new_page()  # a second page watching the same run gets its own pictures
    other.goto(server[0])
    pick_run(other, "Monitor", "monitor-run", "a")
    other.wait_for_function("document.querySelector('#fitness img') !== null", timeout=30_000)
    other.wait_for_function("document.querySelector('#tests').innerText.includes('default task_arithmetic')")
    other.close()


def preset_with_endpoints(page, endpoints: str, name: str) -> None:
    """The single-objective preset, fresh, with these models to merge, as run ``name``."""
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label("multi-objective, custom data (demo)").check()
    config_shows(page, "NSGA2")
    page.get_by_label("single objective, custom data (demo)").check()
    config_shows(page, "algorithm: GA")
    box = page.locator("#endpoints input, #endpoints textarea").first
    box.fill(endpoints)
    box.press("Tab")
    config_shows(page, f"- {endpoints.split(', ')[-1]}")
    page.locator("#run-name textarea, #run-name input").first.fill(name)


def test_a_missing_model_folder_is_said_under_its_field_and_nothing_starts(page, server):
    """It used to pass the form and fail in the run's process a minute later, after the page
    had said "Started". The pre-flight names it under the field, scrolled into view."""
    preset_with_endpoints(page, "demo:models/add, /nonexistent/greek", "missing")
    page.locator("#launch").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('Not started')", timeout=30_000)
    assert "/nonexistent/greek: no such folder" in page.locator("#endpoints-error").inner_text()
    page.wait_for_function(  # scrolled to it: Launch and its summary are far below
        "() => { const r = document.querySelector('#endpoints-error').getBoundingClientRect();"
        " return r.top >= 0 && r.bottom <= window.innerHeight; }",
        timeout=10_000,
    )
    assert not (server[2] / "missing").exists() and not (server[2] / "missing.log").exists()


def test_a_run_that_fails_says_why_on_the_monitor(page, server, demo_family, tmp_path):
    """What only the run finds (here a model whose config.json does not match its tensors)
    is shown on the monitor: the CLI's error line and where the log is."""
    import json

    odd = shutil.copytree(demo_family / "models" / "greek", tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    preset_with_endpoints(page, f"demo:models/add, {odd}", "broken")
    page.locator("#launch").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('Started')", timeout=30_000)
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_function("document.querySelector('#progress').innerText.includes('process failed')", timeout=120_000)
    shown = page.locator("#progress").inner_text()
    assert "error: " in shown and "does not describe these weights" in shown and "broken.log" in shown


def test_the_yaml_downloads_and_a_pasted_config_fills_the_form(page, server):
    page.get_by_role("tab", name="New experiment").click()
    set_number(page, "population", 6)
    config_shows(page, "population_size: 6")
    for _ in range(20):  # the button takes the new YAML with the edit's check, a moment after the view
        with page.expect_download() as download:
            page.locator("#download").click()
        saved = yaml.safe_load(Path(download.value.path()).read_text())
        if saved["search"]["population_size"] == 6:
            break
        time.sleep(0.5)
    assert saved["search"]["population_size"] == 6 and saved["models"]["base"] == "demo:models/base"
    pasted = {**saved, "search": {**saved["search"], "population_size": 11, "algorithm": "DE"}}
    page.locator("#config .cm-content").fill(yaml.safe_dump(pasted, sort_keys=False))  # as a paste would
    page.locator("#load").click()
    page.wait_for_function("document.querySelector('#message').innerText.includes('Loaded')")
    assert page.locator("#population input").input_value() == "11"


def test_a_method_shows_its_searched_parameters_and_whole_config_checks_land_by_a_field(page, server):
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label("single objective, custom data (demo)").check()
    choose(page, "method", "ties")
    page.wait_for_function("document.querySelector('#method-info').innerText.includes('density per model in [0.1, 1]')")
    assert "weight per model in [0, 1]" in page.locator("#method-info").inner_text()
    page.locator("#base input, #base textarea").first.fill("")
    page.locator("#base input, #base textarea").first.press("Tab")
    page.wait_for_function("document.querySelector('#method-error').innerText.includes('set models.base')")
    page.get_by_label("multi-objective, custom data (demo)").check()  # the preset restores a valid form
    page.wait_for_function("document.querySelector('#method-error').innerText.trim() === ''")


def test_an_uploaded_data_file_becomes_a_task(page, server, tmp_path):
    data = tmp_path / "my arithmetic.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": "4"}\n')
    page.get_by_role("tab", name="New experiment").click()
    page.get_by_label("single objective, custom data (demo)").check()
    config_shows(page, "algorithm: GA")
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(data))
    kept = (server[2] / "uploads" / data.name).resolve()
    config_shows(page, "name: my_arithmetic", f"data: {kept}")
    assert kept.read_text() == data.read_text()


def test_the_runs_page_shows_a_runs_results_and_exports_the_candidate_picked(page, server, tmp_path):
    """Run `a` (finished above) chosen by a click in the list of runs: its test table with the
    search's estimates, the report inline and to download, evaluations.csv, its log; a
    candidate picked from a list (with its score); Export, then again with Overwrite."""
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function("document.querySelector('#runs').innerText.includes('finished')")
    page.locator(RUN_CELLS).get_by_text("a", exact=True).click()
    page.wait_for_function("document.querySelector('#runs-tests').innerText.includes('endpoint:greek')")
    assert page.locator("#runs-status").inner_text().startswith("finished")
    assert "search estimate: mix" in page.locator("#runs-tests").inner_text()
    assert "report.html" in page.locator("#report").inner_text()
    files = [page.locator(f"#{elem_id}").inner_text().replace("\n", "") for elem_id in ("csv", "log")]
    assert "evaluations.csv" in files[0] and "a.log" in files[1]  # (the page breaks a name before its suffix)
    page.get_by_text("Report", exact=True).last.click()  # the report, inline
    frame = page.frame_locator("#report-frame")
    assert "evomerge run: a" in frame.locator("h1").inner_text(timeout=10_000)
    assert page.locator("#member input").input_value().startswith("best (id:")
    out = tmp_path / "exported"
    page.locator("#export-out textarea, #export-out input").first.fill(str(out))
    page.locator("#export").click()
    page.wait_for_function("document.querySelector('#exported').innerText.includes('Exported')", timeout=120_000)
    assert (out / "config.json").exists() and (out / "mergekit_config.yml").exists()
    assert list(out.glob("*.safetensors"))
    page.locator("#export").click()  # again: the folder is not empty
    page.wait_for_function("document.querySelector('#exported').innerText.includes('tick Overwrite')", timeout=60_000)
    page.locator("#force input").check()
    page.locator("#export").click()
    page.wait_for_function("document.querySelector('#exported').innerText.includes('Exported')", timeout=120_000)
    server[3]["exported"] = out  # tried below


def try_prompt(page, target: str, prompt: str, source: str) -> str:
    """A run picked from the list, or an exported model's folder typed in."""
    page.get_by_role("tab", name="Try a model").click()
    if "/" in target:
        box = page.locator("#try-run input")
        for _ in range(3):  # opening the tab refreshes its run list: a late refresh (a busy
            box.fill(target)  # machine) put back the run picked before, and that run answered
            box.press("Enter")
            page.wait_for_function("document.querySelector('#try-member input').disabled")  # a folder: no members
            if box.input_value() == target:
                break
        assert box.input_value() == target
    else:
        pick_run(page, "Try a model", "try-run", target)
        page.wait_for_function("document.querySelector('#try-member input').value.startsWith('best (id:')")
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.wait_for_function(  # the answer and its source come together
        "s => document.querySelector('#answered-by').innerText.includes(s)", arg=source, timeout=120_000
    )
    return page.locator("#completion textarea").input_value()


def test_try_a_model_generates_from_an_evaluated_candidate_and_an_export(page, server):
    """Run `a`'s best recipe, merged in memory, answers a cipher prompt; so does its export."""
    in_memory = try_prompt(page, "a", "gr bado=", "run a, candidate id:")
    assert in_memory.startswith("βαδο")
    exported = server[3]["exported"]
    assert try_prompt(page, str(exported), "gr bado=", f"exported model {exported}") == in_memory


def test_stop_then_resume_finishes_with_the_same_results(page, server, small_tasks):
    launch(page, "b", population=POP, generations=GENERATIONS, tasks=small_tasks)
    page.get_by_role("tab", name="Monitor").click()
    wait_for(page, lambda t: t.startswith("running") and evaluations(t) >= 1)
    assert page.locator("#resume").is_disabled()  # buttons by the run's state
    page.locator("#stop").click()
    wait_for(page, lambda t: t.startswith("interrupted"), timeout=10)  # the GUI started with SIGINT ignored
    page.wait_for_function("document.querySelector('#control').innerText.includes('Stopped; every finished')")
    page.wait_for_function("document.querySelector('#stop').disabled && !document.querySelector('#resume').disabled")
    stopped_at = evaluations(progress(page))
    assert stopped_at < POP * GENERATIONS, "the run finished before it was stopped"
    page.locator("#resume").click()
    wait_for(page, lambda t: t.startswith("finished"))
    runs = server[2]
    assert csv_without_times(runs / "b" / "evaluations.csv") == csv_without_times(runs / "a" / "evaluations.csv")


def test_a_run_started_by_the_cli_is_stopped_here_and_resumed_by_the_cli(page, server, demo_family):
    """The config the GUI saved for run `a` runs with `evomerge run`; the GUI stops it through
    its lock's PID (it did not start it) and `evomerge resume` finishes it as `a` finished."""
    runs = server[2]
    env = {**os.environ, "EVOMERGE_DEMO_DIR": str(demo_family)}
    command = [sys.executable, "-m", "evomerge", "run", str(runs / "a.yaml"), "--run-dir", str(runs / "c")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        pick_run(page, "Monitor", "monitor-run", "c")  # listed once its store exists
        wait_for(page, lambda t: t.startswith("running") and evaluations(t) >= 1)
        page.locator("#stop").click()
        wait_for(page, lambda t: t.startswith("interrupted"), timeout=120)
        assert proc.wait(timeout=60) == 130  # Ctrl-C's exit, every finished evaluation stored
        assert evaluations(progress(page)) < POP * GENERATIONS, "the run finished before it was stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
    resume_cli(runs / "c")
    assert csv_without_times(runs / "c" / "evaluations.csv") == csv_without_times(runs / "a" / "evaluations.csv")


def test_the_runs_list_keeps_its_order_and_a_click_picks_the_run_clicked(page, server):
    """The list was sorted by folder time, which reading a run's store changes: it reordered
    itself on every refresh, and a click once chose another run than the one clicked."""

    def listed() -> list[str]:
        return [c.strip() for c in page.locator(RUN_CELLS).all_inner_texts()]

    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function("document.querySelectorAll('#runs [role=gridcell][data-col=\"0\"]').length >= 2")
    first = listed()
    for _ in range(3):  # each refresh reads every run's store
        page.locator("#refresh").click()
        time.sleep(1.5)
        assert listed() == first
    for name in first[:2]:
        page.locator(RUN_CELLS).get_by_text(name, exact=True).click()
        page.wait_for_function("name => document.querySelector('#runs-run input').value === name", arg=name)
        page.wait_for_function(  # the monitor follows
            "name => document.querySelector('#monitor-run input').value === name", arg=name
        )
    late = shutil.copytree(server[2] / first[0], server[2] / "late")  # a run that appears, as a CLI's would
    (late / "config.yaml").touch()  # started now: first in the list
    page.wait_for_function(  # no click on Refresh: the list reads the runs folder every 5 s
        "() => document.querySelector('#runs [role=gridcell][data-col=\"0\"]').innerText.trim() === 'late'",
        timeout=15_000,
    )
    shutil.rmtree(late)


def test_the_code_boxes_do_not_trap_the_keyboard(page, server):
    """Tab in a YAML box indents; Escape then Tab moves on, as CodeMirror's convention is."""
    page.get_by_role("tab", name="New experiment").click()
    page.locator("#options .cm-content").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert page.evaluate("!document.querySelector('#options').contains(document.activeElement)")


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


def test_a_run_outside_the_runs_folder_cannot_be_picked_or_typed(page, server, finished_run):
    """`../NAME` typed in a run field used to reach a run outside the runs folder (Resume
    started `evomerge resume` on it). Runs are now picked from lists of the runs folder's
    runs; typed text selects nothing. Here a real finished run sits beside the runs folder."""
    runs = server[2]
    outside = shutil.copytree(finished_run.run_dir, runs.parent / "outside")
    untouched = sorted((p.name, p.stat().st_mtime_ns) for p in outside.iterdir())
    for tab, picker in (("Monitor", "monitor-run"), ("Runs", "runs-run"), ("Compare", "compare-runs")):
        page.get_by_role("tab", name="New experiment").click()
        page.get_by_role("tab", name=tab).click()
        box = page.locator(f"#{picker} input")
        box.click()
        offered = page.get_by_role("option").all_inner_texts()
        assert "a" in [o.strip("✓\n ") for o in offered] and not any("outside" in o for o in offered)
        box.fill("../outside")
        box.press("Enter")
        page.keyboard.press("Escape")
    page.get_by_role("tab", name="Monitor").click()
    assert "outside" not in page.locator("#progress").inner_text()
    assert not (runs / "outside.log").exists()  # no process was started on it
    assert sorted((p.name, p.stat().st_mtime_ns) for p in outside.iterdir()) == untouched


def test_compare_shows_two_runs_side_by_side(page, server):
    """Runs `a` and `b` (finished above): one plot, their test tables in one, their winners' genes."""
    pick_run(page, "Compare", "compare-runs", "a")
    pick_run(page, "Compare", "compare-runs", "b")
    page.locator("#compare").click()
    page.wait_for_function("document.querySelector('#compare-tests').innerText.includes('endpoint:greek')")
    tests = page.locator("#compare-tests").inner_text()
    assert "run" in tests and "search estimate: mix" in tests
    genes = page.locator("#compare-genes").inner_text()
    assert "a best (id:" in genes and "b best (id:" in genes and "weight[greek]@all" in genes
    assert page.locator("#compare-plot img").count() == 1
    assert page.locator("#compare-status").inner_text().startswith("a: finished")


def test_the_gui_reaches_no_network_and_sigterm_removes_its_scratch(demo_family, tmp_path):
    """The GUI in a process of its own whose every socket connection and name lookup is
    recorded (a Python audit hook, installed before evomerge runs): serving the page to a
    loopback client, nothing else is reached (Gradio's analytics and version check used to
    call out at start). SIGTERM then stops it like Ctrl-C (exit 143) and its scratch folder
    (plots, the YAML to download) is gone."""
    import urllib.request

    log, scratch, port = tmp_path / "network.log", tmp_path / "tmp", free_port()
    scratch.mkdir()
    starter = tmp_path / "start.py"
    starter.write_text(
        "import sys\n"
        f"LOG = {str(log)!r}\n"
        "def hook(event, args):\n"
        "    if event == 'socket.getaddrinfo' or (event == 'socket.connect' and isinstance(args[1], tuple)):\n"
        "        target = args[1] if event == 'socket.connect' else args[:2]\n"
        "        with open(LOG, 'a') as f:\n"
        "            f.write(f'{event} {target!r}\\n')\n"
        "sys.addaudithook(hook)\n"
        "from evomerge.cli import app\n"
        f"app(['gui', '--port', '{port}', '--runs', {str(tmp_path / 'runs')!r}])\n"
    )
    env = {**os.environ, "EVOMERGE_DEMO_DIR": str(demo_family), "TMPDIR": str(scratch)}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)
    proc = subprocess.Popen([sys.executable, str(starter)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.5)
        assert b"evomerge" in page
        assert any(p.name.startswith("evomerge-gui-") for p in scratch.iterdir())
        time.sleep(3)  # Gradio's version check ran in a thread at start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    reached = [line for line in log.read_text().splitlines() if not re.search(r"127\.0\.0\.1|localhost|'::1'", line)]
    assert reached == [], reached
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("evomerge-gui-")]
