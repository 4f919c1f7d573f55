PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast mutants coverage lint bench bench-scale clean

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

# Coverage of the whole suite, the twistd and dfs processes the tests start included:
# tests/coverage_hook/sitecustomize.py starts coverage in every Python process, and
# is on the path for this run only. The report: build/coverage/report.txt (and html/).
COVERAGE := build/coverage
coverage: $(STAMP)
	rm -rf $(COVERAGE) && mkdir -p $(COVERAGE)
	chmod 1777 $(COVERAGE)  # some tests run a node as another user: it writes its data too
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml \
	COVERAGE_FILE=$(CURDIR)/$(COVERAGE)/data \
	PYTHONPATH=$(CURDIR)/tests/coverage_hook$${PYTHONPATH:+:$$PYTHONPATH} \
	$(BIN)/python -m pytest -q $(or $(TESTS),tests); status=$$?; \
	$(BIN)/coverage combine --quiet --data-file=$(COVERAGE)/data $(COVERAGE) && \
	$(BIN)/coverage report --data-file=$(COVERAGE)/data > $(COVERAGE)/report.txt && \
	$(BIN)/coverage html --quiet --data-file=$(COVERAGE)/data -d $(COVERAGE)/html && \
	$(BIN)/python tests/coverage_groups.py $(COVERAGE)/data; exit $$status

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
