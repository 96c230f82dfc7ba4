# Iron Carrier — developer entry points. `make demo` and `make test` are the two commands a
# new machine needs; both install what they need first (see `deps`).

CARGO ?= cargo
# Debian's rustc-web 1.85, installed by cross/toolchain.sh, proves the MSRV for real.
MSRV_CARGO ?= /usr/bin/cargo
MSRV_RUSTC ?= /usr/bin/rustc
BIN := target/release/iron-carrier

# cross-rs, its config (kept in cross/, not at the root) and the targets it builds.
CROSS ?= cross
CROSS_CONFIG ?= $(CURDIR)/cross/Cross.toml
CROSS_TARGETS := arm-unknown-linux-gnueabihf armv7-unknown-linux-gnueabihf \
	aarch64-unknown-linux-gnu arm-unknown-linux-musleabihf armv7-unknown-linux-musleabihf \
	aarch64-unknown-linux-musl
# What `make cross-test` builds and runs under qemu (cross/cross-test.sh, cross/env.sh), and
# which of them run the whole suite rather than the core one (cross/qemu-core.txt).
CROSS_TEST_TARGETS ?= armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu \
	arm-unknown-linux-musleabihf mipsel-unknown-linux-musl mips-unknown-linux-musl
CROSS_TEST_FULL ?=

.PHONY: all build release test test-only lint shellcheck fmt fmt-check clippy msrv deps demo size bench \
	fuzz fuzz-smoke fuzz-seeds install uninstall \
	bench-small bench-full clean cross-test cross-test-full cross-rss dist $(CROSS_TARGETS:%=cross-%)

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

## install: the release binary, the man page and the systemd unit (its Exec lines pointed at
## $(PREFIX)/bin) under $(DESTDIR)$(PREFIX). Builds the binary first only when it is missing or
## older than the sources, so `make release && sudo make install` needs no cargo for root.
PREFIX ?= /usr/local
DESTDIR ?=
INSTALL ?= install
UNIT := buildroot/package/iron-carrier/iron-carrier.service
BINDIR = $(DESTDIR)$(PREFIX)/bin
MAN1DIR = $(DESTDIR)$(PREFIX)/share/man/man1
UNITDIR = $(DESTDIR)$(PREFIX)/lib/systemd/system

$(BIN): Cargo.toml Cargo.lock $(shell find src -name '*.rs')
	$(CARGO) build --release --locked

install: $(BIN)
	$(INSTALL) -d "$(BINDIR)" "$(MAN1DIR)" "$(UNITDIR)"
	$(INSTALL) -m 0755 $(BIN) "$(BINDIR)/iron-carrier"
	$(INSTALL) -m 0644 doc/iron-carrier.1 "$(MAN1DIR)/iron-carrier.1"
	sed 's|^\(Exec[A-Za-z]*=\)/usr/bin/iron-carrier|\1$(PREFIX)/bin/iron-carrier|' $(UNIT) \
		> "$(UNITDIR)/iron-carrier.service.tmp"
	chmod 0644 "$(UNITDIR)/iron-carrier.service.tmp"
	mv -f "$(UNITDIR)/iron-carrier.service.tmp" "$(UNITDIR)/iron-carrier.service"

uninstall:
	rm -f "$(BINDIR)/iron-carrier" "$(MAN1DIR)/iron-carrier.1" \
		"$(UNITDIR)/iron-carrier.service"

## test: formatting, clippy, shellcheck, the Rust 1.85 build check, every test, then a
## short run of each fuzz target.
test: deps fmt-check clippy shellcheck msrv test-only fuzz-smoke

test-only:
	$(CARGO) test --locked --all-targets

lint: fmt-check clippy shellcheck msrv

