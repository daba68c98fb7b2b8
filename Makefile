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
	# It declares the full tensorflow package, which would install a second distribution into
	# the module directory tensorflow-cpu already provides; grpcio and protobuf come with TensorFlow.
	$(BIN)/pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@

install: $(VENV)/.installed

# Train on $(DATA) when $(VAR) holds no artifacts, then run the platform on loopback.
# ONCE=1 replays the held-out day through L0, prints a report and exits.
up: $(VENV)/.installed
	$(BIN)/fmlite up --data $(DATA) --var $(VAR) $(if $(ONCE),--once,) $(if $(REDIS),--redis,)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Benchmark the platform against its peers on loopback; trains first when $(VAR) holds no artifacts.
# QUICK=1 shortens every phase (a few minutes). RECORD=1 appends the figures to docs/benchmarks.md
# and rewrites the chunk-size sweep's plot and table under docs/. BENCH_ARGS passes more options.
bench: $(VENV)/.installed
	@test -f $(VAR)/profiles/CURRENT || $(BIN)/fmlite train --data $(DATA) --out $(VAR)
	$(BIN)/python -m fmlite.cli bench --var $(VAR) $(if $(QUICK),--quick,) \
		$(if $(RECORD),--record docs/benchmarks.md --plot docs/chunk-sweep.png --table docs/chunk-sweep.md,) $(BENCH_ARGS)

clean-var:
	rm -rf $(VAR)
