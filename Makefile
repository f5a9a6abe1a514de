# ktls_ossl: make demo | make test | make bench (see README.md)
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
KERNELS ?= 6.1,7.2

.PHONY: all deps venv demo test test-host test-vm prepare-vm bench security-doc clean

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

# The sdist and the wheel must install into clean venvs and run (scripts/check-packaging, ~35 s)
# before the suites run from the tree.
test: venv prepare-vm
	$(VENV_PYTHON) scripts/check-packaging
	$(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS)

test-host: venv
	$(VENV_PYTHON) scripts/run-tests --kernels ''

test-vm: venv prepare-vm
	$(VENV_PYTHON) scripts/run-tests --no-host --kernels $(KERNELS)

# Host + each VM kernel, then docs/BENCHMARKS.md; BENCH_ARGS=--quick|--full|... go to every run.
bench: venv prepare-vm
	@$(VENV_PYTHON) -c 'import matplotlib' 2>/dev/null || $(VENV_PYTHON) -m pip install -q -e '.[test,bench]' \
		|| echo "make bench: matplotlib could not be installed; the chart will be skipped"
	$(VENV_PYTHON) scripts/bench --kernels $(KERNELS) -- $(BENCH_ARGS)

# The hostile-peer suite on the host and each VM kernel, re-recording its outcomes, then
# docs/security-outcomes.json and the table in docs/SECURITY.md (make test fails where they differ).
security-doc: venv prepare-vm
	KTLS_SECURITY_UPDATE=1 $(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS) -- tests/security \
		--ignore=tests/security/test_security_doc.py  # it checks the docs this target is about to write
	$(VENV_PYTHON) scripts/security-table --write

clean:
	rm -rf build test-results ktls_ossl/*.so *.egg-info
