# Both targets set everything up on a fresh machine: the venv is created and filled when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision pinned to the builds this machine keeps on disk (see README).
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,milvus,milvus-server]"
	# Unpack the Milvus server's binaries once (7 s), not in the first test that starts one.
	$(BIN)/python -c "import sys; sys.path.insert(0, 'tests'); import services; services.milvus_binary()"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/retrieval demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (subprocesses, kills, Ray, fresh interpreters) and the browser tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check retrieval cli tests benchmarks
	$(BIN)/ruff format --check retrieval cli tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
