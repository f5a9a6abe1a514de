# ktls_ossl: make demo | make test | make bench | make soak (see README.md)
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
KERNELS ?= 6.1,7.2
# The host suite runs on each supported Python: $(VENV)'s (Debian 12: 3.11) and one venv per version
# below (.venv-3.X, from $$PYENV_ROOT/versions/3.X.*/bin/python3 or python3.X on PATH). The VM kernels
# run the oldest (first kernel) and the newest (last kernel) of them (scripts/run-tests --pythons).
EXTRA_PYTHONS ?= 3.10 3.12 3.13
EXTRA_VENVS := $(foreach v,$(EXTRA_PYTHONS),.venv-$(v))
comma := ,
empty :=
space := $(empty) $(empty)
TEST_PYTHONS := $(subst $(space),$(comma),$(strip $(VENV_PYTHON) $(EXTRA_VENVS:%=%/bin/python)))
BINDING_SOURCES := setup.py pyproject.toml $(wildcard cffi_build/*.py cffi_build/*/*.py)

.PHONY: all deps venv venvs demo test test-host test-vm prepare-vm bench security-doc soak clean

all: test

deps:
	scripts/install-deps

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -q --upgrade pip

# Rebuilt whenever the bindings or the package metadata change.
$(VENV)/.installed: $(VENV_PYTHON) $(BINDING_SOURCES)
	$(VENV_PYTHON) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(VENV)/.installed

# Kept: make would otherwise delete these as intermediate files of the pattern rules.
.PRECIOUS: .venv-%/bin/python .venv-%/.installed

# A Python that is not installed stops here, with the places it was looked for.
.venv-%/bin/python:
	@py=$$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$*.*/bin/python3 2>/dev/null | sort -V | tail -n 1); \
	if [ -z "$$py" ] || ! "$$py" -c pass 2>/dev/null; then py=$$(command -v python$* || true); fi; \
	if [ -z "$$py" ] || ! "$$py" -c 'import sys; assert "%d.%d" % sys.version_info[:2] == "$*"' 2>/dev/null; then \
		echo "make: Python $* is not installed (looked for $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$*.*/bin/python3" \
			"and python$* on PATH); the host suite runs on Python 3.10-3.13: install it (e.g. pyenv install $*)" >&2; \
		exit 1; \
	fi; \
	echo "$$py -m venv .venv-$*"; "$$py" -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip setuptools wheel  # 3.12+ venvs have no setuptools; tests run setup.py

# Each venv installs the tree in place (pip install -e): the extension is one abi3 build
# (ktls_ossl/_ossl.abi3.so, cffi's limited API) that every supported Python loads.
# The oldest Python also gets the oldest supported pyOpenSSL and cryptography (constraints-oldest.txt), so
# the host suite and the first VM kernel prove the bottom of the supported range, the others the top.
OLDEST_PYTHON := $(firstword $(EXTRA_PYTHONS))
.venv-%/.installed: .venv-%/bin/python $(BINDING_SOURCES) constraints-oldest.txt
	.venv-$*/bin/python -m pip install -q -e '.[test]' $(if $(filter $*,$(OLDEST_PYTHON)),-c constraints-oldest.txt)
	touch $@

venvs: venv $(EXTRA_VENVS:%=%/.installed)

prepare-vm: venv
	scripts/ktls-vm --kernel all --prepare

demo: venv prepare-vm
	$(VENV_PYTHON) scripts/demo

# The sdist and the wheel must install into clean venvs and run (scripts/check-packaging, ~35 s)
# before the suites run from the tree.
# Then the host suite on every Python, and each VM kernel (oldest Python on the first, newest on the last).
test: venvs prepare-vm
	$(VENV_PYTHON) scripts/check-packaging
	$(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS) --pythons $(TEST_PYTHONS)

test-host: venvs
	$(VENV_PYTHON) scripts/run-tests --kernels '' --pythons $(TEST_PYTHONS)

test-vm: venvs prepare-vm
	$(VENV_PYTHON) scripts/run-tests --no-host --kernels $(KERNELS) --pythons $(TEST_PYTHONS)

# Host + each VM kernel, then docs/BENCHMARKS.md; BENCH_ARGS=--quick|--full|... go to every run.
bench: venv prepare-vm
	@$(VENV_PYTHON) -c 'import matplotlib' 2>/dev/null || $(VENV_PYTHON) -m pip install -q -e '.[test,bench]' \
		|| echo "make bench: matplotlib could not be installed; the chart will be skipped"
	$(VENV_PYTHON) scripts/bench --kernels $(KERNELS) -- $(BENCH_ARGS)

# The hostile-peer suite on the host and each VM kernel, re-recording its outcomes, then
# docs/security-outcomes.json and the table in docs/SECURITY.md (make test fails where they differ).
# Each VM kernel with the Python make test gives it (oldest, newest), the host with $(VENV)'s.
security-doc: venvs prepare-vm
	KTLS_SECURITY_UPDATE=1 $(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS) --pythons $(TEST_PYTHONS) \
		--host-python $(VENV_PYTHON) -- tests/security \
		--ignore=tests/security/test_security_doc.py  # it checks the docs this target is about to write
	$(VENV_PYTHON) scripts/security-table --write

# The reliability suite (tests/soak) at full scale: 1,000 connections, 1 GiB per TLS version x cipher x
# I/O path, faults, netem, a SOAK_MINUTES soak; the host and each VM kernel side by side (three lanes:
# the soak mostly waits), then docs/reliability-results.json and docs/RELIABILITY.md, failures included.
# make test runs the same cases at their short scale, and checks the document (test_reliability_doc.py,
# left out here: it checks what this target is about to write). About SOAK_MINUTES + 30 minutes.
SOAK_MINUTES ?= 30
soak: venvs prepare-vm
	rm -f test-results/reliability/*.jsonl
	KTLS_SOAK=full KTLS_SOAK_MINUTES=$(SOAK_MINUTES) KTLS_VM_TIMEOUT=$$(( ($(SOAK_MINUTES) + 120) * 60 )) \
		$(VENV_PYTHON) scripts/run-tests --kernels $(KERNELS) --pythons $(TEST_PYTHONS) --host-python $(VENV_PYTHON) \
		--lanes 3 -- tests/soak --ignore=tests/soak/test_reliability_doc.py $(SOAK_ARGS); \
	status=$$?; $(VENV_PYTHON) scripts/reliability-table --write && exit $$status

clean:
	rm -rf build test-results ktls_ossl/*.so *.egg-info
