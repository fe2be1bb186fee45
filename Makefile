# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv if missing and install the pinned dependencies once (re-done when they change).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export MPLBACKEND := Agg
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test install clean-demo

install: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: $(INSTALLED)
	$(BIN)/streetlib run --profile demo

# Lint, formatting and the import-layer contracts (pyproject.toml) first: they take seconds, the tests minutes.
test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf data/synth-demo notebooks/executed/demo
