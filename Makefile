# The two README commands: `make run` (demo) and `make test` (whole suite). Both create .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test bench lint clean constraints

# Every install takes its versions from constraints.txt (a pip freeze of a clean install of every extra), as the
# Dockerfile does: CI, the demo and the image run what was tested. `make constraints` refreshes it.
PIP_INSTALL = $(PY) -m pip install --quiet --constraint constraints.txt

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "scopegate needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# `make run` needs only the proxy and the demo upstream; `make test` adds the test tools to the same venv.
$(VENV)/.demo: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[demo]'
	@touch $@

$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[demo,test]'
	@touch $(VENV)/.demo $@

run: $(VENV)/.demo
	$(VENV)/bin/scopegate demo

constraints:
	rm -rf .venv-freeze && $(PYTHON) -m venv .venv-freeze && .venv-freeze/bin/pip install --quiet '.[demo,test,tracing]'
	.venv-freeze/bin/pip freeze --exclude scopegate | sed '1i # pip freeze of a clean install of .[demo,test,tracing]: make constraints' > constraints.txt
	rm -rf .venv-freeze

test: $(VENV)/.installed
	$(PY) -m ruff check proxy tests bench
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/run.py $(if $(WORKERS),--workers $(WORKERS)) $(if $(IDENTITY),--identity) \
		$(if $(POLICY_FEATURES),--policy-features) $(if $(BENCH_REDIS_URL),--redis-url $(BENCH_REDIS_URL))

lint: $(VENV)/.installed
	$(PY) -m ruff check proxy tests bench

clean:
	rm -rf $(VENV) .pytest_cache
