# The two commands of a new machine: `make run` (serve on SQLite at ws://localhost:2346) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make run` is the try-it command, in trust mode: it listens on this host only unless told otherwise
# (`make run HOST=0.0.0.0`). The service itself defaults to 0.0.0.0, as the legacy server did.
HOST ?= 127.0.0.1

.PHONY: run install test check lint venv clean autobahn bench

# The project is installed into its venv (editable: the checkout stays the code that runs), which puts the
# `chat-service` command in .venv/bin.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

install: venv
	@echo "installed: $(BIN)/chat-service (start -d, stop, status, ...; see $(BIN)/chat-service --help)"

# Same as `WEBSOCKET_HOST=127.0.0.1 .venv/bin/chat-service start` (see README, "Operations").
run: venv
	WEBSOCKET_HOST=$(HOST) $(BIN)/chat-service start

test: venv
	$(BIN)/python -m pytest

# Every benchmark scenario and baseline, 3 runs each (see README, "Benchmarks"); BENCH_ARGS="--quick --runs 1" for a short one.
bench: venv
	$(BIN)/python -m bench suite $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check .

check: lint test

# Autobahn|Testsuite fuzzingclient against the diagnostics echo endpoint (needs a Python 2.7 interpreter).
autobahn: venv
	$(BIN)/python scripts/autobahn.py

clean:
	rm -rf $(VENV) var chat_service.egg-info
