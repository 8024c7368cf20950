# The two commands of a new machine: `make run` (serve on SQLite at ws://localhost:2346) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint venv clean autobahn bench

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

# Same as `$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app` (see README, "Operations"); `start -d` for a daemon.
run: venv
	$(BIN)/python -m service start

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
	rm -rf $(VENV) var
