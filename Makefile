# Two commands from a fresh clone: `make run` and `make test`.
# Both create .venv and install the project (with its dev extra) when needed.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test lint format

$(STAMP): pyproject.toml
	@echo "==> installing Orchestrator into $(VENV) (first run takes about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 \
		|| (cat $(VENV)/install.log >&2; exit 1)
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' >> $(VENV)/install.log 2>&1 \
		|| (cat $(VENV)/install.log >&2; exit 1)
	@$(BIN)/python -c "import django, channels, daphne, rq, psycopg, orchestrator.config; \
		orchestrator.embedded.bin_dir()"
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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
