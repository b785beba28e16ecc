# The two commands of the README, each doing all the set-up it needs on a fresh machine:
#   make quickstart   install (if needed) -> the quick start on the embedded corpus -> metrics table
#   make test         install (if needed) -> the test suite
# The install step is install.sh --if-needed: it runs only when this interpreter has not been
# installed yet or install.sh / requirements.txt / setup.py changed (stamps: .install.stamp.*, one per interpreter).
# PYTHON=/path/to/venv/bin/python make test installs into and runs with another interpreter.
# TEST_WORKERS=N make test runs the suite in N processes (default: one per core; pytest-xdist,
# whole test files per process so that a file's module fixtures are built once).
PYTHON ?= python3
TEST_WORKERS ?= auto
export PYTHON
# console scripts (fairseq-train, prepare-dailydialog, ...) of that interpreter come first on PATH
PYTHON_BIN := $(shell dirname "$$(command -v $(PYTHON))")
export PATH := $(PYTHON_BIN):$(PATH)

.PHONY: install quickstart test

install:
	@bash install.sh --if-needed

quickstart: install
	bash examples/quickstart/run.sh

test: install
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
