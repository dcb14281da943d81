# The README's commands. Set-up is idempotent: a second call only re-checks.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel on this kind of machine; override (e.g. TORCH_SPEC=torch) on a GPU box.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup browser test check demo bench lint types demo-models clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,lmeval,lang,ray,trackers,gui]"
	touch $(STAMP)

setup: $(STAMP)

# The report's browser test uses Debian's Chromium (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium for the report's browser test"; fi; }

# CI's command: the linter, the type checker, then every test (two workers: pytest-xdist).
test: setup browser lint types
	$(PY) -m pytest -q -n 2 --durations=15

# Before a commit: the same checks and the quick tests (about 4 minutes on 2 cores once the demo family exists).
check: setup lint types
	$(PY) -m pytest -q -n 2 -m "not slow"

types: setup
	$(VENV)/bin/mypy

# The demo experiment; a second call resumes (and re-prints) the stored run, never overwrites it.
demo: setup
	@if [ -f runs/demo/run.sqlite ]; then $(VENV)/bin/evomerge resume runs/demo; \
	else $(VENV)/bin/evomerge run examples/demo.yaml; fi

demo-models: setup
	$(VENV)/bin/evomerge demo-models

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
