# gatewayd developer entry points. `make run` and `make test` are all a fresh
# machine needs; both create the virtualenv on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/gatewayd/gatewayd.yaml
PREFIX ?= /usr/local

# Local state (audit log) lives in ./var when run from the checkout; under
# systemd, StateDirectory= sets STATE_DIRECTORY instead.
export STATE_DIRECTORY ?= $(CURDIR)/var

.PHONY: venv test-deps run demo test lint typecheck unit bench install clean

$(BIN)/gatewayd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

venv: $(BIN)/gatewayd

$(VENV)/.test-deps: $(BIN)/gatewayd
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

test-deps: $(VENV)/.test-deps

run: venv
	@mkdir -p $(STATE_DIRECTORY)
	$(BIN)/gatewayd -c $(CONFIG)

demo: test-deps
	scripts/demo

lint: test-deps
	$(BIN)/ruff check gatewayd tests scripts
	$(BIN)/ruff format --check gatewayd tests scripts

typecheck: test-deps
	$(BIN)/mypy

unit: test-deps
	$(BIN)/pytest -q tests/unit

test: lint typecheck
	$(BIN)/pytest -q

bench: test-deps
	scripts/bench

install: venv
	scripts/install-systemd $(PREFIX)

clean:
	rm -rf $(VENV) build dist *.egg-info var
