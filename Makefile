# `make run`: set up and materialise the whole graph on the built-in sample corpus.
# `make test`: set up and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[train,test,bench,k8s]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	mkdir -p .dagster_home
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(PY) -m embedding_assets.run

test: $(VENV)/.installed
	$(PY) -m pytest

ui: $(VENV)/.installed
	mkdir -p .dagster_home
	touch .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dagster dev -w workspace.yaml

.PHONY: setup run test ui
