# All set-up happens here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.con2-installed
# The torch on this machine's disk (CUDA 13.0 build); the package itself accepts torch >= 2.4.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# One architecture keeps the CUDA compile (done even without a GPU, so it cannot rot) short.
export TORCH_CUDA_ARCH_LIST ?= 9.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q --no-build-isolation -e '.[test,dali]'
	touch $@

demo: install
	$(VENV)/bin/con2 demo

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m pytest benchmarks -q

clean:
	rm -rf build con2/_C*.so *.egg-info
