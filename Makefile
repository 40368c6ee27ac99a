# cdc: local development, tests and demo. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CDC := $(BIN)/cdc
DOCKER ?=
COMPOSE := docker compose -f deploy/docker-compose.yml
PYTEST_ARGS ?=

.PHONY: help install test test-unit lint format up down psql demo bench clean

help:
	@echo "make install   create $(VENV) and install cdc with all extras"
	@echo "make test      run the whole test suite (unit + integration, real databases)"
	@echo "make lint      ruff + mypy"
	@echo "make up        start the local stack (DOCKER=1: deploy/docker-compose.yml)"
	@echo "make psql      open psql on the local stack"
	@echo "make down      stop the local stack"
	@echo "make demo      start the stack and run the demo"
	@echo "make bench     run the benchmarks, write docs/benchmarks.md (BENCH_ARGS=--quick)"

$(BIN)/.installed: pyproject.toml cdc/protocol/_speedups.c cdc/apply/_fold.c cdc/load/_copyout.c cdc/sinks/clickhouse/_rowbinary.c
	@scripts/ensure-python $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo,test,dev]'
	@touch $@

install: $(BIN)/.installed

test: install
	@scripts/ensure-postgres
	@scripts/ensure-promtool
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: install
ifdef DOCKER
	$(COMPOSE) up -d
else
	@scripts/ensure-postgres
	$(CDC) stack up
endif

down: install
ifdef DOCKER
	$(COMPOSE) down
else
	$(CDC) stack down
endif

psql: up
ifdef DOCKER
	$(COMPOSE) exec postgres psql -U postgres
else
	$(CDC) stack psql
endif

demo: up
	$(CDC) demo

bench: install
	@scripts/ensure-postgres
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	-$(CDC) stack down --purge
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
