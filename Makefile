# One command each: `make run` (set up, then the main job on the embedded default data)
# and `make test` (set up, then the default test suite). Both create .venv on first use.
# `make run` installs the runtime only; `make test` adds pytest, torch and Meta's code
# (the `reference` extra) for the parity tests.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_HASH := $(shell cat setup.py | cksum | cut -d' ' -f1)
RUN_STAMP := $(VENV)/.installed-run-$(SETUP_HASH)
STAMP := $(VENV)/.installed-test-$(SETUP_HASH)
# The tests also compile TPU programs on this host (tests/accelerators): they need
# libtpu, installed beside the packages, not importable, so that JAX does not load it at
# every start (spt_jax/aot.py finds it there); the version the installed jax's `tpu`
# extra asks for.
LIBTPU_STAMP := $(VENV)/libtpu/.installed-$(SETUP_HASH)
LIBTPU_REQUIREMENT := from importlib.metadata import requires; \
  print(next(r.split(";")[0].strip() for r in requires("jax") if r.startswith("libtpu")))

.PHONY: setup setup-tests check-python run test test-all

setup: $(RUN_STAMP)

setup-tests: $(STAMP) $(LIBTPU_STAMP)

check-python:
	@python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "spt_jax needs Python 3.11 or newer (as jax 0.10 does); python3 is " + sys.version.split()[0])'

$(PYTHON): | check-python
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(RUN_STAMP): setup.py | $(PYTHON)
	$(PYTHON) -m pip install --quiet -e .
	rm -f $(VENV)/.installed-run-*
	touch $@

$(STAMP): setup.py | $(PYTHON)
	$(PYTHON) -m pip install --quiet -e '.[test,reference]'
	rm -f $(VENV)/.installed-test-*
	touch $@

$(LIBTPU_STAMP): $(STAMP)
	rm -rf $(VENV)/libtpu
	$(PYTHON) -m pip install --quiet --no-deps --target $(VENV)/libtpu \
	  "$$($(PYTHON) -c '$(LIBTPU_REQUIREMENT)')"
	touch $@

run: setup
	$(PYTHON) -m spt_jax.main $(ARGS)

test: setup-tests
	$(PYTHON) -m pytest $(ARGS)

test-all: setup-tests
	$(PYTHON) -m pytest -m "" $(ARGS)
