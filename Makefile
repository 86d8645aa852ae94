# The two set-up commands of the README. Each creates its own virtual environment on first use.
#   make demo   ES fine-tuning of the embedded tiny model on Countdown (CPU, minutes)
#   make test   the test suite (installs the test extra: pytest, hypothesis, ruff, CPU torch for parity checks)
# and, for development: make test-fast (the suite without the `slow` end-to-end runs), make lint (ruff),
#   make test-tpu (Python >= 3.12: a .venv-tpu with jax[tpu]; the deviceless TPU compile tests of `esjax plan`)
# On an accelerator host, instead of `make install`:
#   make install-cuda12   NVIDIA GPUs, CUDA 12 wheels (install-cuda13: CUDA 13; the driver must support it)
#   make install-tpu      Cloud TPU VM (libtpu)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch for the parity tests; override e.g. TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-tpu lint install install-cuda12 install-cuda13 install-tpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.base

install-cuda12 install-cuda13 install-tpu: install-%: | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	$(BIN)/python -c "import jax; print('jax', jax.__version__, 'devices:', jax.devices())"

demo: $(VENV)/.base
	$(BIN)/esjax demo

test: $(VENV)/.test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# libtpu compiles for a named TPU slice on any host (no TPU needed); jax[tpu] 0.12 needs Python >= 3.12
PYTHON_TPU ?= python3.12
test-tpu:
	$(PYTHON_TPU) -m venv .venv-tpu
	.venv-tpu/bin/python -m pip install --quiet -e '.[tpu]' pytest hypothesis
	TPU_SKIP_MDS_QUERY=1 JAX_PLATFORMS=cpu .venv-tpu/bin/python -m pytest tests/test_compile_plan.py $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
