# rayop — see README.md. Every target sets up what it needs (venv, Debian packages, control-plane binaries).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv deps check-build controlplane helm manifests cluster-up cluster-down test test-unit test-integration lint run bench soak image clean

help:
	@echo "make run      run the operator (starts the local control plane when no cluster is reachable)"
	@echo "make test     set everything up and run lint, unit and integration tests"
	@echo "make helm     build Helm (hack/build-helm.sh) and print its path"
	@echo "make manifests  write the CRDs from api/ and render manifests/ from the Helm chart (docs/install.md)"
	@echo "make bench    run the benchmarks (see docs/benchmarks.md)"
	@echo "make soak     long reliability runs (see docs/reliability.md)"
	@echo "make image    build the operator image with buildah and check it read-only as UID 65532 (docs/image.md)"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

deps:
	@hack/install-deps.sh

# The build checks its inputs before anything else (a missing one fails here, naming it), so it comes first.
controlplane: deps
	@hack/build-control-plane.sh >/dev/null

# Helm, built from the Go module proxy into the cache (hack/build-helm.sh); prints the binary's path.
helm: deps
	@hack/build-helm.sh

# The plain manifests under manifests/, rendered from the Helm chart (tests/unit/test_chart.py checks them).
manifests: venv
	$(BIN)/python -m rayop.api.crd --write
	hack/render-manifests.sh

cluster-up: controlplane venv
	hack/local-cluster.sh up

cluster-down:
	hack/local-cluster.sh down

# mypy strict over the operator's packages as Python imports them (see hack/typecheck.sh), then hack/ looser.
lint: venv
	@hack/typecheck.sh

# The control-plane build's inputs resolve from the files git tracks, in a fresh folder, without the binary cache.
check-build:
	@hack/build-control-plane.sh --check


test-unit: venv helm
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: controlplane venv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

# Unit and integration tests in one lane, the real-Ray e2e tests in another, at the same time (hack/test.sh, which
# also builds Helm in the background on a cold cache: its tests wait for it).
test: controlplane venv lint
	hack/test.sh $(PYTEST_ARGS)

run: controlplane venv
	hack/run.sh

# The Ray benchmark, then the RayJob one (both sim mode, each bringing up its own control plane in /tmp/rayop-bench).
# The Ray one runs the operator as installed by default: its own client and worker settings, every namespace watched.
BENCH_RAYS ?= 100
BENCH_RAYJOBS ?= 100
bench: controlplane venv
	@echo "benchmarks: see docs/benchmarks.md"
	$(BIN)/python bench/reconcile_many.py --rays $(BENCH_RAYS) --operator-defaults --all-namespaces
	$(BIN)/python bench/rayjobs_many.py --rayjobs $(BENCH_RAYJOBS)

# Long reliability runs (docs/reliability.md): the pure fuzz test with 10,000 generated Ray objects, 1,000 random
# spec sequences against a live operator (sim mode, the local control plane; bench/spec_sequences.py splits them
# over SOAK_SEQ_WORKERS pytest processes side by side), then the load-and-churn soak.
SOAK_FUZZ_EXAMPLES ?= 10000
SOAK_SEQ_EXAMPLES ?= 1000
SOAK_SEQ_STEPS ?= 6
SOAK_SEQ_WORKERS ?= 8
# The load-and-churn soak (bench/soak.py, its own sim-mode control plane in /tmp/rayop-soak).
SOAK_RAYS ?= 200
SOAK_MINUTES ?= 30
soak: controlplane venv
	RAYOP_FUZZ_EXAMPLES=$(SOAK_FUZZ_EXAMPLES) RAYOP_FUZZ_RANDOM=1 $(BIN)/pytest tests/unit/test_fuzz_pipeline.py -s -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/python bench/spec_sequences.py --sequences $(SOAK_SEQ_EXAMPLES) --steps $(SOAK_SEQ_STEPS) --workers $(SOAK_SEQ_WORKERS)
	$(BIN)/python bench/soak.py --rays $(SOAK_RAYS) --minutes $(SOAK_MINUTES)

# The operator image without a Docker engine: a local Debian base, buildah, then a read-only run as UID 65532
# (hack/build-image.sh, docs/image.md). Not part of `make test`: a cold run takes about 4 minutes and needs the
# Debian mirror and the package index.
image:
	hack/build-image.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache build *.egg-info
