# iot-gateway: every day-to-day command. `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
BENCH ?= all
PROFILE ?= demo
PYTEST_ARGS ?=

.PHONY: help deps run test lint fmt bench openapi docs clean sim loadtest

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

deps: ## Install system packages, uv and the locked Python environment (idempotent)
	@bash .ci/bootstrap.sh

run: deps ## Run the stack here as processes: Redis, Mosquitto (TLS :8883), HTTP ingest on :8000, MQTT ingest, forwarder -> var/outbox/; dev device in var/dev-device.json
	@$(PY) -m iotgw_supervisor

lint: deps ## ruff and mypy (strict on libs/)
	$(UV) run --frozen ruff check libs services tests firmware/sim loadtest
	$(UV) run --frozen ruff format --check libs services tests firmware/sim loadtest
	$(UV) run --frozen mypy -p iotgw_core -p iotgw_ingest_http -p iotgw_forwarder -p iotgw_supervisor -p iotgw_ingest_mqtt -p iotgw_cli -p iotgw_sim

test: lint ## Install what is missing, lint, then the whole test suite (what CI runs)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

fmt: deps ## Format and auto-fix
	$(UV) run --frozen ruff check --fix libs services tests firmware/sim loadtest
	$(UV) run --frozen ruff format libs services tests firmware/sim loadtest

bench: ## Benchmarks that print figures into var/bench/results.json (BENCH=http|instr|mqtt|drain|all)
	@BOOTSTRAP_BENCH=1 bash .ci/bootstrap.sh
	$(PY) -m tests.bench --group $(BENCH)

sim: deps ## Simulated device fleet (PROFILE=demo, firmware/sim/profiles.toml) against `make run`'s stack; Ctrl-C drains, compares with var/outbox
	$(PY) -m iotgw_sim fleet --profile $(PROFILE) --dev-device var/dev-device.json --outbox var/outbox

loadtest: deps ## Locust headless against a loopback stack it starts (~60 s); CSV and verdict in var/loadtest/
	$(UV) sync --frozen --all-packages --group loadtest -q
	$(PY) -m loadtest.run

openapi: deps ## Regenerate docs/openapi.json from the service
	$(PY) -m iotgw_ingest_http --dump-openapi > docs/openapi.json

docs: deps ## Regenerate the settings tables in docs/configuration.md
	$(PY) -m tests.tools.gen_config_doc > docs/configuration.md

clean: ## Remove var/ (spool, outbox, redis data) and caches
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
