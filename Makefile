# disk-mapper — see README.md. `make demo` and `make test` install their own
# prerequisites (Debian packages, the guest kernel, Go modules).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(CURDIR)/build/tools:$(PATH)
GO ?= go

# Pinned code generators: protoc from Debian bookworm, plugins by exact version.
PROTOC_VERSION := libprotoc 3.21.12
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
TOOLS := $(CURDIR)/build/tools

include image/image.mk

.PHONY: all build deps proto proto-check lint unit test demo clean vmtest bench bench-vm fuzz fresh-check

all: build

deps:
	./scripts/install-deps.sh

build:
	$(GO) build ./...

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	@test "$$(protoc --version)" = "$(PROTOC_VERSION)" || { echo "need $(PROTOC_VERSION), have $$(protoc --version)"; exit 1; }
	protoc --plugin=$(TOOLS)/protoc-gen-go --plugin=$(TOOLS)/protoc-gen-go-grpc \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		recoverproto/recover.proto joinproto/join.proto

# Fails when the checked-in generated code differs from what `make proto` makes.
proto-check: proto
	@git diff --exit-code -- recoverproto joinproto || { echo "generated protobuf code is stale: run make proto and commit"; exit 1; }

lint:
	./scripts/check-pipes_test.sh
	./scripts/check-pipes.sh
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags vmtest ./test/...

unit:
	@rm -f build/faults/report.txt
	$(GO) test -race -count=1 ./...
	@cat build/faults/report.txt

# A narrated boot of one node: first boot, rejoin, manual recovery.
# IMAGE=systemd: the same on the systemd image (image/systemd-initrd).
demo: deps image
	IMAGE=$(IMAGE) ./scripts/demo.sh

# The QEMU + swtpm integration suite (TCG; boots one VM at a time).
vmtest: deps image
	@rm -f build/integration/*.txt
	$(GO) test -tags vmtest -count=1 -timeout 40m -p 1 ./test/...
	@cd build/integration && cat timings.txt crash-matrix.txt wipe-throughput.txt key-hygiene.txt

# DESIGN.md §8's ratios: every benchmark COUNT times (default 5), one table
# (median, min–max, target, load) at the end; raw output in build/bench/.
bench:
	./scripts/bench.sh

# The VM measurements (DM_VM_BENCH_RUNS boots per configuration, default 10):
# time to key with dead JoinService endpoints of each kind beside a healthy
# one, and where the boot's time goes until "Waiting for decryption key".
bench-vm: deps image
	DM_VM_BENCH=1 $(GO) test -tags vmtest -count=1 -timeout 30m -run 'TestMeasureTimeToKeyWithDeadEndpoints|TestMeasureBootPhases' ./test/integration/

# Every fuzz target for a bounded number of executions (seed corpora in testdata/fuzz; FUZZTIME overrides).
fuzz:
	./scripts/fuzz.sh

test: deps proto-check lint unit fuzz image-verify-unit image-systemd-check vmtest

# Clones the repository (HEAD) into a temporary directory and runs `make demo`
# there, as a new user would; prints how long it took.
fresh-check:
	./scripts/fresh-check.sh

clean:
	rm -rf build
