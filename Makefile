# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The generation extra needs torch; on the CI machine torch==2.13.0 is the local CPU wheel.
# An unpinned torch pulls a multi-GB CUDA build. Override for a GPU box: make TORCH_SPEC=torch gen-deps
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch (pinned by TORCH_SPEC), diffusers and Ray for the generation tests: `make test` only, not `make demo`
GEN_STAMP := $(VENV)/.installed-gen
# The viewer's front-end (OpenSeadragon), pinned in package.json/package-lock.json
NPM ?= npm
NODE_STAMP := node_modules/.installed

.PHONY: demo test install node-deps gen-deps clean bench bench-quick

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

node-deps: $(NODE_STAMP)

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/mosaic demo --out demo-out

test: $(STAMP) $(NODE_STAMP) $(GEN_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# torch first and pinned, so the extras resolve against it instead of pulling a CUDA build
$(GEN_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[gen,ray,dev]'
	touch $(GEN_STAMP)

gen-deps:
	rm -f $(GEN_STAMP)
	$(MAKE) $(GEN_STAMP)

bench: $(STAMP)
	PYTHON=$(BIN)/python scripts/run_benchmarks.sh

bench-quick: $(STAMP)
	PYTHON=$(BIN)/python scripts/run_benchmarks.sh --quick

clean:
	rm -rf demo-out benchmarks/results .pytest_cache build dist *.egg-info
