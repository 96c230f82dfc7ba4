#!/usr/bin/env bash
# `make cross-test`: builds the project and its tests for other architectures with Rust 1.85
# (cross/env.sh: Debian's toolchain for glibc, zig for static musl; no Docker) and runs the
# test binaries under qemu-user as cargo's runner, each target on the CPU it stands for
# (ARMv6 as an ARM1176, MIPS as a 24KEc/24Kc). No binfmt_misc: tests that start the binary
# under test do it through IC_TEST_RUNNER (see tests/common/mod.rs).
#
# Each target runs either the whole suite ("full") or the core subset of cross/qemu-core.txt
# (the unit tests, two-node and multi-node sync, the wire protocol, fsops, the scanner and
# the 32-bit-time test): a whole suite takes 15 minutes a target under qemu on the CI
# machine, and five of them would not fit its time. CROSS_TEST_FULL names the targets that
# run the whole suite (`make cross-test-full`). Either way the tests of cross/qemu-skip.txt
# are excluded, each with its reason. Prints the test counts per target at the end; exits
# non-zero if any target failed to build or had a failing test. A daemon start that qemu
# stalled is retried once by the tests and listed after that target's run (<TARGET>.stalls).
#
# Usage: cross/cross-test.sh [TARGET...]   (default: $CROSS_TEST_TARGETS or the list below)
# Output: target/cross-test/ (build) and target/cross-test/<TARGET>.log (test output).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/env.sh
. cross/env.sh

default_targets=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu
  arm-unknown-linux-musleabihf mipsel-unknown-linux-musl mips-unknown-linux-musl)
