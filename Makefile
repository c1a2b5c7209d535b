# One command each: `make run` (set up, then the main job on the embedded default data)
# and `make test` (set up, then the default test suite). Both create .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: setup run test test-all

setup: $(STAMP)

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,reference]'
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(PYTHON) -m spt_jax.main $(ARGS)

test: setup
	$(PYTHON) -m pytest $(ARGS)

test-all: setup
	$(PYTHON) -m pytest -m "" $(ARGS)
