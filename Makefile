# shardcast: the targets people, CI and containers use. Anything longer than a
# line lives in scripts/. `make` alone lists the targets.

CARGO ?= cargo
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help build run test lint format clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z]+:.*## / {printf "  make %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Release build: target/release/shardcast
	$(CARGO) build --release

run: build ## Build, start a local redis-server if none answers, serve on :8080 (flags: ARGS="--shards 2")
	scripts/run $(ARGS)

test: lint ## fmt check + clippy -D warnings + every test (needs redis-server and redis-cli on PATH)
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "make test needs redis-server and redis-cli: apt-get install -y redis-server" >&2; exit 1; }
	$(CARGO) test --workspace

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

format: ## Rewrite the sources with rustfmt
	$(CARGO) fmt --all

clean: ## Remove build output (keeps run/, the local Redis data)
	$(CARGO) clean
