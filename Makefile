# Set-up and main jobs of fmlite-platform. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/mind-small-sample
VAR ?= var
PYTEST_ARGS ?=

.PHONY: up test bench install clean-var

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[all]'
	touch $@

install: $(VENV)/.installed

# Train on $(DATA) when $(VAR) holds no artifacts, then run the platform on loopback.
# ONCE=1 replays the held-out day through L0, prints a report and exits.
up: $(VENV)/.installed
	$(BIN)/fmlite up --data $(DATA) --var $(VAR) $(if $(ONCE),--once,)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-var:
	rm -rf $(VAR)