# The targets that run the whole suite (none unless named); the others run the core one.
read -r -a full <<<"${CROSS_TEST_FULL:-}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  read -r -a targets <<<"${CROSS_TEST_TARGETS:-${default_targets[*]}}"
fi
dir=${CROSS_TEST_DIR:-target/cross-test}
case "$dir" in
  /*) ;;
  *) dir=$PWD/$dir ;;
esac
# A CROSS_TEST_DIR kept between runs (CI's cache) holds std and the crates, most of a target's
# build; the project's own units are rebuilt in every fresh clone, and with CROSS_TEST_PRUNE=1
# their copies from earlier runs are deleted first rather than left to pile up.
prune=${CROSS_TEST_PRUNE:-0}
# Every target compiles from scratch once: no debug info (a third less to compile and link)
# and no incremental caches, which only a rebuild would use. Backtraces keep function names.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0

./cross/toolchain.sh cross

# --test NAME / --lib for every line of the core subset.
core=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  line=${line//[[:space:]]/}
  case "$line" in
    "") ;;
    lib) core+=(--lib) ;;
    *) core+=(--test "$line") ;;
  esac
done <cross/qemu-core.txt

# --skip NAME for every name in the exclusion list (comments and blank lines dropped).
skips=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  line=${line//[[:space:]]/}
  if [ -n "$line" ]; then skips+=(--skip "$line"); fi
done <cross/qemu-skip.txt

# The project's own units of target $1 from an earlier run: its library, binary and test
# executables (named after tests/*.rs; none is the name of a crate it depends on).
prune_own() {
  local d=$dir/$1/debug n names=(iron_carrier libiron_carrier iron-carrier) t
  [ -d "$d" ] || return 0
  for t in tests/*.rs; do
    t=${t#tests/}
    names+=("${t%.rs}")
  done
  for n in "${names[@]}"; do
    rm -rf "$d/deps/$n-"* "$d/.fingerprint/$n-"*
  done
}

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

# Runs the test binaries listed in $1 (one path a line) under $QEMU, each with the exclusions,
# into $2; writes "<seconds> <0|1>" (whether every binary passed) to $3. Run in the
# background: a target's tests, mostly waiting on daemons, overlap the next target's build.
run_tests() {
  local exes=$1 log=$2 result=$3 t exe ok=1 emulator=()
  t=$(now)
  read -r -a emulator <<<"$QEMU"
  : >"$log"
  while IFS= read -r exe; do
    echo "     Running $exe" >>"$log"
    "${emulator[@]}" "$exe" --exact "${skips[@]}" >>"$log" 2>&1 || ok=0
  done <"$exes"
  echo "$(secs "$t" "$(now)") $ok" >"$result"
}

mkdir -p "$dir"
start=$(now)
declare -A suite_of compile_of build_ok_of
runs=()
for target in "${targets[@]}"; do
  target_env "$target"
  suite=core
  which=("${core[@]}")
  for f in "${full[@]}"; do
    if [ "$f" = "$target" ]; then
      suite=full
      which=(--all-targets)
    fi
  done
  suite_of[$target]=$suite
  echo "== cross-test $target: build, $suite suite (${BUILD[*]}, $(/usr/bin/rustc --version | cut -d' ' -f1-2))"
  if [ "$prune" = 1 ]; then prune_own "$target"; fi
  t0=$(now)
  build_ok=1
  # JSON on stdout names every test executable; diagnostics still go to stderr as text. The
  # build yields the processor to the previous target's tests, running meanwhile: they wait
  # on timers, and a starved one is a false failure.
  nice -n 10 "${BUILD[@]}" test --locked "${STD_TEST[@]}" "${which[@]}" --no-run --target "$target" \
    --target-dir "$dir" --message-format=json-render-diagnostics >"$dir/$target.json" ||
    build_ok=0
  compile_of[$target]=$(secs "$t0" "$(now)")
  build_ok_of[$target]=$build_ok
  rm -f "$dir/$target.result"
  if [ "$build_ok" = 1 ]; then
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
' <"$dir/$target.json" >"$dir/$target.exes"
    # Daemon starts the tests took for an emulator stall and retried (tests/common/mod.rs).
    : >"$dir/$target.stalls"
    echo "== cross-test $target: $(wc -l <"$dir/$target.exes") test binaries run in the background under ${QEMU:-no emulator} ($((${#skips[@]} / 2)) tests excluded: cross/qemu-skip.txt), log: $dir/$target.log"
    IC_TEST_RUNNER="$QEMU" IC_EMULATOR_STALLS="$dir/$target.stalls" \
      run_tests "$dir/$target.exes" "$dir/$target.log" "$dir/$target.result" &
    runs+=($!)
  fi
done
if [ ${#runs[@]} -gt 0 ]; then wait "${runs[@]}"; fi

rows=()
status=0
for target in "${targets[@]}"; do
  log="$dir/$target.log"
  run_secs=0
  tests_ok=0
  if [ -f "$dir/$target.result" ]; then read -r run_secs tests_ok <"$dir/$target.result"; fi
  passed=0 failed=0 ignored=0 excluded=0
  if [ -f "$log" ] && [ "${build_ok_of[$target]}" = 1 ]; then
    read -r passed failed ignored excluded < <(counts "$log")
    fails=$(grep -E "^test .* FAILED$|panicked at" "$log" | head -40 || true)
    if [ -n "$fails" ]; then
      printf '\n== cross-test %s: failures (the whole output: %s)\n%s\n' "$target" "$log" "$fails"
    fi
    if [ -s "$dir/$target.stalls" ]; then
      printf '\n== cross-test %s: emulator stalls, each retried once:\n' "$target"
      cat "$dir/$target.stalls"
    fi
  fi
  if [ "${build_ok_of[$target]}" = 0 ]; then
    result="BUILD FAILED"
  elif [ "$tests_ok" = 1 ] && [ "$failed" = 0 ]; then
    result=ok
  else
    result=FAILED
  fi
  [ "$result" = ok ] || status=1
  rows+=("$(printf '%-31s %5s %6s %6s %7s %8s %7s s %5s s  %s' "$target" "${suite_of[$target]}" \
    "$passed" "$failed" "$ignored" "$excluded" "${compile_of[$target]}" "$run_secs" "$result")")
done

echo
echo "== cross-test summary: tests under qemu-user, built with Debian rustc 1.85"
printf '%-31s %5s %6s %6s %7s %8s %9s %7s  %s\n' target suite passed failed ignored excluded \
  compile run result
printf '%s\n' "${rows[@]}"
echo "total $(secs "$start" "$(now)") s (compile: the test build; run: every test binary under qemu, in the background while the next target builds; logs in $dir/)"
exit "$status"
