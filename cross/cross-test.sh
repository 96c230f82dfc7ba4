#!/usr/bin/env bash
# `make cross-test`: builds the project and its whole test suite for armv7 and aarch64 with
# Debian's Rust 1.85 (rustc-web, multiarch standard library, Debian's cross gcc as linker and
# C compiler) and runs every test binary under qemu-user as cargo's runner. No Docker, no
# binfmt_misc: tests that start the binary under test do it through IC_TEST_RUNNER (see
# tests/common/mod.rs). The tests listed in cross/qemu-skip.txt are excluded, each with its
# reason. Prints the test counts per architecture at the end; exits non-zero if any
# architecture failed to build or had a failing test. A daemon start that qemu stalled is
# retried once by the tests and listed after that target's run (<TARGET>.stalls).
#
# Usage: cross/cross-test.sh [TARGET...]
#   default targets: armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu
# Output: target/cross-test/ (build) and target/cross-test/<TARGET>.log (test output).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/debian-env.sh
. cross/debian-env.sh

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${DEBIAN_TARGETS[@]}"); fi
dir=target/cross-test
cargo=/usr/bin/cargo

./cross/toolchain.sh cross

# --skip NAME for every name in the exclusion list (comments and blank lines dropped).
skips=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  line=${line//[[:space:]]/}
  if [ -n "$line" ]; then skips+=(--skip "$line"); fi
done <cross/qemu-skip.txt

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

# Sums the harness's "test result:" lines of a log: passed failed ignored filtered-out.
counts() {
  awk '/^test result:/ {
         for (i = 2; i <= NF; i++) {
           if ($i ~ /^passed/) p += $(i - 1)
           if ($i ~ /^failed/) f += $(i - 1)
           if ($i ~ /^ignored/) g += $(i - 1)
           if ($i == "filtered") x += $(i - 1)
         }
       }
       END { printf "%d %d %d %d\n", p, f, g, x }' "$1"
}

mkdir -p "$dir"
start=$(now)
rows=()
status=0
for target in "${targets[@]}"; do
  log="$dir/$target.log"
  # Only variables named after this target (and RUSTC), so nothing leaks into the next one.
  debian_target_env "$target"
  echo "== cross-test $target: build (Debian $(/usr/bin/rustc --version | cut -d' ' -f1-2))"
  t0=$(now)
  build_ok=1
  "$cargo" test --locked --all-targets --no-run --target "$target" --target-dir "$dir" ||
    build_ok=0
  t1=$(now)
  test_ok=0
  : >"$log"
  # Daemon starts the tests took for an emulator stall and retried (tests/common/mod.rs).
  stalls="$dir/$target.stalls"
  : >"$stalls"
  if [ "$build_ok" = 1 ]; then
    echo "== cross-test $target: run under $QEMU ($((${#skips[@]} / 2)) tests excluded: cross/qemu-skip.txt)"
    if IC_TEST_RUNNER="$QEMU" IC_EMULATOR_STALLS="$PWD/$stalls" \
      "$cargo" test --locked --all-targets --no-fail-fast --target "$target" --target-dir "$dir" \
      -- --exact "${skips[@]}" 2>&1 | tee "$log"; then
      test_ok=1
    fi
  fi
  t2=$(now)
  if [ -s "$stalls" ]; then
    echo "== cross-test $target: emulator stalls, each retried once:"
    cat "$stalls"
  fi
  read -r passed failed ignored excluded < <(counts "$log")
  if [ "$build_ok" = 0 ]; then
    result="BUILD FAILED"
  elif [ "$test_ok" = 1 ] && [ "$failed" = 0 ]; then
    result=ok
  else
    result=FAILED
  fi
  [ "$result" = ok ] || status=1
  rows+=("$(printf '%-31s %6s %6s %7s %8s %7s s %5s s  %s' "$target" "$passed" "$failed" \
    "$ignored" "$excluded" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$result")")
done

echo
echo "== cross-test summary: tests under qemu-user, built with Debian rustc 1.85"
printf '%-31s %6s %6s %7s %8s %9s %7s  %s\n' target passed failed ignored excluded \
  compile run result
printf '%s\n' "${rows[@]}"
echo "total $(secs "$start" "$(now)") s (compile: cargo test --no-run; run: every test binary under qemu)"
exit "$status"
