# The two README commands: `make run` (demo) and `make test` (whole suite). Both create .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test bench lint clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "scopegate needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(VENV)/bin/scopegate demo

test: $(VENV)/.installed
	$(PY) -m ruff check proxy tests bench
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/run.py $(if $(WORKERS),--workers $(WORKERS))

lint: $(VENV)/.installed
	$(PY) -m ruff check proxy tests bench

clean:
	rm -rf $(VENV) .pytest_cache
