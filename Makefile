# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The generation extra needs torch; on the CI machine torch==2.13.0 is the local CPU wheel.
# An unpinned torch pulls a multi-GB CUDA build. Override for a GPU box: make TORCH_SPEC=torch gen-deps
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install gen-deps clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mosaic demo --out demo-out

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

gen-deps: $(STAMP)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[gen,dev]'

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_match.py

clean:
	rm -rf demo-out benchmarks/results .pytest_cache
