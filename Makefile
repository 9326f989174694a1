# Two commands on a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
# TORCH is the torch requirement. On machines that carry the CPU wheel torch 2.13.0 in
# /opt/wheels we take it (a plain `torch` would pull a multi-GB CUDA build there);
# elsewhere plain `torch` (override: make test TORCH='torch==2.5.1').
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= $(shell ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1 && echo torch==2.13.0 || echo torch)
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

BIN = $(VENV)/bin

.PHONY: demo test venv venv-test bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-run
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

venv: $(VENV)/.stamp-run
venv-test: $(VENV)/.stamp-test

demo: $(VENV)/.stamp-run
	$(BIN)/scoredyn study all --quick --out $(DEMO_OUT)

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.stamp-run
	$(BIN)/python bench/analytic.py
	$(BIN)/python bench/samplers.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/fixed_points.py
	$(BIN)/python bench/scale.py

# On a CUDA machine: CUDA tests, GPU benchmarks, bf16 training, a --full study smoke run (~8 min on
# an H100); writes runs/gpu_check/gpu_section.md. Without CUDA it says so and exits 0.
gpu-check: $(VENV)/.stamp-test
	$(BIN)/python scripts/gpu_check.py --out runs/gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
