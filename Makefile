# ktls_ossl: make demo | make test | make bench (see README.md)
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
KERNELS ?= 6.1,7.2

.PHONY: all deps venv demo test test-host test-vm prepare-vm clean

all: test

deps:
	scripts/install-deps

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -q --upgrade pip

# Rebuilt whenever the bindings or the package metadata change.
$(VENV)/.installed: $(VENV_PYTHON) setup.py pyproject.toml $(wildcard cffi_build/*.py cffi_build/*/*.py)
	$(VENV_PYTHON) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(VENV)/.installed

prepare-vm: venv
	scripts/ktls-vm --kernel all --prepare

demo: venv prepare-vm
	$(VENV_PYTHON) scripts/demo

test: venv prepare-vm
	$(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS)

test-host: venv
	$(VENV_PYTHON) scripts/run-tests --kernels ''

test-vm: venv prepare-vm
	$(VENV_PYTHON) scripts/run-tests --no-host --kernels $(KERNELS)

clean:
	rm -rf build test-results ktls_ossl/*.so *.egg-info
