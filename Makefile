# The two commands a new user needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/python examples/quickstart.py

lint: venv
	$(BIN)/ruff check aifuncs tests examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python tests/bench/bench_local_model.py

clean:
	rm -rf $(VENV) .aifuncs-demo .pytest_cache .mypy_cache .ruff_cache
