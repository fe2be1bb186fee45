# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv if missing and install the pinned dependencies once (re-done when they change).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export MPLBACKEND := Agg
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-floor install clean-demo

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

# The oldest stack pyproject.toml's ranges admit (requirements-floor.txt, Colab's mid-2025 TF 2.19 / Keras 3.10 /
# numpy 2.0 / pandas 2.2) in its own venv. CI runs it after `make test`. First, as Colab's setup cell would, pip is
# asked what installing streetlib with its dependencies on top of that stack would change: streetlib alone, or the
# ranges have drifted from the floor. Then the tests less those marked slow (one synthetic-data test): the smoke
# notebooks included. Lint and the import contracts are left to `make test`: they do not depend on the stack.
FLOOR := .venv-floor
FBIN := $(FLOOR)/bin
FLOOR_INSTALLED := $(FLOOR)/.installed

$(FLOOR_INSTALLED): pyproject.toml requirements-floor.txt
	test -x $(FBIN)/python || $(PYTHON) -m venv $(FLOOR)
	$(FBIN)/python -m pip install --quiet --upgrade pip
	$(FBIN)/python -m pip install --quiet -r requirements-floor.txt
	$(FBIN)/python -m pip install --quiet --no-deps -e .
	touch $@

test-floor: $(FLOOR_INSTALLED)
	$(FBIN)/python -m pip install --dry-run . > $(FLOOR)/dry-run.txt
	@grep -Eq '^Would install streetlib-[^ ]+$$' $(FLOOR)/dry-run.txt || { tail -n 1 $(FLOOR)/dry-run.txt; \
		echo "installing streetlib would replace packages of the floor stack: see pyproject.toml's ranges"; exit 1; }
	$(FBIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf data/synth-demo notebooks/executed/demo
