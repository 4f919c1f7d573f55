PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast mutants lint bench bench-scale clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m dfs_twisted.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The unit tier only: pure code, no network, no processes (about 15 s).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit tests

# Each safeguard of docs/security.md removed in turn: the tests named for it must fail.
# Slow (about 5 minutes) and not part of CI; see README, Testing.
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py

lint: $(STAMP)
	$(BIN)/ruff check dfs_twisted tests bench tools twisted
	$(BIN)/ruff format --check dfs_twisted tests bench tools twisted
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

# One node holding 1,000,000 blobs: start-up, RSS, `dfs ls`, a one-blob sync. The
# fixture (about 4 GB of disk, 8 minutes to make) is kept in bench-run/ and reused.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp demo-nodes bench-run
