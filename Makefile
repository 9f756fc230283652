# README's two commands: `make test` and `make bench`.
PY ?= python3
PIP = $(PY) -m pip

.PHONY: install test bench gpu-script clean

# CPU machines get torch 2.13.0 (a CPU build lies on this workplace's disk; an unpinned torch would
# pull a multi-GB CUDA build) and triton 3.6.0 for the interpreter. A machine that already has
# torch/triton (the GPU machine) keeps them.
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) install -q triton==3.6.0
	@$(PY) -c "import pytest, hypothesis" 2>/dev/null || $(PIP) install -q pytest hypothesis
	@$(PY) -c "import transformers" 2>/dev/null || $(PIP) install -q transformers==5.17.0
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf build *.egg-info temporal_kernels/_C*.so
