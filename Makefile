# The one interface for people and CI. `make run` serves chat; `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
COLOR ?= green
RUNTIME ?= local

.PHONY: run test test-unit lint bench loadtest startup shutdown locust stack stack-down deploy drill clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP)  ## serve chat on http://127.0.0.1:8000 (in-memory layer, no Redis)
	$(PY) -m app

test: lint  ## lint, then the whole test suite (needs redis-server, chromium)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(DEV_STAMP)  ## the pure tests only: no process, socket, Redis or browser; seconds
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: $(DEV_STAMP)  ## ruff over the repository, mypy over app, tools, scripts, bench (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(DEV_STAMP)  ## startup, shutdown and load benchmarks with the floor; writes BENCHMARKS.md
	$(PY) -m scripts.bench $(BENCH_ARGS)

loadtest: $(DEV_STAMP)  ## 5,000 WebSockets against URL (default: a server it starts)
	$(PY) -m scripts.loadtest $(LOADTEST_ARGS)

startup: $(DEV_STAMP)
	$(PY) -m scripts.startup $(STARTUP_ARGS)

shutdown: $(DEV_STAMP)
	$(PY) -m scripts.shutdown $(SHUTDOWN_ARGS)

locust: $(DEV_STAMP)  ## a short headless Locust run
	$(PY) -m scripts.locust_run $(LOCUST_ARGS)

stack: $(DEV_STAMP)  ## redis-server + Traefik + the active colour, on loopback
	$(PY) -m scripts.stack up

stack-down: $(DEV_STAMP)
	$(PY) -m scripts.stack down

deploy: $(DEV_STAMP)  ## blue/green switch: make deploy COLOR=green [RUNTIME=compose]
	$(PY) -m scripts.deploy --runtime $(RUNTIME) $(COLOR)

drill: $(DEV_STAMP)  ## clients connected through Traefik across blue->green->blue; zero loss
	$(PY) -m scripts.drill $(DRILL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .stack