## shellcheck: the shell scripts of the build, CI and tests (the init scripts are checked by
## tests/init_script.rs, with the exclusions an rc.common script needs).
shellcheck:
	shellcheck -x .ci/run cross/*.sh tests/*.sh fuzz/*.sh

fmt:
	$(CARGO) fmt
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

fmt-check:
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml

## fuzz-smoke: each fuzz target (fuzz/: the frame and message decoders, the handshake) for
## 20 s from its seeds; installs cargo-fuzz (pinned) if missing. Part of `make test`.
fuzz-smoke:
	./fuzz/run.sh smoke

## fuzz: long runs: each target to FUZZ_RUNS executions (default 10 million) or FUZZ_SECONDS
## (default 3600) on every core; prints the executions per target.
fuzz:
	./fuzz/run.sh long

## fuzz-seeds: rewrites fuzz/seeds/ from the codec's sample messages.
fuzz-seeds:
	./fuzz/run.sh seeds

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

## bench: the measured scenarios side by side with rsync, Unison and Syncthing (see
## tests/bench.sh); `make bench-small` for a quick run, `make bench-full` adds the 100,000-file
## five-node scale scenario. `make bench BASELINE=/path/to/old/iron-carrier` (or
## BENCH_BASELINE=... in the environment) also measures that build, interleaved with this one
## BENCH_PAIRS times (default 2): before and after from one run.
BASELINE ?= $(BENCH_BASELINE)

bench: release
	BENCH_BASELINE="$(BASELINE)" ./tests/bench.sh $(BIN)

bench-full: release
	BENCH_BASELINE="$(BASELINE)" ./tests/bench.sh $(BIN) --full

bench-small: release
	BENCH_BASELINE="$(BASELINE)" ./tests/bench.sh $(BIN) --small

## cross-test: builds the tests for ARMv6 (musl, static), armv7 and aarch64 (glibc), mipsel and
## mips (musl, static) with Rust 1.85 and no Docker (cross/env.sh), and runs the core suite
## (cross/qemu-core.txt) of each under qemu-user on the CPU it stands for (ARM1176, 24KEc,
## 24Kc). Installs the toolchains first (cross/toolchain.sh cross, needs root). Tests that
## need the host are left out (cross/qemu-skip.txt). Prints the test counts per target.
cross-test:
	CROSS_TEST_TARGETS="$(CROSS_TEST_TARGETS)" CROSS_TEST_FULL="$(CROSS_TEST_FULL)" \
		./cross/cross-test.sh

## cross-test-full: the whole suite instead of the core one, for armv7 unless
## CROSS_TEST_FULL names other targets (about 15 minutes a target under qemu).
cross-test-full:
	CROSS_TEST_TARGETS="$(or $(CROSS_TEST_FULL),armv7-unknown-linux-gnueabihf)" \
		CROSS_TEST_FULL="$(or $(CROSS_TEST_FULL),armv7-unknown-linux-gnueabihf)" \
		./cross/cross-test.sh

## cross-rss: peak RSS of a two-node sync with the ARMv6 (as an ARM1176), armv7, aarch64,
## mipsel and mips binaries of `make dist` under qemu-user, next to the native binary
## (cross/qemu-rss.sh).
cross-rss:
	./cross/dist.sh || [ $$? = 2 ]  # a missed size goal does not stop the measure
	./cross/qemu-rss.sh

## cross-<target>: release build with cross-rs (cross/Cross.toml) for one of CROSS_TARGETS,
## into target/<target>/release/. cross needs Docker or Podman: fails saying so without.
$(CROSS_TARGETS:%=cross-%): cross-%:
	CROSS=$(CROSS) CROSS_CONFIG=$(CROSS_CONFIG) ./cross/cross-build.sh $*

## dist: stripped release binaries for x86_64 (glibc, musl), ARMv6, armv7 and aarch64 (musl,
## static; armv7/aarch64 also glibc), mipsel and mips (musl, static), built here without
## Docker (cross/dist.sh), into target/dist/, with a size table (target/dist/SIZES.txt).
dist:
	CARGO=$(CARGO) ./cross/dist.sh

clean:
	$(CARGO) clean

## dist-src: target/dist/iron-carrier-<version>.tar.gz, the committed tree (HEAD) with every
## crate vendored into VENDOR/, built offline with `cargo build --release --locked --offline`;
## reproducible, prints its sha256. `cross/dist-src.sh --check` compares it with the line in
## buildroot/package/iron-carrier/iron-carrier.hash, `--update-hash` rewrites that line (a
## release step, see buildroot/README.md: not part of `make test`).
.PHONY: dist-src
dist-src:
	./cross/dist-src.sh

## package-dry-run: runs the install steps of the Buildroot and OpenWrt packages on
## PACKAGE_BINARY (default: the release binary, built first if needed; or one of
## target/dist/iron-carrier-<triple>) into scratch trees and checks them (cross/package-dry-run.sh).
PACKAGE_BINARY ?= $(BIN)
PACKAGE_TARGET ?=
.PHONY: package-dry-run
package-dry-run: $(filter $(BIN),$(PACKAGE_BINARY))
	./cross/package-dry-run.sh $(PACKAGE_BINARY) $(PACKAGE_TARGET)
