#!/usr/bin/env bash
# `make cross-<TARGET>`: a release build for TARGET with cross-rs, configured by
# cross/Cross.toml (CROSS_CONFIG). cross runs the build inside a container image that has
# the target's C cross compiler (bundled SQLite is C) and C library, so it needs a working
# Docker or Podman. Without `cross` or an engine this exits with code 3 and says why
# (`make dist` then skips the target); without Docker, `make cross-test` and `make dist`
# still build armv7 and aarch64 (glibc) with Debian's toolchain.
#
# The Rust toolchain is pinned (CROSS_TOOLCHAIN, default 1.85.0, the MSRV: the same compiler
# as the Debian-built armv7/aarch64 binaries). Not only for consistency: cross 0.2.5 does not
# recognise rustup's "(active, default)" marker, believes the default toolchain is missing
# and runs `rustup toolchain add stable`, which silently updates the host's stable toolchain.
# With an explicit `+1.85.0` it only ever adds that one version, if it is missing.
#
# Usage: cross/cross-build.sh TARGET
#   CROSS            the cross binary (default: cross)
#   CROSS_TOOLCHAIN  rustup toolchain to build with (default: 1.85.0)
# Output: target/TARGET/release/iron-carrier
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: $0 TARGET}
cross=${CROSS:-cross}
export CROSS_CONFIG=${CROSS_CONFIG:-$PWD/cross/Cross.toml}

if ! command -v "$cross" >/dev/null; then
  echo "cross-build: '$cross' not found. Install cross-rs: cargo install cross --version 0.2.5 --locked" \
    "(it also needs Docker or Podman)." >&2
  exit 3
fi
# cross picks CROSS_CONTAINER_ENGINE, else docker, else podman; check that one really runs
# (a docker client without a daemon is common).
if [ -n "${CROSS_CONTAINER_ENGINE:-}" ]; then
  engines=("$CROSS_CONTAINER_ENGINE")
else
  engines=(docker podman)
fi
engine=
for e in "${engines[@]}"; do
  if command -v "$e" >/dev/null && timeout 30 "$e" info >/dev/null 2>&1; then
    engine=$e
    break
  fi
done
if [ -z "$engine" ]; then
  echo "cross-build: cross needs a working container engine, and none answers" \
    "(tried: ${engines[*]}; \`${engines[0]} info\` fails). Start Docker or install Podman," \
    "or use \`make cross-test\` / \`make dist\` (Debian toolchain, no container) for" \
    "armv7-unknown-linux-gnueabihf and aarch64-unknown-linux-gnu." >&2
  exit 3
fi
toolchain=${CROSS_TOOLCHAIN:-1.85.0}
# Install the pinned toolchain and the target's standard library explicitly, rather than
# leave it to cross's heuristics (see above); both are no-ops once present.
if command -v rustup >/dev/null; then
  rustup toolchain install "$toolchain" --profile minimal --no-self-update
  rustup target add "$target" --toolchain "$toolchain"
fi
# (No `cross --version` here: in cross 0.2.5 that too goes through the toolchain check.)
echo "cross-build: $target with $cross, Rust $toolchain, on $engine, config $CROSS_CONFIG"
export CROSS_CONTAINER_ENGINE=$engine
exec "$cross" "+$toolchain" build --release --locked --target "$target"
