# `make demo` installs what the demo runs (the package and its dependencies); `make test` adds the extras the
# test suite needs (dev tools, Ray, Milvus). Each creates .venv when it is missing; a stamp per level
# records what is installed, and editing pyproject.toml installs again.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch and torchvision are pinned to the builds this project's machines keep on disk (README, "Set-up").
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Unpacks the Milvus server's binaries once (7 s), not in the first test that starts one.
$(TEST_STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,milvus,milvus-server]"
	$(BIN)/python -c "import sys; sys.path.insert(0, 'tests'); from support import services; services.milvus_binary()"
	touch $@

# The demo's index, photos and map go to indexes/ in this repository, not to the user's index home.
demo: $(DEMO_STAMP)
	RETRIEVAL_HOME="$(CURDIR)/indexes" $(BIN)/retrieval demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (subprocesses, kills, Ray, fresh interpreters) and the browser tests.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(TEST_STAMP)
	$(BIN)/ruff check retrieval cli tests benchmarks
	$(BIN)/ruff format --check retrieval cli tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
