#!/usr/bin/env bash
# `make dist`: stripped release binaries for every target this machine can build, and a table
# of their sizes. All use the release profile of Cargo.toml (opt-level "z", LTO, one codegen
# unit, panic = "abort", strip).
#   x86_64-unknown-linux-gnu          natively, with $CARGO (default: cargo)
#   armv7-unknown-linux-gnueabihf     Debian's Rust 1.85 and cross gcc, no container
#   aarch64-unknown-linux-gnu           (cross/toolchain.sh cross installs them)
#   arm-unknown-linux-gnueabihf       cross-rs (cross/Cross.toml) when `cross` and Docker or
#   *-musl*                             Podman work; otherwise skipped, saying why
# Output: target/dist/iron-carrier-<TARGET> and target/dist/SIZES.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/debian-env.sh
. cross/debian-env.sh

cargo=${CARGO:-cargo}
out=target/dist
build=target/dist-build
native=x86_64-unknown-linux-gnu
cross_rs_targets=(arm-unknown-linux-gnueabihf arm-unknown-linux-musleabihf
  armv7-unknown-linux-musleabihf aarch64-unknown-linux-musl)
# The armv7 goal: the binary must fit small flash and RAM.
goal_target=armv7-unknown-linux-gnueabihf
goal_bytes=$((2 * 1024 * 1024))

# The binutils strip that understands TARGET's object files.
strip_for() {
  case "$1" in
    x86_64-*) echo strip ;;
    arm-* | armv7-*) echo arm-linux-gnueabihf-strip ;;
    aarch64-*) echo aarch64-linux-gnu-strip ;;
  esac
}

rm -rf "$out"
mkdir -p "$out"
rows=()
skipped=()

# add TARGET BINARY HOW: strips a copy into target/dist and records its size.
add() {
  local target=$1 bin=$2 how=$3 dest bytes note=""
  dest="$out/iron-carrier-$target"
  cp "$bin" "$dest"
  "$(strip_for "$target")" --strip-all "$dest"
  bytes=$(stat -c %s "$dest")
  if [ "$target" = "$goal_target" ]; then
    if [ "$bytes" -le "$goal_bytes" ]; then note="(goal <= 2 MiB: met)"; else note="(goal <= 2 MiB: MISSED)"; fi
  fi
  rows+=("$(printf '%-31s %9d %7.2f  %-28s %s' "$target" "$bytes" \
    "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" "$how" "$note")")
}

echo "== dist: $native (native, $("$cargo" --version))"
"$cargo" build --release --locked --target "$native" --target-dir "$build"
add "$native" "$build/$native/release/iron-carrier" "$("$cargo" --version | cut -d' ' -f1-2)"

./cross/toolchain.sh cross
for target in "${DEBIAN_TARGETS[@]}"; do
  debian_target_env "$target"
  echo "== dist: $target (Debian rustc 1.85, $GNU_PREFIX-gcc as linker)"
  /usr/bin/cargo build --release --locked --target "$target" --target-dir "$build"
  add "$target" "$build/$target/release/iron-carrier" "Debian rustc 1.85"
done

for target in "${cross_rs_targets[@]}"; do
  echo "== dist: $target (cross-rs)"
  rc=0
  ./cross/cross-build.sh "$target" || rc=$?
  if [ "$rc" = 3 ]; then
    skipped+=("$target")
    continue
  fi
  [ "$rc" = 0 ] || exit "$rc"
  add "$target" "target/$target/release/iron-carrier" "cross-rs"
done

{
  printf '%-31s %9s %7s  %s\n' target bytes MiB "built with"
  printf '%s\n' "${rows[@]}"
  for target in "${skipped[@]}"; do
    printf '%-31s %9s %7s  %s\n' "$target" - - "skipped: needs cross-rs and Docker/Podman"
  done
} >"$out/SIZES.txt"
echo
echo "== dist: stripped release binaries in $out/"
cat "$out/SIZES.txt"
