#!/usr/bin/env bash
# `make dist`: stripped release binaries for every target of cross/env.sh, built here without
# Docker, and a table of their sizes. All use the release profile of Cargo.toml (opt-level
# "z", LTO, one codegen unit, panic = "abort", strip).
#   x86_64-unknown-linux-gnu          natively, with $CARGO (default: cargo)
#   armv7-unknown-linux-gnueabihf     Debian's Rust 1.85 and cross gcc (glibc 2.34 or later)
#   aarch64-unknown-linux-gnu
#   arm-unknown-linux-musleabihf      ARMv6 hard-float (Pi Zero/1), static
#   armv7-unknown-linux-musleabihf    static: for systems whose glibc is older than 2.34
#   aarch64-unknown-linux-musl          (Raspberry Pi OS Bullseye, Ubuntu 20.04)
#   x86_64-unknown-linux-musl
#   mipsel-unknown-linux-musl         OpenWrt (soft-float 32-bit MIPS), static
#   mips-unknown-linux-musl
# The musl ones with Debian's Rust 1.85, its standard library built from source, and zig as
# linker (cross/toolchain.sh cross installs it all). cross-rs (cross/Cross.toml) remains the
# way where a container engine exists: `make cross-<target>`.
# Goals it checks: ARMv6 at most 1.5 MiB, mipsel at most 2.2 MiB, armv7 glibc at most 2 MiB.
# Once every target is built, it exits 1 if one did not build, else 2 if a goal was missed
# (both are in the table).
#
# Usage: cross/dist.sh [TARGET...]   (default: all of the above)
# Output: target/dist/iron-carrier-<TARGET> and target/dist/SIZES.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/env.sh
. cross/env.sh

cargo=${CARGO:-cargo}
out=target/dist
build=target/dist-build
native=x86_64-unknown-linux-gnu
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=("$native" "${DEBIAN_TARGETS[@]}" "${ZIG_TARGETS[@]}")
fi

# The size goal of TARGET in bytes, or nothing.
goal_for() {
  case "$1" in
    arm-unknown-linux-musleabihf) echo $((1536 * 1024)) ;;
    mipsel-unknown-linux-musl) echo $((2253 * 1024)) ;; # 2.2 MiB
    armv7-unknown-linux-gnueabihf) echo $((2 * 1024 * 1024)) ;;
  esac
}

mkdir -p "$out"
rows=()
missed=0
build_failed=0

# add TARGET BINARY HOW: copies (and strips, where the linker did not) into target/dist and
# records its size.
add() {
  local target=$1 bin=$2 how=$3 dest bytes goal note="" kind
  dest="$out/iron-carrier-$target"
  cp "$bin" "$dest.tmp"
  if [ -n "$STRIP" ]; then "$STRIP" "${STRIP_ARGS[@]}" "$dest.tmp"; fi
  mv -f "$dest.tmp" "$dest"
  kind=$(file -b "$dest")
  case "$kind" in
    *", stripped"*) ;;
    *) echo "dist: $dest is not stripped: $kind" >&2; exit 1 ;;
  esac
  case "$kind" in
    *"statically linked"* | *"static-pie linked"*) how="$how, static" ;;
  esac
  bytes=$(stat -c %s "$dest")
  goal=$(goal_for "$target")
  if [ -n "$goal" ]; then
    local mib
    mib=$(awk -v b="$goal" 'BEGIN { printf "%.1f", b / 1048576 }')
    if [ "$bytes" -le "$goal" ]; then
      note="goal <= $mib MiB: met"
    else
      note="goal <= $mib MiB: MISSED"
      missed=2
    fi
  fi
  rows+=("$(printf '%-31s %9d %6.2f  %-34s %s' "$target" "$bytes" \
    "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" "$how" "$note")")
}

toolchain_ready=0
for target in "${targets[@]}"; do
  if [ "$target" = "$native" ]; then
    echo "== dist: $native (native, $("$cargo" --version))"
    "$cargo" build --release --locked --target "$native" --target-dir "$build"
    STRIP="strip" STRIP_ARGS=(--strip-all)
    add "$native" "$build/$native/release/iron-carrier" "$("$cargo" --version | cut -d' ' -f1-2)"
    continue
  fi
  if [ "$toolchain_ready" = 0 ]; then
    ./cross/toolchain.sh cross
    toolchain_ready=1
  fi
  target_env "$target"
  if [ "${BUILD[0]}" = cargo-zigbuild ]; then
    # With std built here, opt-level "z" turns on shared generics, and fat LTO then left
    # armv7 musl with an undefined `copy_from_slice` instance; each crate keeping its own
    # copies links on every target.
    upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
    var="CARGO_TARGET_${upper}_RUSTFLAGS"
    export "$var=${!var} -Zshare-generics=n"
  fi
  echo "== dist: $target (${BUILD[*]}, Debian rustc 1.85)"
  if ! "${BUILD[@]}" build --release --locked "${STD_RELEASE[@]}" --target "$target" \
    --target-dir "$build"; then
    # The other targets are still worth building; the run fails at the end.
    rows+=("$(printf '%-31s %9s %6s  %-34s %s' "$target" - - "BUILD FAILED" "")")
    build_failed=1
    continue
  fi
  case "${BUILD[0]}" in
    cargo-zigbuild) how="rustc 1.85 + zig $("$ZIG_VENV/bin/python3" -m ziglang version)" ;;
    *) how="Debian rustc 1.85 + gcc" ;;
  esac
  add "$target" "$build/$target/release/iron-carrier" "$how"
done

{
  printf '%-31s %9s %6s  %-34s %s\n' target bytes MiB "built with" goal
  printf '%s\n' "${rows[@]}"
} >"$out/SIZES.txt"
echo
echo "== dist: stripped release binaries in $out/"
cat "$out/SIZES.txt"
if [ "$build_failed" = 1 ]; then exit 1; fi
exit "$missed"
