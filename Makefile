# haddock: developer and CI entry points. `make test` works on a fresh Debian machine:
# it bootstraps (apt packages, Docker engine, .venv, test images) first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV := .venv
BIN := $(VENV)/bin
DOCKER ?= docker
PYTEST_ARGS ?=
SERVE_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help bootstrap lint test serve proto proto-release bench clean-containers

help:
	@echo "targets: bootstrap lint test serve proto proto-release bench clean-containers"
	@echo "  make test PYTEST_ARGS='-k registry -x'    make serve SERVE_ARGS='--port 50051'"

bootstrap:
	bash scripts/bootstrap.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	bash scripts/check-proto.sh

test: bootstrap
	@$(MAKE) --no-print-directory lint
	@rc=0; $(BIN)/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 ]]; then \
		echo "make test: FAILED: pytest collected no tests (exit code 5); a test run must run tests" >&2; \
	elif [[ $$rc -ne 0 ]]; then \
		echo "make test: FAILED: pytest exit code $$rc" >&2; \
	fi; \
	exit $$rc

serve: bootstrap
	$(BIN)/haddock serve $(SERVE_ARGS)

# Regenerate the checked-in Python code of the contract (proto/haddock/v1); `make lint` fails when stale.
proto:
	bash scripts/gen-proto.sh

# Record the contract as released: proto/released/haddock.binpb is the buf image that `buf breaking`
# (scripts/check-proto.sh) checks against. Run it ONLY when a version is released (and commit the
# image with the release), never to silence a breaking-change failure. Current image: release 0.1.0.
proto-release:
	$(BIN)/buf build proto -o proto/released/haddock.binpb

# The figures of issue 9's "Done means" (bench/RESULTS.md); py-spy profiles where a goal is missed.
bench: bootstrap
	@[[ -x $(BIN)/py-spy ]] || $(BIN)/pip install --disable-pip-version-check -q -e '.[bench]'
	$(BIN)/python -m bench

clean-containers:
	@ids="$$($(DOCKER) ps -aq --filter label=haddock.node-id)"; \
	if [[ -n "$$ids" ]]; then \
		xargs $(DOCKER) rm -f <<<"$$ids"; \
	else \
		echo "no containers labelled haddock.node-id"; \
	fi
