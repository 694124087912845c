# shardcast: the targets people, CI and containers use. Anything longer than a
# line lives in scripts/. `make` alone lists the targets.

CARGO ?= cargo
ARGS ?=
N ?= 6000
DURATION ?= 60s

.DEFAULT_GOAL := help
.PHONY: help build run test setup lint format docs clean load-test bench figures scale-test monitoring-up monitoring-down deflate-bench presence-bench million fanout syscalls client flamegraph fuzz vendor-check docker-test
.PHONY: dev-up blue-up green-up promote rollback status logs dev-down

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Release build: target/release/shardcast
	$(CARGO) build --release

run: build ## Build, start a local redis-server if none answers, serve on :8080 (flags: ARGS="--shards 2")
	scripts/run $(ARGS)

EPOLL_TESTS = --test autobahn --test contract_ws --test smoke --test drain --test hostile --test idle --test deflate --test rooms --test history

test: setup lint ## The full tier: fmt check + clippy -D warnings + every test, with real Redis, nginx, Chromium (installs them when root; the scale-out test needs root)
	@test "$$(id -u)" = 0 || { echo "make test needs root: the scale-out test builds network namespaces (cargo test alone is the fast tier: no root, no services)" >&2; exit 1; }
	$(CARGO) test --workspace --features shardcast/full-tier
	@# The suite above runs on the plane --io auto picks (io_uring where the kernel allows it);
	@# the tests of the data plane run again on the epoll fallback.
	SHARDCAST_IO=epoll $(CARGO) test --workspace --features shardcast/full-tier $(EPOLL_TESTS)

setup: ## Install what make test drives (Debian packages, kosoku, the console's npm packages) where missing; needs root
	scripts/setup test

lint: ## rustfmt check and clippy with warnings as errors, the workspace and fuzz/ (its own workspace)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features shardcast/full-tier -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

docker-test: ## Build docker/Dockerfile, run compose.yml's Redis, blue, green and nginx: smoke, promote, image checks (Docker, else podman; installs it when root)
	$(CARGO) build -p shardcast-bench
	scripts/docker-test

load-test: ## The original load test: N=6000 sockets, mix mode, DURATION=60s, on :8080 (starts a server if none); report and PNG in run/load-test/
	$(CARGO) build --release -p shardcast -p shardcast-bench
	N=$(N) DURATION=$(DURATION) scripts/load-test $(ARGS)

bench: ## Standard suite on HEAD's committed tree (ALLOW_DIRTY=1: a changed tree, marked so): bench/results/latest.json, bench/RESULTS.md, then make figures
	$(CARGO) build --release --workspace
	@# The figures follow latest.json even when the suite exits 1 on faults; its exit code is kept.
	target/release/shardcast-bench suite $(if $(filter 1,$(ALLOW_DIRTY)),--allow-dirty) $(ARGS); s=$$?; \
		target/release/shardcast-bench figures && exit $$s

figures: ## Rewrite the generated figures in README.md and docs/BENCHMARKS.md from bench/results/latest.json
	$(CARGO) build --release -p shardcast-bench
	target/release/shardcast-bench figures

scale-test: ## Scale-out test in network namespaces: N=12000 sockets, NODES=3 nodes, PUBSUB=plain|sharded, REDIS=single|cluster (needs root)
	$(CARGO) build --release -p shardcast -p shardcast-bench
	N=$(if $(filter file,$(origin N)),12000,$(N)) scripts/scale-test $(ARGS)

deflate-bench: ## permessage-deflate on broadcasts: bytes on the wire and server CPU per delivery, without and with (N=2000 sockets, B=50 broadcasts, ROUNDS=3)
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/deflate-bench

presence-bench: ## Presence's cost to a shard: CPU with and without it, N=10000 sockets in a room, HEARTBEAT=5s, WINDOW=30s, ROUNDS=3
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/presence-bench

million: ## A million WebSocket sessions on this machine (N=1000000, as many 1-shard processes as the 20,000-descriptor limit takes on one port): all connected, memory, heartbeat CPU, one broadcast to all, SIGTERM drain; needs root and tuning/apply
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/million

fanout: ## One broadcast to N=10000 sockets of one room: POST to last receipt and server CPU per delivery, shardcast on io_uring and on epoll beside uws pubsub, same run (B=5 broadcasts, ROUNDS=3)
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/fanout

syscalls: ## System calls and CPU per reply under the rate test: shardcast on io_uring, on epoll, and uws, same run (N=10000 RATE=20000 DURATION=20 WINDOW=10 ROUNDS=3; needs root for perf)
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/syscalls

client: ## Build the JavaScript client (clients/js/src → dist/, which the server embeds and serves at /shardcast.js); needs node and npm
	cd clients/js && { test -d node_modules || npm ci --no-audit --no-fund; } && npm run build

flamegraph: ## Profile the server under load: run/flamegraph/flamegraph.svg (MODE=rate DURATION=15s N= SHARDS=; needs perf)
	scripts/flamegraph

vendor-check: ## Prove shards/vendor/glommio is the published glommio 0.9.0 plus shards/vendor/patches and nothing else (crate cached in run/vendor/)
	scripts/vendor-glommio check

fuzz: ## Fuzz every parser of outside input, FUZZ_SECONDS=60 each, new finds merged into fuzz/seeds (cargo-fuzz, stable + RUSTC_BOOTSTRAP)
	scripts/fuzz

monitoring-up: ## Prometheus (:9090) and Alertmanager (:9093) on loopback against the service, files under run/monitoring/
	scripts/monitoring-up

monitoring-down: ## Stop what monitoring-up started
	scripts/monitoring-up stop

format: ## Rewrite the sources with rustfmt
	$(CARGO) fmt --all

docs: ## Regenerate docs/CONFIG.md, every setting, from the Config struct (a test fails while it is stale)
	$(CARGO) run --quiet --example config_reference

clean: ## Remove build output (keeps run/, the local Redis data)
	$(CARGO) clean

dev-up: ## Blue/green dev stack: local Redis, nginx on :8080, blue (:8081) active (state in run/deploy/)
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/deploy dev-up

blue-up: ## Start the blue color (:8081, admin :9101) if it is not running, wait until ready
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/deploy blue-up

green-up: ## Start the green color (:8082, admin :9102) if it is not running, wait until ready
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/deploy green-up

promote: ## Start the idle color, smoke-test it, switch nginx to it, drain the old color
	$(CARGO) build --release -p shardcast -p shardcast-bench
	scripts/deploy promote

rollback: ## Switch nginx back to the other color (restarted if gone) and drain this one
	scripts/deploy rollback

status: ## Active color, nginx, and each color's pid and /status
	scripts/deploy status

logs: ## Follow both colors' logs, prefixed [blue]/[green] (Ctrl-C stops)
	scripts/deploy logs

dev-down: ## Stop both colors and nginx (Redis keeps running)
	scripts/deploy dev-down
