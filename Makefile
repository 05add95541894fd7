# Herald: `make run` starts everything locally; `make test` installs what it needs and tests it all.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export HERALD_ROOT := $(CURDIR)
PACKAGES := herald_contracts herald_kit herald_twilio herald_devstack herald_preferences herald_ingest \
	herald_scheduler herald_dispatcher herald_sms_sender herald_email_sender herald_voice_sender \
	herald_sandbox

.PHONY: help setup run test test-unit lint fmt schemas bench chaos infra-up infra-down infra-status reset

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## Install uv, the Python workspace, the Kafka jars and FerretDB (idempotent)
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv sync --frozen
	bash deploy/local/infra.sh install
	bash deploy/local/browser.sh install
	bash deploy/tools/helm.sh install
	bash deploy/local/prometheus.sh install

run: setup ## Start Kafka, FerretDB, every service and the sandbox; Ctrl-C stops all
	uv run --frozen herald-run $(if $(PROMETHEUS),--prometheus)

test: setup ## Lint, then unit, contract, integration and e2e tests on the real infrastructure
	bash scripts/test.sh

test-unit: ## Unit and contract tests only (no infrastructure)
	uv run --frozen pytest tests/unit tests/contract

lint: ## ruff check, ruff format --check, mypy --strict
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy $(addprefix -p ,$(PACKAGES))

.PHONY: check-deploy
check-deploy: ## Helm lint/template, Kubernetes schemas, promtool rules, skaffold schema (offline)
	bash scripts/check-deploy.sh

fmt: ## Format and fix what ruff can
	uv run --frozen ruff format .
	uv run --frozen ruff check --fix .

schemas: ## Regenerate schemas/ (event JSON Schemas, AsyncAPI, OpenAPI) from the models
	uv run --frozen herald-schemas schemas
	uv run --frozen herald-openapi schemas

bench: setup ## Run the benchmarks; figures land in bench-results/
	bash scripts/bench.sh

chaos: setup ## Fault injection at full size (20,000 contacts); prints the reconciliation table
	bash scripts/chaos.sh

infra-up: ## Start only Kafka and FerretDB
	bash deploy/local/infra.sh start

infra-down: ## Stop Kafka, FerretDB and any service an earlier make run left running
	bash deploy/local/infra.sh stop

infra-status: ## Are Kafka and FerretDB running?
	bash deploy/local/infra.sh status

reset: ## Forget what make run stored (Kafka's topics, the database); stop make run first
	bash deploy/local/infra.sh reset
