"""``report.html``: one self-contained page per run (figures inlined as base64 PNGs, no
scripts, no network), written from the run store alone, so it can be rebuilt at any
time with ``evomerge report RUN_DIR`` and opened offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..atomic import write_text_atomically
from ..merge.layerpath import LayerPath, is_path_yaml
from ..search.loop import winners
from ..search.rundir import RunDir
from ..search.store import TestRow, test_columns
from ..yamltext import load_yaml
from . import plots

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.evolved { font-weight: 600; background: #eef7ee; }
.facts { color: #555; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0; }
pre { background: #f7f7f7; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
"""


def write_report(run_dir: Path | str) -> Path:
    """Draw the figures (PNGs in ``run_dir``) and write ``run_dir/report.html``."""
    rd = RunDir(Path(run_dir))
    store = rd.open_store()
    try:
        names: list[str] = store.get("objectives") or []
        maximize: list[bool] = store.get("maximize") or [True] * len(names)
        generations = store.generations()
        rows = list(store.evaluations())
        failed = [(rank, r) for rank, r in enumerate(store.evaluations(failed=True), 1) if not r.ok]
        tests = store.tests()
        stop = store.get("stop_reason")
    finally:
        store.close()
    front = winners(rows, maximize)
    winner_path = LayerPath.from_yaml(front[0].recipe) if front and is_path_yaml(front[0].recipe) else None
    with plots.literal_text():  # names are the user's text: "$" is a dollar, not mathtext
        figures = {
            "Fitness per generation": plots.fitness_per_generation(generations, names, maximize, rd.figure("fitness")),
            "Pareto front": plots.pareto_front(rows, front, names, rd.figure("pareto"), tests),
            "Evolved genes": plots.genes_heatmap(front[0], rd.figure("genes")) if front and not winner_path else None,
            "Evolved layer path": plots.layer_path(winner_path, rd.figure("path")) if winner_path else None,
            "Estimated vs held-out score": plots.estimates_vs_test(tests, names, rd.figure("estimates")),
        }
    config = rd.config.read_text() if rd.config.exists() else ""
    method = (load_yaml(config) or {}).get("merge", {}).get("method", "?") if config else "?"
    method = "layer-path" if winner_path else method
    parts = [
        f"<h1>evomerge run: {html.escape(rd.path.name)}</h1>",
        f"<p class='facts'>{html.escape(method)} merge; objectives: "
        + ", ".join(f"{html.escape(n)} ({'max' if up else 'min'})" for n, up in zip(names, maximize, strict=True))
        + f"; {len(rows)} evaluations in {len(generations)} generations; stopped: {html.escape(str(stop))}</p>",
        "<h2>Held-out test</h2>",
        _test_table(tests, names) if tests else "<p>No test results yet: run <code>evomerge test</code>.</p>",
    ]
    for title, path in figures.items():
        if path is not None:
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{data}'>")
    if failed:
        parts.append(
            f"<h2>Failed candidates ({len(failed)})</h2><table><tr><th>id</th><th>generation</th><th>error</th></tr>"
        )
        parts += [
            f"<tr><td>{rank}</td><td>{r.generation}</td><td>{html.escape(r.error or '')}</td></tr>"
            for rank, r in failed
        ]
        parts.append("</table>")
    if front:
        parts.append("<h2>The winner's recipe (mergekit YAML)</h2>")
        parts.append(f"<pre>{html.escape(front[0].recipe)}</pre>")
    parts.append(f"<h2>Config</h2><pre>{html.escape(config)}</pre>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>evomerge: {html.escape(rd.path.name)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    out = rd.report
    write_text_atomically(out, page)
    return out


def _test_table(tests: list[TestRow], names: list[str]) -> str:
    checks = test_columns(tests, names)[len(names) :]
    head = "".join(f"<th>{html.escape(n)} (test)</th><th>{html.escape(n)} (search est.)</th>" for n in names)
    head += "".join(f"<th>{html.escape(n)} (check)</th>" for n in checks)
    body = []
    for t in tests:
        cells = "".join(
            f"<td class='num'>{t.scores[n]:.4f}</td><td class='num'>"
            + (f"{t.search_scores[n]:.4f}" if t.search_scores and n in t.search_scores else "")
            + "</td>"
            for n in names
        ) + "".join(f"<td class='num'>{t.scores[n]:.4f}</td>" for n in checks)
        evolved = " class='evolved'" if t.kind in ("best", "pareto") else ""
        body.append(f"<tr{evolved}><td>{html.escape(t.name)}</td><td>{t.kind}</td>{cells}</tr>")
    return f"<table id='tests'><tr><th>candidate</th><th>kind</th>{head}</tr>{''.join(body)}</table>"
