# The one interface for people and CI. `make run` serves chat; `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
OPS_STAMP := $(VENV)/.ops-installed
COLOR ?= green
RUNTIME ?= local
# compose: the release to run (parley:<TAG>), never rebuilt; default this checkout's revision.
TAG ?=
# App processes per colour: the local stack's (`make stack`, default 1), or the compose
# replicas of the colour a deploy starts (default: as many as the active colour runs).
PROCESSES ?=

.PHONY: run test test-unit lint bench bench-scale bench-cutover loadtest startup shutdown soak locust stack stack-down deploy \
	drill clean docker-env docker-env-down compose-drill bench-compose

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(OPS_STAMP): requirements.txt requirements-ops.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-ops.txt
	touch $@ $(RUNTIME_STAMP)

$(DEV_STAMP): requirements.txt requirements-ops.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(OPS_STAMP) $(RUNTIME_STAMP)

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

bench-scale: $(DEV_STAMP)  ## 100,000 sockets over 6 processes on a Redis Cluster, then the floor, then single Redis vs cluster (heavy): BENCH_SCALE_ARGS="--sockets 10000 --write"
	$(PY) -m scripts.bench_scale $(BENCH_SCALE_ARGS)

bench-cutover: $(DEV_STAMP)  ## 9,000 clients through Traefik, blue->green: recovery vs fresh connect (heavy): BENCH_CUTOVER_ARGS="--clients 2000 --write"
	$(PY) -m scripts.bench_cutover $(BENCH_CUTOVER_ARGS)

loadtest: $(DEV_STAMP)  ## 5,000 WebSockets against URL (default: a server it starts)
	$(PY) -m scripts.loadtest $(LOADTEST_ARGS)

startup: $(DEV_STAMP)
	$(PY) -m scripts.startup $(STARTUP_ARGS)

shutdown: $(DEV_STAMP)
	$(PY) -m scripts.shutdown $(SHUTDOWN_ARGS)

soak: $(DEV_STAMP)  ## bounded connect/send/ack/close churn; RSS growth per 100,000 connections
	$(PY) -m scripts.soak $(SOAK_ARGS)

locust: $(DEV_STAMP)  ## a short headless Locust run
	$(PY) -m scripts.locust_run $(LOCUST_ARGS)

stack: $(OPS_STAMP)  ## redis-server + Traefik + the active colour, on loopback: make stack [PROCESSES=2] [STACK_ARGS=--cluster]
	$(PY) -m scripts.stack up $(if $(PROCESSES),--processes $(PROCESSES)) $(STACK_ARGS)

stack-down: $(OPS_STAMP)
	$(PY) -m scripts.stack down

deploy: $(OPS_STAMP)  ## blue/green switch: make deploy COLOR=green [RUNTIME=compose [TAG=<release>] [PROCESSES=N]] [DEPLOY_ARGS=--wait-drain]
	$(PY) -m scripts.deploy --runtime $(RUNTIME) $(COLOR) $(if $(TAG),--tag $(TAG)) \
		$(if $(PROCESSES),--processes $(PROCESSES)) $(DEPLOY_ARGS)

docker-env: $(OPS_STAMP)  ## a Docker engine (started if none answers), Compose v2, base images
	$(PY) -m scripts.docker_env up

docker-env-down: $(OPS_STAMP)  ## stop the engine `make docker-env` started (no other)
	$(PY) -m scripts.docker_env down

compose-drill: $(OPS_STAMP)  ## the drill on compose.yml in real containers; DRILL_ARGS="--fault kill"
	$(PY) -m scripts.compose_drill $(DRILL_ARGS)

bench-compose: $(OPS_STAMP)  ## container start, deploy and stop timings; table for BENCHMARKS.md
	$(PY) -m scripts.bench_compose $(BENCH_ARGS)

drill: $(DEV_STAMP)  ## clients connected through Traefik across blue->green->blue; zero loss
	$(PY) -m scripts.drill $(DRILL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .stack
