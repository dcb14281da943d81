"""The code's shape, as a new maintainer relies on it: no import cycles inside the package
(lazy and type-only imports included), a config module that is a leaf and loads no torch,
modules that say their one job in a docstring and stay short enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "evomerge"
MAX_LINES = 450


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every evomerge module -> the evomerge modules it imports anywhere in its text: at the
    top, inside functions, under TYPE_CHECKING. ``from pkg import sub`` is an edge to the
    submodule, not to the package."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                edges.update(subs)
                if len(subs) < len(node.names):
                    edges.add(target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The layers, lowest first: a module imports only modules of its own layer or a lower one.
#: (The order docs/design.md describes; a package's __init__ re-exports, so it counts as the top.)
LAYERS = [
    (
        "leaves",
        [
            "evomerge.atomic",
            "evomerge.errors",
            "evomerge.registry",
            "evomerge.cachedir",
            "evomerge.progress",
            "evomerge.threads",
            "evomerge.yamltext",
        ],
    ),
    ("config", ["evomerge.config"]),
    ("models", ["evomerge.models."]),
    ("merge", ["evomerge.merge."]),
    ("evaluate", ["evomerge.evaluate."]),
    ("demo", ["evomerge.demo."]),
    ("fitness", ["evomerge.fitness."]),
    ("search", ["evomerge.search."]),
    ("loader", ["evomerge.loader", "evomerge.preflight"]),
    ("report", ["evomerge.report."]),
    ("run", ["evomerge.search.experiment"]),
    (
        "entry points",
        [
            "evomerge.api",
            "evomerge.wizard",
            "evomerge.gui.",
            "evomerge.cli",
            "evomerge.interrupts",
            "evomerge.__main__",
        ],
    ),
]


def layer_of(module: str) -> int:
    """A module's layer; a package (its __init__) is in its modules' layer, evomerge's own a leaf."""
    if module.rstrip(".") == "evomerge":
        return 0
    matches = [
        (len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes if module.startswith(prefix)
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS (and docs/design.md)"
    return max(matches)[1]  # the longest prefix: search.experiment is not search


def test_no_module_imports_a_higher_layer():
    """A package's __init__ only re-exports (lazily where a name sits higher), so its own
    imports are not checked; importing from a package is importing from its layer."""
    packages = {name for name, (_, is_package) in _modules().items() if is_package}
    names = [name for name, _ in LAYERS]
    upward = [
        f"{m} ({names[layer_of(m)]}) imports {d} ({names[layer_of(d + '.' if d in packages else d)]})"
        for m, deps in sorted(import_graph().items())
        if m not in packages
        for d in sorted(deps)
        if layer_of(d + "." if d in packages else d) > layer_of(m)
    ]
    assert upward == []


def test_the_config_is_a_leaf():
    """The config imports evomerge's errors only: every layer may import it."""
    assert import_graph()["evomerge.config"] <= {"evomerge", "evomerge.errors"}


def test_validating_a_config_loads_no_torch():
    code = (
        "import sys\n"
        "from evomerge.config import ExperimentConfig\n"
        "raw = {'models': {'endpoints': ['a', 'b']}, 'tasks': [{'name': 't', 'data': 'x'}]}\n"
        "ExperimentConfig.model_validate(raw)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'mergekit', 'numba', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_says_its_job_and_stays_short(path: Path):
    text = path.read_text()
    assert ast.get_docstring(ast.parse(text)), f"{path.name}: a module docstring saying its one job"
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: over {MAX_LINES} lines; split it by job"
