# The two commands of a new machine: `make run` (serve on SQLite at ws://localhost:2346) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint venv clean bench

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: venv
	$(BIN)/python -m pytest

# Every benchmark scenario and baseline, 3 runs each (see docs/bench.md); BENCH_ARGS="--quick --runs 1" for a short one.
bench: venv
	$(BIN)/python -m bench suite $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check .

check: lint test

clean:
	rm -rf $(VENV) var
