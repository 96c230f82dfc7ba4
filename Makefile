# Iron Carrier — developer entry points. `make demo` and `make test` are the two commands a
# new machine needs; both install what they need first (see `deps`).

CARGO ?= cargo
# Debian's rustc-web 1.85, installed by cross/toolchain.sh, proves the MSRV for real.
MSRV_CARGO ?= /usr/bin/cargo
MSRV_RUSTC ?= /usr/bin/rustc
BIN := target/release/iron-carrier

.PHONY: all build release test test-only lint fmt fmt-check clippy msrv deps demo size bench bench-small clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

## test: formatting, clippy, the Rust 1.85 build check, then every test.
test: deps fmt-check clippy msrv test-only

test-only:
	$(CARGO) test --locked --all-targets

lint: fmt-check clippy msrv

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

## msrv: compile everything with a real Rust 1.85 toolchain (rust-version = "1.85").
msrv:
	./cross/toolchain.sh host
	RUSTC=$(MSRV_RUSTC) $(MSRV_CARGO) check --locked --all-targets --target-dir target/msrv

## deps: system packages the tests use (installed only when missing; needs root for apt).
deps:
	./cross/toolchain.sh deps

demo: release
	./tests/demo.sh $(BIN)

## size: stripped release binary size in bytes.
size: release
	@ls -l $(BIN) | awk '{ printf "stripped x86_64 release binary: %d bytes (%.2f MiB)\n", $$5, $$5/1048576 }'

## bench: the measured scenarios (see tests/bench.sh); `make bench-small` for a quick run.
bench: release
	./tests/bench.sh $(BIN)

bench-small: release
	./tests/bench.sh $(BIN) --small

clean:
	$(CARGO) clean
