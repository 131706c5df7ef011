# `make run`: set up and materialise the whole graph on the built-in sample corpus.
# `make test`: set up (Chromium and its driver included) and run the test suite, as CI does.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# pip's output goes to $(VENV)/setup.log, and is shown only when the install fails.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "setting up $(VENV): PyTorch (CPU build), then the project with the pins in constraints.txt; pip's log: $(VENV)/setup.log"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install torch==2.13.0 > $(VENV)/setup.log 2>&1 || { tail -40 $(VENV)/setup.log; exit 1; }
	@$(PY) -m pip install -c constraints.txt -e '.[train,test,bench,k8s]' >> $(VENV)/setup.log 2>&1 || { tail -40 $(VENV)/setup.log; exit 1; }
	@touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	@mkdir -p .dagster_home
	@DAGSTER_HOME=$(CURDIR)/.dagster_home $(PY) -m embedding_assets.run

# The browser tests drive Debian's Chromium and its driver; installed when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

test: $(VENV)/.installed browser
	$(PY) -m pytest

ui: $(VENV)/.installed
	mkdir -p .dagster_home
	touch .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dagster dev -w workspace.yaml

.PHONY: setup browser run test ui
