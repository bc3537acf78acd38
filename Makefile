# The one interface for people and CI. `make run` serves chat; `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
COLOR ?= green
RUNTIME ?= local

.PHONY: run test bench loadtest startup shutdown soak locust stack stack-down deploy drill clean

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

test: $(DEV_STAMP)  ## the whole test suite (needs redis-server, chromium)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(DEV_STAMP)  ## startup, shutdown and load benchmarks with the floor; writes BENCHMARKS.md
	$(PY) scripts/bench.py $(BENCH_ARGS)

loadtest: $(DEV_STAMP)  ## 5,000 WebSockets against URL (default: a server it starts)
	$(PY) scripts/loadtest.py $(LOADTEST_ARGS)

startup: $(DEV_STAMP)
	$(PY) scripts/startup.py $(STARTUP_ARGS)

shutdown: $(DEV_STAMP)
	$(PY) scripts/shutdown.py $(SHUTDOWN_ARGS)

soak: $(DEV_STAMP)  ## bounded connect/send/ack/close churn; RSS growth per 100,000 connections
	$(PY) scripts/soak.py $(SOAK_ARGS)

locust: $(DEV_STAMP)  ## a short headless Locust run
	$(PY) scripts/locust_run.py $(LOCUST_ARGS)

stack: $(DEV_STAMP)  ## redis-server + Traefik + the active colour, on loopback
	$(PY) scripts/stack.py up

stack-down: $(DEV_STAMP)
	$(PY) scripts/stack.py down

deploy: $(DEV_STAMP)  ## blue/green switch: make deploy COLOR=green [RUNTIME=compose]
	$(PY) scripts/deploy.py --runtime $(RUNTIME) $(COLOR)

drill: $(DEV_STAMP)  ## clients connected through Traefik across blue->green->blue; zero loss
	$(PY) scripts/drill.py $(DRILL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .stack
