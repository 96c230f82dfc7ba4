#!/usr/bin/env bash
# `make cross-rss`: peak memory of a two-node sync on ARMv6 (emulated as a Pi Zero's ARM1176),
# armv7, aarch64, mipsel and mips, under qemu-user, next to the same sync natively. The
# stripped release binaries of `make dist` (target/dist/) sync 2,000 files of 1-16 KiB and one
# 64 MiB file from a one-shot node A into an empty daemon B on 127.0.0.1; /usr/bin/time -v
# reports each process's peak RSS (VmHWM). Convergence is checked (path, size, SHA-256 of
# every file) before a figure is printed.
#
# Under qemu-user the figure is the emulator's process: the guest's memory plus qemu's own
# (its translated-code cache and its heap, several MiB), so it is an upper bound of what the
# binary needs on a real ARM board; the native row is the same program without the emulator.
#
# Usage: cross/qemu-rss.sh   (run `make dist` first; needs /usr/bin/time and python3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/env.sh
. cross/env.sh

dist=target/dist
work=$(mktemp -d /tmp/iron-carrier-qemu-rss.XXXXXX)
b_pid=
cleanup() {
  if [ -n "$b_pid" ]; then kill "$b_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v /usr/bin/time >/dev/null || { echo "qemu-rss: needs /usr/bin/time (package time)" >&2; exit 1; }

# Seeded data: 2,000 files of 1-16 KiB in 40 directories, and one 64 MiB file.
python3 - "$work/data" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
for i in range(2000):
    d = os.path.join(root, f"d{i % 40:02}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for _ in range(64):
        f.write(rng.randbytes(1 << 20))
PY

manifest() {
  # Each node's storage marker holds its own id: never synchronized, so left out.
  (cd "$1" && find . -type f ! -name .iron-carrier.storage -print0 | sort -z | xargs -0 sha256sum)
}

config() { # name port peer-port dir
  cat >"$work/$1.toml" <<EOF
node_id = "$1"
port = $2
listen_address = "127.0.0.1"
peers = ["127.0.0.1:$3"]
enable_service_discovery = false
encryption = false
log_path = "$4.db"

[storages]
data = "$4"
EOF
}

hwm() { awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$1"; }

# run LABEL RUNNER... BINARY: one two-node sync; prints a row.
run() {
  local label=$1 port_a=$((26000 + RANDOM % 1000))
  shift
  local port_b=$((port_a + 1000)) a=$work/$label-a b=$work/$label-b
  cp -r "$work/data" "$a"
  mkdir "$b"
  config a "$port_a" "$port_b" "$a"
  config b "$port_b" "$port_a" "$b"
  /usr/bin/time -v -o "$work/$label-b.time" "$@" --daemon -q --config "$work/b.toml" \
    >"$work/$label-b.log" 2>&1 &
  b_pid=$!
  local i
  for i in $(seq 1 600); do
    ss -Htln "sport = :$port_b" | grep -q . && break
    sleep 0.05
    [ "$i" = 600 ] && { echo "qemu-rss: $label: B does not listen" >&2; exit 1; }
  done
  /usr/bin/time -v -o "$work/$label-a.time" "$@" -q --config "$work/a.toml" \
    >"$work/$label-a.log" 2>&1 || {
    echo "qemu-rss: $label: A failed:" >&2
    tail -5 "$work/$label-a.log" >&2
    exit 1
  }
  # SIGTERM to the program (time's child), which shuts down in order; time then reports.
  pkill -TERM -P "$b_pid"
  wait "$b_pid" || true
  b_pid=
  if [ "$(manifest "$a")" != "$(manifest "$b")" ]; then
    echo "qemu-rss: $label: the replicas differ" >&2
    exit 1
  fi
  printf '%-52s %7s %7s\n' "$label" "$(hwm "$work/$label-a.time")" \
    "$(hwm "$work/$label-b.time")"
}

native=$dist/iron-carrier-x86_64-unknown-linux-gnu
# ARMv6 as a Pi Zero's ARM1176 (the upper bound the issue asks for), armv7 and aarch64, and
# the two MIPS builds for OpenWrt: the sync, checked, is also the one run of the shipped
# static binaries (whose standard library is built for size, unlike the tests').
rss_targets=(arm-unknown-linux-musleabihf "${DEBIAN_TARGETS[@]}" mipsel-unknown-linux-musl
  mips-unknown-linux-musl)
for t in "${rss_targets[@]}"; do
  [ -x "$dist/iron-carrier-$t" ] || { echo "qemu-rss: no $dist/iron-carrier-$t: run make dist" >&2; exit 1; }
done
printf '%-52s %7s %7s\n' "two-node sync (2,000 small + 64 MiB)" "A MiB" "B MiB"
if [ -x "$native" ]; then run native "$native"; fi
for t in "${rss_targets[@]}"; do
  target_env "$t"
  read -r -a emulator <<<"$QEMU"
  run "$t under $QEMU" "${emulator[@]}" "$dist/iron-carrier-$t"
done
echo "(peak RSS, VmHWM via /usr/bin/time -v; under qemu it includes the emulator's own memory)"
