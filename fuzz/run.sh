#!/usr/bin/env bash
# Builds and runs the fuzz targets (cargo-fuzz, libFuzzer) from their committed seeds.
#   fuzz/run.sh smoke   each target for FUZZ_SMOKE_SECONDS (default 20): part of `make test`
#   fuzz/run.sh long    each target until FUZZ_RUNS executions (default 10,000,000) or
#                       FUZZ_SECONDS (default 3600), on FUZZ_JOBS processes (default: cores)
#   fuzz/run.sh seeds   rewrites fuzz/seeds/ from the codec's samples (proto/tests.rs) and
#                       real handshakes (net/link/tests.rs)
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/; each target's
# executions are printed as "fuzz: <target>: N runs, 0 crashes". FUZZ_TARGETS picks some of
# the targets (default: "frame message handshake").
#
# The stable toolchain builds the targets with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z
# flags). No sanitizer by default: the targets are safe Rust, and AddressSanitizer would
# only watch the dependencies' unsafe code, at half the speed and twice the build time;
# FUZZ_SANITIZER=address turns it on. Debug assertions (overflow checks) are on.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-smoke}
read -ra targets <<<"${FUZZ_TARGETS:-frame message handshake}"
cargo_fuzz_version=0.13.2
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

if [ "$mode" = seeds ]; then
  rm -rf fuzz/seeds
  IC_FUZZ_SEEDS=$PWD/fuzz/seeds cargo test --locked --lib -- --ignored write_fuzz_seeds
  find fuzz/seeds -type f | sort
  exit 0
fi

if [ "$(cargo fuzz --version 2> /dev/null | awk '{ print $2 }')" != "$cargo_fuzz_version" ]; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

flags=(--sanitizer "$sanitizer" --debug-assertions --release)
cargo fuzz build "${flags[@]}"

case "$mode" in
  smoke)
    seconds=${FUZZ_SMOKE_SECONDS:-20}
    opts=(-max_total_time="$seconds")
    ;;
  long)
    opts=(-runs="${FUZZ_RUNS:-10000000}" -max_total_time="${FUZZ_SECONDS:-3600}")
    ;;
  *)
    echo "usage: fuzz/run.sh smoke|long|seeds" >&2
    exit 2
    ;;
esac

jobs=${FUZZ_JOBS:-$(nproc)}
[ "$mode" = smoke ] && jobs=1
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log=fuzz/artifacts/$t/run.log
  total=0
  # With several jobs each process gets its share of the runs; their corpus is shared.
  per_job=()
  [ "$mode" = long ] && [ "$jobs" -gt 1 ] &&
    per_job=(-runs=$(( ${FUZZ_RUNS:-10000000} / jobs )))
  pids=()
  for j in $(seq 1 "$jobs"); do
    cargo fuzz run "${flags[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
      "${opts[@]}" "${per_job[@]}" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
      > "$log.$j" 2>&1 &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  for j in $(seq 1 "$jobs"); do
    runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log.$j" | tail -1)
    total=$((total + ${runs:-0}))
  done
  if [ "$failed" = 1 ]; then
    for j in $(seq 1 "$jobs"); do tail -n 40 "$log.$j"; done >&2
    echo "fuzz: $t: FAILED after $total runs (inputs in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  echo "fuzz: $t: $total runs, 0 crashes"
done
