# twill — see README.md. `make demo` runs three Docker hosts with twill; `make test` runs the tests.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin
FUZZTIME ?= 15s

.PHONY: all build test unit e2e fuzz bench plugin demo demo-down clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/twilld ./cmd/twilld
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/twillctl ./cmd/twillctl

# The whole suite: unit tests, kernel tests (as root: real namespaces, TUN,
# etcd), bounded fuzzing, then the Docker end-to-end run.
test: build unit fuzz e2e

# As root the kernel tests run, among them one against a real flanneld built
# here (scripts/flanneld.sh; its udp backend needs gcc). bpf-check regenerates
# the kernel datapath's committed BPF object with clang and fails on a difference.
unit:
	$(GO) vet ./...
	bash scripts/bpf-check.sh
	if [ "$$(id -u)" = 0 ]; then f=$$(bash scripts/flanneld.sh) || exit 1; export TWILL_FLANNELD=$$f; fi; \
	$(GO) test -count=1 -p 1 -timeout 30m ./...

fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

e2e: build
	bash scripts/e2e.sh

bench: build
	bash scripts/bench.sh

plugin: build
	bash scripts/plugin.sh

demo:
	bash scripts/demo.sh up

demo-down:
	bash scripts/demo.sh down

clean:
	rm -rf $(BIN) plugin/build
