# Two commands for a newcomer: `make serve` and `make test`. Both bootstrap .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PIPELINE ?= video
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck-tree bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: here it resolves to the local CPU wheel, elsewhere to the ordinary build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,cluster]'
	@touch $@

serve: $(STAMP)
	$(BIN)/streamserve serve --host $(HOST) --port $(PORT) --pipeline $(PIPELINE)

# The package maps top-level folders to streamserve.<name>; linters that walk folders see it through
# a tree of symlinks with the installed layout.
typecheck-tree:
	@rm -rf build/typing && mkdir -p build/typing/streamserve
	@for f in streamserve/*; do ln -s "$(CURDIR)/$$f" build/typing/streamserve/; done
	@for p in pipelines schedulers kv_rolling transport kernels; do cp -rs "$(CURDIR)/$$p" build/typing/streamserve/$$p; done
	@find build/typing -name __pycache__ -prune -exec rm -rf {} +

lint: $(STAMP) typecheck-tree
	$(BIN)/ruff check .
	cd build/typing && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p streamserve
	$(BIN)/mypy tests
	cd build/typing && PYTHONPATH=$(CURDIR)/build/typing $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/streamserve bench transport

clean:
	rm -rf build .pytest_cache .mypy_cache
