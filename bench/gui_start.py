"""How long `evomerge gui` takes to serve its first page, against `python -c "import gradio"`
measured in the same run (the issue's target: at most 1.5 times that).

Each is timed ``--repeats`` times in a fresh process, alternating, and the medians are
compared; the GUI is timed from its process's start to the first answer of its page (an
HTTP 200 on ``/``). Peak RSS of the GUI's process is read from /proc when it answers.
Ends with one JSON line.

    .venv/bin/python bench/gui_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def import_gradio() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True)
    return time.perf_counter() - started


def gui_first_page(runs: Path) -> tuple[float, float]:
    """Seconds to the first page, and the process's peak RSS in MiB then."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "evomerge", "gui", "--port", str(port), "--runs", str(runs)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"evomerge gui exited with {proc.returncode}") from None
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    imports, starts, peaks = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            imports.append(import_gradio())
            seconds, peak = gui_first_page(Path(folder) / "runs")
            starts.append(seconds)
            peaks.append(peak)
    reference, gui = statistics.median(imports), statistics.median(starts)
    print(f"import gradio: {reference:.2f} s (median of {args.repeats}: {', '.join(f'{t:.2f}' for t in imports)})")
    print(f"evomerge gui to its first page: {gui:.2f} s ({', '.join(f'{t:.2f}' for t in starts)}), "
          f"peak RSS {max(peaks):.0f} MiB")  # fmt: skip
    print(f"ratio: {gui / reference:.2f} (target <= 1.5)")
    result = {"bench": "gui_start", "import_gradio_s": round(reference, 2), "gui_first_page_s": round(gui, 2)}
    result |= {"ratio": round(gui / reference, 2), "peak_rss_mib": round(max(peaks)), "repeats": args.repeats}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
