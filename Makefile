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

.PHONY: venv test-deps run demo test lint typecheck unit bench install clean lock lock-check

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

# A venv of its own under PREFIX, from requirements/gatewayd.lock, hash-checked.
install:
	scripts/install-systemd $(PREFIX)

# requirements/*.lock pin every dependency (and the build backend) to one
# version with its hashes, resolved from setup.cfg's ranges. Run `make lock`
# after changing dependencies in setup.cfg: pins already in the locks are kept
# where they still fit; `make lock LOCK_ARGS=--upgrade` moves all to the newest
# allowed, `LOCK_ARGS='-P aiohttp'` only one. The test lock takes the runtime
# lock's pins as constraints, so both install the same runtime versions.
#
# pip-compile writes what the interpreter it runs on needs, markers decided
# (redis needs async-timeout below Python 3.11.3), so it runs on the one
# scripts/install-systemd installs for: the distribution's python3.
LOCK_PYTHON ?= $(or $(wildcard /usr/bin/python3),$(PYTHON))
LOCK_TOOLS  ?= $(VENV)/lock-tools
LOCK_FLAGS   = --quiet --generate-hashes --allow-unsafe --strip-extras --build-deps-for=wheel \
	--no-emit-index-url --no-emit-find-links

$(LOCK_TOOLS)/bin/pip-compile:
	$(LOCK_PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet --upgrade pip 'pip-tools>=7.4'

lock: $(LOCK_TOOLS)/bin/pip-compile
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) \
		-o requirements/gatewayd.lock pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) \
		--extra test -c requirements/gatewayd.lock -o requirements/test.lock pyproject.toml

# What CI checks of the test lock: it installs hash-checked into a throwaway
# venv and meets gatewayd's requirements (pip check). The runtime lock is
# installed the same way by scripts/install-systemd in tests/integration/
# test_install.py, and tests/unit/test_lock.py holds both against setup.cfg.
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/gatewayd-lock-check
lock-check:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --require-hashes -r requirements/test.lock
	$(LOCK_VENV)/bin/pip install --quiet --no-deps --no-build-isolation .
	$(LOCK_VENV)/bin/pip check
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) build dist *.egg-info var
