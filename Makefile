# All set-up happens here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.con2-installed
# The torch on this machine's disk (CUDA 13.0 build); the package itself accepts torch >= 2.4.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# One architecture keeps the CUDA compile short. It runs whenever a CUDA toolkit is found (nvcc;
# these machines and CI have one), GPU or not, so the kernels cannot rot.
export TORCH_CUDA_ARCH_LIST ?= 9.0
# make test fails when con2._C is missing or partial (its tests would skip); CON2_REQUIRE_NATIVE=0 (a
# build with CON2_NO_EXT=1) tests the PyTorch references alone.
CON2_REQUIRE_NATIVE ?= $(if $(CON2_NO_EXT),0,1)

.PHONY: install demo test bench clean

install: $(STAMP)

# Every source of con2._C, headers included: the kernels live in csrc/cuda/*.cuh.
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q --no-build-isolation -e '.[test,dali]'
	touch $@

demo: install
	$(VENV)/bin/con2 demo

test: install
	CON2_REQUIRE_NATIVE=$(CON2_REQUIRE_NATIVE) $(PY) -m pytest tests -q

bench: install
	$(PY) -m pytest benchmarks -q

clean:  # the stamp too, so the next make rebuilds con2._C instead of testing the references
	rm -rf build con2/_C*.so *.egg-info $(STAMP)
