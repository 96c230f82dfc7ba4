#!/usr/bin/env bash
# make bench: iron-carrier measured side by side with rsync, Unison and Syncthing, on the same
# generated, seeded data, in the same run.
#
# Usage: tests/bench.sh BIN [--small|--full]
#   (none)   scenarios 1-6 of issue 7 at full size, plus iron-carrier's own five-node, fan-out
#            and delta-throughput measurements
#   --small  the same at small sizes, about a minute; Syncthing is skipped (its start-up and
#            hashing alone take longer than that), which the table says
#   --full   the default set plus scenario 7 (100,000 files over five nodes)
# BENCH_ONLY=word,... limits the run to scenarios/tools matching a word (a scenario such as
# small-files, a tool such as syncthing, or scenario/tool), for development.
# BENCH_BASELINE=/path/to/old/iron-carrier also measures that build (same protocol, same
# data) as a second tool, "iron-carrier (baseline)", in every scenario that runs the binary
# (small-files, big-files, delta-overwrite, delta-insert, idle, five-nodes, scale, fan-out;
# not delta-speed, which is cargo test of this tree): before and after from one run. Those
# scenarios then run interleaved, new, baseline, baseline, new, ... BENCH_PAIRS times
# (default 2); the table shows each build's median and min, and new/baseline of the medians.
# The BENCH_ONLY word iron-carrier selects both builds, iron-carrier-baseline the old alone.
# Without BENCH_BASELINE (or with it empty) everything runs once, as before, but for
# iron-carrier's large files: plaintext, `encryption = true` and a passphrase interleaved
# BENCH_ENC_PAIRS times (default 3, --small 1), medians in the table, the cost of encryption
# as their ratio. The link's own costs (key derivation, handshake, sealing) are measured
# in-process natively and, where Debian's armv7 toolchain is installed, under qemu-arm.
# Prints a table (each of our figures as a ratio to each other tool's, every target met or
# missed) and writes target/bench/results.json (and results.txt, the table).
#
# Method, the same for every tool:
# - Every measured run gets a fresh private network namespace (ip netns) with only `lo` up.
#   Both ends run inside it and talk over its 127.0.0.1; no packet can leave the machine.
# - Bytes on the wire: the namespace's lo tx_bytes before and after the measured part. On
#   loopback each packet is counted once as tx (and once as rx), so tx_bytes is the traffic
#   of both directions; it includes the Ethernet (14 B), IP and TCP headers and the ACKs.
#   Syncthing's REST API traffic (our own polling) is counted by nftables rules on its GUI
#   ports inside the namespace and subtracted.
# - Peak RSS and CPU seconds: /usr/bin/time -v around every process: the peak RSS of the
#   process or of the largest child it reaped (rsync's daemon forks per connection), and the
#   CPU of all of them.
# - Wall time to converge: receivers are started (and listening) first; the clock runs from
#   the start of the sender (iron-carrier's one-shot run, the rsync/Unison client, the sending
#   Syncthing instance or, for deltas, its rescan) until it exits (one-shot tools) or until
#   the replicas agree (daemons). Convergence is then checked by comparing path + size +
#   SHA-256 manifests of all replicas; a mismatch fails that tool's run.
# - A tool that fails is reported as "failed: <reason>" and the run goes on.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
helper=$here/bench/bench.py

usage() { echo "usage: [BENCH_BASELINE=OLD_BIN [BENCH_PAIRS=N]] tests/bench.sh BIN [--small|--full]" >&2; exit 2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
bin=$(realpath "$1")
[ -x "$bin" ] || { echo "bench: $1 is not an executable" >&2; exit 2; }
baseline=
pairs=1
if [ -n "${BENCH_BASELINE:-}" ]; then
  baseline=$(realpath -m "$BENCH_BASELINE")
  if [ ! -f "$baseline" ] || [ ! -x "$baseline" ]; then
    echo "bench: BENCH_BASELINE=$BENCH_BASELINE is not an executable" >&2
    exit 2
  fi
  pairs=${BENCH_PAIRS:-2}
  case "$pairs" in
    '' | *[!0-9]* | 0*) echo "bench: BENCH_PAIRS=$pairs is not a positive whole number" >&2; exit 2 ;;
  esac
fi
preset=default
case "${2:-}" in
  "") ;;
  --small) preset=small ;;
  --full) preset=full ;;
  *) usage ;;
esac

if [ "$preset" = small ]; then
  n_small=1000; n_big=4; big_mib=16; delta_over_mib=32; delta_ins_mib=8
  idle_s=10; n_five=200; fan_mib=16; speed_mib=64; with_syncthing=0; n_scale=0
  rename_mib=16; n_rescan=10000; enc_pairs=1
else
  n_small=10000; n_big=4; big_mib=256; delta_over_mib=256; delta_ins_mib=64
  idle_s=60; n_five=2000; fan_mib=100; speed_mib=1024; with_syncthing=1; n_scale=0
  rename_mib=100; n_rescan=100000; enc_pairs=3
  [ "$preset" = full ] && n_scale=100000
fi
latency_samples=10
st_key=ic-bench-api-key

[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces, apt-get)" >&2; exit 1; }

# Installs the tools compared against, and what the measurements need, from Debian's
# packages when they are missing.
install_tools() {
  local want=() p
  for p in time:/usr/bin/time rsync:rsync unison:unison nftables:nft iproute2:ip \
           procps:pgrep openssl:openssl coreutils:stdbuf python3:python3; do
    command -v "${p#*:}" > /dev/null || want+=("${p%%:*}")
  done
  [ "$with_syncthing" = 1 ] && ! command -v syncthing > /dev/null && want+=(syncthing)
  [ ${#want[@]} = 0 ] && return
  echo "bench: installing ${want[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" > /dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" > /dev/null
  }
}
install_tools

namespaces=()   # every namespace this run made: deleted on exit, whatever happens
ns=             # the namespace of the measurement in progress
ns_count=0
root=

# Kills every process inside namespace $1 (all of them are ours: we made the namespace).
ns_kill() {
  local pids i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(ip netns pids "$1" 2> /dev/null || true)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086 # one argument per PID
    if [ "$i" -lt 8 ]; then kill $pids 2> /dev/null || true; else kill -9 $pids 2> /dev/null || true; fi
    sleep 0.2
  done
}

cleanup() {
  local n
  for n in "${namespaces[@]}"; do
    ns_kill "$n"
    ip netns del "$n" 2> /dev/null || true
  done
  [ -z "$root" ] || rm -rf "$root"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root=$(mktemp -d /tmp/iron-carrier-bench.XXXXXX)
# A copy, so that a rebuild during the run (cargo test of delta_speed builds the binary too)
# cannot change what is measured.
bin_src=$bin
cp "$bin_src" "$root/iron-carrier"
bin=$root/iron-carrier
bin_new=$bin
bin_base=
if [ -n "$baseline" ]; then
  bin_base=$root/iron-carrier-baseline
  cp "$baseline" "$bin_base"
fi
outdir=$repo/target/bench
mkdir -p "$outdir"
rows=$root/rows.jsonl
: > "$rows"

log() { printf 'bench: %s\n' "$*" >&2; }
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
py() { python3 "$helper" "$@"; }
in_ns() { ip netns exec "$ns" "$@"; }
# Appends one result object (scenario, tool, variant and figures) to the rows file.
rec() { py record "$rows" "$@"; }

# A fresh namespace with lo up and the nftables counter of Syncthing's REST traffic.
ns_new() {
  ns_count=$((ns_count + 1))
  ns=ic-bench-$$-$ns_count
  ip netns add "$ns"
  namespaces+=("$ns")
  ip -n "$ns" link set lo up
  in_ns nft -f - <<'EOF'
table inet bench {
  counter api {}
  chain out {
    type filter hook output priority 0; policy accept;
    tcp sport { 8384, 8385 } counter name api
    tcp dport { 8384, 8385 } counter name api
  }
}
EOF
}

ns_del() {
  ns_kill "$ns"
  ip netns del "$ns"
  local keep=() n
  for n in "${namespaces[@]}"; do [ "$n" = "$ns" ] || keep+=("$n"); done
  namespaces=("${keep[@]}")
}

# Bytes of Syncthing's REST API traffic so far in $ns, as lo counts them.
api_now() { in_ns nft list counter inet bench api | awk '/packets/ { print $4 + 14 * $2 }'; }

# Bytes on the wire so far in $ns: lo tx_bytes minus the REST API's packets (nftables counts
# IP bytes; lo adds 14 bytes of Ethernet header per packet).
wire_now() {
  local lo api
  lo=$(in_ns cat /sys/class/net/lo/statistics/tx_bytes)
  api=$(api_now)
  echo $((lo - api))
}

# --- processes: everything runs inside $ns under /usr/bin/time -v ------------------------
declare -A tpid cpid   # name → PID of `time`, PID of the measured program (time's child)
run=                   # directory of the measurement in progress
wall=                  # set by run_timed

# Starts "name" in the background; its time report is $run/name.time, its output
# $run/name.log. Returns once the program itself is running.
start() { # name command...
  local name=$1 c=
  shift
  ip netns exec "$ns" /usr/bin/time -v -o "$run/$name.time" "$@" > "$run/$name.log" 2>&1 &
  tpid[$name]=$!
  for _ in $(seq 1 250); do
    c=$(pgrep -P "${tpid[$name]}" || true)
    [ -n "$c" ] && break
    sleep 0.02
  done
  [ -n "$c" ] || fail "$name did not start: $(tail -2 "$run/$name.log" | tr '\n' ' ')"
  cpid[$name]=$c
}

# Stops "name" with SIGTERM to the program (time then writes its report) and waits for it.
stop() { # name
  kill -TERM "${cpid[$1]}" 2> /dev/null || true
  wait "${tpid[$1]}" 2> /dev/null || true
}

# Runs "name" in the foreground (at most $limit seconds); sets $wall. Fails on a non-zero exit.
run_timed() { # name limit command...
  local name=$1 limit=$2 t0 t1 rc=0
  shift 2
  t0=$(now)
  timeout "$limit" ip netns exec "$ns" /usr/bin/time -v -o "$run/$name.time" "$@" > "$run/$name.log" 2>&1 || rc=$?
  t1=$(now)
  [ "$rc" = 124 ] && fail "$name: timed out after $limit s"
  [ "$rc" = 0 ] || fail "$name exited with status $rc: $(grep -v '^ *[0-9]*%' "$run/$name.log" | tail -2 | tr '\n' ' ')"
  wall=$(minus "$t1" "$t0")
}

# "key: value" from a /usr/bin/time -v report; peak RSS in KiB; CPU seconds (user + system).
tv() { grep -F "$2" "$1" | head -1 | awk -F': ' '{ print $2 }'; }
rss() { tv "$run/$1.time" "Maximum resident set size"; }
cpu() { awk -v u="$(tv "$run/$1.time" "User time")" -v s="$(tv "$run/$1.time" "System time")" 'BEGIN { printf "%.2f", u + s }'; }

# Waits until something listens on 127.0.0.1:port inside $ns (checked with ss, no probe
# connection that would count as traffic).
wait_listen() { # port
  for _ in $(seq 1 300); do
    [ -n "$(in_ns ss -Htln "sport = :$1")" ] && return 0
    sleep 0.05
  done
  fail "nothing listens on port $1 after 15 s"
}

# Fails the run unless the replicas' path+size+SHA-256 manifests are equal.
check_same() { # dir...
  local why
  why=$(py same "$@" 2>&1 > /dev/null) || fail "${why:-replicas differ after the run}"
}

# Is scenario $1 / tool $2 part of this run (BENCH_ONLY)? The word iron-carrier also selects
# iron-carrier-baseline.
selected() { # scenario tool
  [ -z "${BENCH_ONLY:-}" ] && return 0
  local w t=${2%-baseline}
  for w in ${BENCH_ONLY//,/ }; do
    { [ "$w" = "$1" ] || [ "$w" = "$2" ] || [ "$w" = "$1/$2" ] ||
      [ "$w" = "$t" ] || [ "$w" = "$1/$t" ]; } && return 0
  done
  return 1
}

fail() { echo "$*" > "$root/reason"; exit 1; }
on_err() { [ -e "$root/reason" ] || echo "line $2: '$3' exited with status $1" > "$root/reason"; }

# Runs one measurement (a function and its arguments) for scenario × tool × variant in a
# fresh namespace and directory; a failure anywhere in it becomes a "failed" row.
ids=()
pair=           # with BENCH_BASELINE: the number of the new/baseline pair being run
measure() { # scenario tool variant function args...
  selected "$1" "$2" || return 0
  ids=(scenario="$1" tool="$2" variant="$3")
  local what="$1 / $2 / $3"
  if [ -n "$pair" ]; then
    ids+=(pair="$pair")
    what="$what / run $pair"
  fi
  shift 3
  run=$root/run
  rm -rf "$run" "$root/reason"
  mkdir -p "$run"
  # Nothing dirty left by the previous measurement (its deleted trees, say) may be written
  # during this one: a tool that syncs (fsync, syncfs) would pay for it.
  sync
  ns_new
  log "$what"
  local rc=0
  set +e
  ( set -eE; trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR; "$@" )
  rc=$?
  set -e
  ns_del
  if [ "$rc" != 0 ]; then
    local reason
    reason=$(cat "$root/reason" 2> /dev/null || echo "exit status $rc")
    log "$what failed: $reason"
    rec "${ids[@]}" status=failed reason="$reason"
  fi
  rm -rf "$run"
}

# An iron-carrier measurement: once with BIN, or, with BENCH_BASELINE, $pairs times BIN and
# the baseline interleaved, the order swapped every pair (new, baseline, baseline, new, ...:
# both see the same drift of a noisy machine, and neither always goes first into a cold
# page cache), each run recorded with its pair number (bench.py render takes medians).
measure_ic() { # scenario variant function args...
  local scen=$1 variant=$2 k
  shift 2
  if [ -z "$bin_base" ]; then
    measure "$scen" iron-carrier "$variant" "$@"
    return 0
  fi
  for k in $(seq 1 "$pairs"); do
    pair=$k
    if [ $((k % 2)) = 1 ]; then
      bin=$bin_new
      measure "$scen" iron-carrier "$variant" "$@"
      bin=$bin_base
      measure "$scen" iron-carrier-baseline "$variant" "$@"
    else
      bin=$bin_base
      measure "$scen" iron-carrier-baseline "$variant" "$@"
      bin=$bin_new
      measure "$scen" iron-carrier "$variant" "$@"
    fi
  done
  pair=
  bin=$bin_new
}

na() { # scenario tool variant reason: a row that cannot be measured, and why
  selected "$1" "$2" || return 0
  rec scenario="$1" tool="$2" variant="$3" status=n/a reason="$4"
}

# --- data ------------------------------------------------------------------------------------

gen_small() { py gen-small "$@"; } # dir count seed: files of 1–16 KiB in nested directories
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

gen_big() { # file MiB seed: AES-CTR keystream, fast and reproducible
  # openssl dies of SIGPIPE when head has enough: that is the expected way to stop it.
  { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
    -iv "$(printf '%032x' "$3")" < /dev/zero 2> /dev/null || true; } | head -c "$(($2 * 1024 * 1024))" > "$1"
}

# A base version (mtime 2020) and a new one (mtime 2021) of disk.img for the delta scenarios.
gen_delta() { # dir MiB overwrite|insert
  local d=$1 mib=$2
  mkdir -p "$d"
  gen_big "$d/base" "$mib" 3
  if [ "$3" = overwrite ]; then
    # 1 MiB at a non-aligned offset in the middle.
    cp "$d/base" "$d/new"
    head -c 1048576 /dev/zero | tr '\0' 'x' |
      dd of="$d/new" bs=1M seek=$((mib * 524288 + 12345)) oflag=seek_bytes conv=notrunc status=none
  else
    # 100 bytes inserted at offset 4096.
    { head -c 4096 "$d/base"; head -c 100 /dev/zero | tr '\0' 'y'; tail -c +4097 "$d/base"; } > "$d/new"
  fi
  touch -d '2020-01-01' "$d/base"
  touch -d '2021-01-01' "$d/new"
}

# The two replicas of scenarios 1-4, $run/a (the source) and $run/b (the receiver); sets the
# caller's $size (the bytes that must arrive). oneway: A holds a hard-linked copy of the tree
# and B nothing; delta: B holds the base version of disk.img and A the version named by the
# third argument (default new; Unison's unmeasured first run starts from the base).
pair_dirs() { # source-dir|delta-dir kind(oneway|delta) [a-version]
  if [ "$2" = oneway ]; then
    cp -al "$1" "$run/a"
    mkdir "$run/b"
    size=$(tree_bytes "$1")
  else
    mkdir "$run/a" "$run/b"
    cp --preserve=timestamps "$1/base" "$run/b/disk.img"
    cp --preserve=timestamps "$1/${3:-new}" "$run/a/disk.img"
    size=$(stat -c %s "$1/new")
  fi
}

# --- iron-carrier ------------------------------------------------------------------------

# The `encryption` value the next iron-carrier configs get (TOML): plaintext unless a
# scenario measures encryption.
ic_enc=false

# Config of node NAME listening on PORT inside the namespace, dialling PEER_PORTS.
ic_config() { # name port "peer ports" dir
  local peers="" p
  for p in $3; do peers="$peers\"127.0.0.1:$p\", "; done
  cat > "$run/$1.toml" <<EOF
node_id = "$1"
port = $2
listen_address = "127.0.0.1"
peers = [${peers%, }]
enable_service_discovery = false
encryption = $ic_enc
delay_watcher_events = 1
log_path = "$run/$1.db"

[storages]
data = "$4"
EOF
}

# Scenarios 1-4: B is a daemon (empty, or holding the old disk.img), A runs one-shot and
# leads. A exits only after B committed (fsynced, renamed) every file: its run is the time to
# converge. Besides the namespace's lo counter, two more counts of the same traffic: A's own
# (the summary's last line) and the kernel's per-socket counters of A's connections
# (bytes_sent / bytes_received from tcp_info, reported by `ss -E` as each socket is destroyed).
ic_pair() { # source-dir|delta-dir kind(oneway|delta)
  local a=$run/a b=$run/b w0 w1 size
  pair_dirs "$1" "$2"
  ic_config a 25231 25232 "$a"
  ic_config b 25232 25231 "$b"
  start b "$bin" --daemon -q --config "$run/b.toml"
  wait_listen 25232
  if [ "$2" = delta ]; then
    # A delta is an edit of a file both nodes already share: with no history, two
    # different files at one path are concurrent versions (a conflict, both kept). So a
    # first, unmeasured run shares the old version, then A's copy is overwritten in place.
    mv "$a/disk.img" "$run/a-new.img"
    cp --preserve=timestamps "$b/disk.img" "$a/disk.img"
    run_timed a 1800 "$bin" -q --config "$run/a.toml"
    cp --preserve=timestamps "$run/a-new.img" "$a/disk.img"
    rm "$run/a-new.img"
  fi
  ip netns exec "$ns" stdbuf -oL ss -E -tinH > "$run/ss.events" 2>&1 &
  local ss_pid=$!
  sleep 0.2
  w0=$(wire_now)
  run_timed a 1800 "$bin" -q --config "$run/a.toml"
  w1=$(wire_now)
  stop b
  sleep 0.3
  kill "$ss_pid" 2> /dev/null || true
  wait "$ss_pid" 2> /dev/null || true
  check_same "$a" "$b"
  local sent received ksent krecv
  read -r sent received < <(grep '^network:' "$run/a.log" | sed 's/.*sent \([0-9]*\) bytes, received \([0-9]*\) bytes.*/\1 \2/') || true
  # A's sockets: the one it dialled (peer port 25232) and the one it accepted (local 25231).
  read -r ksent krecv < <(awk '
    /^[A-Z]/ { mine = ($4 ~ /:25231$/ || $5 ~ /:25232$/); next }
    mine { for (i = 1; i <= NF; i++) { split($i, kv, ":");
             if (kv[1] == "bytes_sent") s += kv[2]; if (kv[1] == "bytes_received") r += kv[2] } }
    END { print s + 0, r + 0 }' "$run/ss.events")
  rec "${ids[@]}" status=ok wall_s="$wall" bytes="$size" wire_bytes=$((w1 - w0)) \
    a_rss_kib="$(rss a)" b_rss_kib="$(rss b)" a_cpu_s="$(cpu a)" b_cpu_s="$(cpu b)" \
    ic_sent="${sent:-0}" ic_received="${received:-0}" kernel_bytes_sent="$ksent" \
    kernel_bytes_received="$krecv"
}

# Large files plaintext, with `encryption = true` and with a passphrase: the same build
# interleaved $enc_pairs times (BENCH_ENC_PAIRS), the order rotated, so the VM's fast and
# slow minutes fall on all three alike; each row is the median of its runs. With a baseline,
# plaintext is measured against it as in every other scenario, and the encrypted settings
# are interleaved on their own.
ic_big_files() { # source-dir
  local k v order
  [ -n "$bin_base" ] && measure_ic big-files plaintext ic_pair "$1" oneway
  for k in $(seq 1 "${BENCH_ENC_PAIRS:-$enc_pairs}"); do
    case $((k % 3)) in
      1) order="plaintext encrypted passphrase" ;;
      2) order="encrypted passphrase plaintext" ;;
      *) order="passphrase plaintext encrypted" ;;
    esac
    for v in $order; do
      [ "$v" = plaintext ] && [ -n "$bin_base" ] && continue
      case $v in
        plaintext) ic_enc=false ;;
        encrypted) ic_enc=true ;;
        passphrase) ic_enc='"a bench passphrase of some length"' ;;
      esac
      pair=$k
      measure big-files iron-carrier "$v" ic_pair "$1" oneway
    done
  done
  pair=
  ic_enc=false
}

# The link's costs in-process (tests/link_speed.rs, release): the passphrase's key
# derivation, a whole handshake (both ends), sealing and opening 256 KiB frames. Natively,
# or built for TARGET with Debian's toolchain and run under qemu-user (cross/toolchain.sh
# cross installs it): qemu on this machine is no Pi, but it is the closest measure here.
ic_link_speed() { # native|TARGET
  local out line k
  if [ "$1" = native ]; then
    out=$(cd "$repo" && cargo test -q --release --locked --test link_speed -- --ignored \
      --nocapture --test-threads 1 2> "$run/cargo.err") ||
      fail "cargo test --test link_speed failed: $(grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  else
    [ -x /usr/bin/cargo ] || fail "no Debian toolchain for $1 (cross/toolchain.sh cross installs it)"
    out=$(cd "$repo" && . cross/env.sh && target_env "$1" &&
      "${BUILD[@]}" test -q --release --locked "${STD_TEST[@]}" --test link_speed --target "$1" \
        --target-dir target/cross-bench -- --ignored --nocapture --test-threads 1 \
        2> "$run/cargo.err") ||
      fail "link_speed for $1 failed: $(grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  fi
  line=$(grep -o 'link-speed: .*' <<< "$out")
  local figures=()
  for k in ${line#link-speed: }; do figures+=("$k"); done
  rec "${ids[@]}" status=ok "${figures[@]}"
}

# Samples CPU (utime+stime and schedstat) and memory of the named processes over $idle_s
# seconds and records the idle row (CPU as % of one core, VmRSS and VmHWM at the end).
idle_window() { # name-a name-b
  local s0a s0b s1a s1b w0 w1
  s0a=$(py proc-sample "${cpid[$1]}")
  s0b=$(py proc-sample "${cpid[$2]}")
  w0=$(wire_now)
  sleep "$idle_s"
  s1a=$(py proc-sample "${cpid[$1]}")
  s1b=$(py proc-sample "${cpid[$2]}")
  w1=$(wire_now)
  local fig
  fig=$(python3 - "$idle_s" "$s0a" "$s1a" "$s0b" "$s1b" <<'PY'
import json, sys
t = float(sys.argv[1])
a0, a1, b0, b1 = (json.loads(x) for x in sys.argv[2:])
out = []
for side, x0, x1 in (("a", a0, a1), ("b", b0, b1)):
    cpu = x1["cpu_s"] - x0["cpu_s"]
    out += [f"{side}_cpu_s={cpu:.2f}", f"{side}_cpu_pct={100 * cpu / t:.4f}",
            f"{side}_sched_s={x1['sched_s'] - x0['sched_s']:.4f}",
            f"{side}_sched_pct={100 * (x1['sched_s'] - x0['sched_s']) / t:.4f}",
            f"{side}_rss_kib={x1['rss_kib']}", f"{side}_hwm_kib={x1['hwm_kib']}",
            f"{side}_threads={x1['threads']}"]
print(" ".join(out))
PY
)
  # shellcheck disable=SC2086 # one key=value per word
  rec "${ids[@]}" status=ok idle_s="$idle_s" wire_bytes=$((w1 - w0)) $fig
}

# Scenarios 5 and 6: two daemons watching (delay_watcher_events = 1); A holds the small-file
# set (10,000 files in 1,000 directories), B is empty; once they agree (their initial session)
# and 5 s later, $idle_s seconds of CPU and the memory at the end; then $latency_samples times
# a new 4 KiB file on A and the time until it is on B (polled every 5 ms).
ic_idle_latency() { # source-dir
  local a=$run/a b=$run/b
  cp -al "$1" "$a"
  mkdir "$b"
  ic_config a 25231 25232 "$a"
  ic_config b 25232 25231 "$b"
  start b "$bin" --daemon -q --config "$run/b.toml"
  wait_listen 25232
  start a "$bin" --daemon -q --config "$run/a.toml"
  py wait-same "$a" "$b" --timeout 900 --interval 0.5 > /dev/null || fail "initial sync did not finish"
  sleep 5
  idle_window a b
  local out med samples tool lat_ids
  tool=$(printf '%s\n' "${ids[@]}" | sed -n 's/^tool=//p')
  lat_ids=(scenario=latency tool="$tool" variant=-)
  [ -n "$pair" ] && lat_ids+=(pair="$pair")
  if out=$(py latency "$a" "$b" "$latency_samples" --timeout 60 --gap 2 2>&1); then
    read -r med samples <<< "$out"
    rec "${lat_ids[@]}" status=ok latency_s="$med" samples_s:="$samples" watcher_delay_s=1
  else
    rec "${lat_ids[@]}" status=failed reason="$out"
  fi
  stop a
  stop b
  check_same "$a" "$b"
}

# The watcher's memory per watched directory (tests/watch_memory.rs, release): the heap of
# its map, counted exactly, and the kernel's objects per watch.
ic_watch_memory() {
  local out line
  out=$(cd "$repo" && cargo test -q --release --locked --test watch_memory -- --ignored \
    --nocapture --test-threads 1 2> "$run/cargo.err") ||
    fail "cargo test --test watch_memory failed: $(grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  line=$(grep -o 'watch-memory: .*' <<< "$out")
  local figures=()
  for k in ${line#watch-memory: }; do figures+=("$k"); done
  rec "${ids[@]}" status=ok "${figures[@]}"
}

# The daemon under floods (tests/flood_memory.rs, release): a fresh daemon per flood (pings
# not read, handshakes, a crowd past the peer limit, claims, garbage frames), its VmRSS before
# and peak VmHWM. Each line `flood NAME: k=v ...` becomes the figures NAME_k=v.
ic_flood_memory() {
  local out line name k figures=()
  out=$(cd "$repo" && cargo test -q --release --locked --test flood_memory -- --ignored \
    --nocapture --test-threads 1 2> "$run/cargo.err") ||
    fail "cargo test --test flood_memory failed: $(grep -m1 -A1 'panicked at' "$run/cargo.err" | tail -1 || grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  while read -r line; do
    name=${line%%:*}
    name=${name#flood }
    for k in ${line#*: }; do figures+=("${name}_$k"); done
  done < <(grep -E '^flood [a-z]+: ' <<< "$out")
  [ ${#figures[@]} -gt 0 ] || fail "tests/flood_memory.rs printed no flood line"
  rec "${ids[@]}" status=ok "${figures[@]}"
}

# The control socket (tests/control_bench.rs, release): `status` answer times during a
# 10,000-file session (over the socket, and as whole `status --json` processes), and the peak
# RSS it adds to a daemon serving 1,000 requests and 32 idle or deaf clients.
ic_control() {
  local out line
  out=$(cd "$repo" && cargo test -q --release --locked --test control_bench -- --ignored \
    --nocapture --test-threads 1 2> "$run/cargo.err") ||
    fail "cargo test --test control_bench failed: $(grep -m1 -A1 'panicked at' "$run/cargo.err" | tail -1 || grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  line=$(grep -o 'control: .*' <<< "$out") || fail "tests/control_bench.rs printed no control line"
  local figures=()
  for k in ${line#control: }; do figures+=("$k"); done
  rec "${ids[@]}" status=ok "${figures[@]}"
}

# Discovery: three hosts, each a namespace of its own joined to a bridge (198.18.0.1-3/24),
# no multicast route. Five times: the three daemons started together with a config of only
# [storages] (and their ports), and the time from the start until every node is connected to
# both others, from the log lines' timestamps; node 1's VmRSS 3 s later and its threads by
# name. Then three times the same with discovery off and the peers listed: the RSS that
# discovery adds is the difference of the medians.
ic_discovery() {
  local r samples=() rss_on=() rss_off=()
  disc_base=${ns}d
  disc_threads=
  trap disc_cleanup EXIT
  ip netns add "${disc_base}b"
  ip -n "${disc_base}b" link add br0 type bridge
  ip -n "${disc_base}b" link set br0 type bridge mcast_snooping 0
  ip -n "${disc_base}b" link set br0 up
  local i
  for i in 1 2 3; do
    ip netns add "${disc_base}h$i"
    ip link add eth0 netns "${disc_base}h$i" type veth peer name "p$i" netns "${disc_base}b"
    ip -n "${disc_base}b" link set "p$i" master br0
    ip -n "${disc_base}b" link set "p$i" up
    ip -n "${disc_base}h$i" link set lo up
    ip -n "${disc_base}h$i" addr add "198.18.0.$i/24" dev eth0
    ip -n "${disc_base}h$i" link set eth0 up
  done
  for r in 1 2 3 4 5; do
    disc_round true
    samples+=("$disc_mesh_s")
    rss_on+=("$disc_rss_kib")
  done
  for r in 1 2 3; do
    disc_round false
    rss_off+=("$disc_rss_kib")
  done
  local fig
  fig=$(python3 - "${samples[*]}" "${rss_on[*]}" "${rss_off[*]}" <<'PY'
import json, statistics, sys
s = [float(x) for x in sys.argv[1].split()]
on = [int(x) for x in sys.argv[2].split()]
off = [int(x) for x in sys.argv[3].split()]
print(f"discovery_s={statistics.median(s):.3f} samples_s:={json.dumps(s, separators=(',', ':'))} "
      f"rss_on_kib={int(statistics.median(on))} rss_off_kib={int(statistics.median(off))} "
      f"rss_added_kib={int(statistics.median(on) - statistics.median(off))}")
PY
)
  # shellcheck disable=SC2086 # one key=value per word
  rec "${ids[@]}" status=ok $fig threads="$disc_threads"
}

disc_cleanup() {
  local n
  for n in "$disc_base"h1 "$disc_base"h2 "$disc_base"h3 "$disc_base"b; do
    ns_kill "$n"
    ip netns del "$n" 2> /dev/null || true
  done
}

disc_config() { # i discovery
  local peers="" j
  if [ "$2" = false ]; then
    for j in 1 2 3; do [ "$j" = "$1" ] || peers="$peers\"198.18.0.$j:25230\", "; done
  fi
  mkdir -p "$run/r$1"
  cat > "$run/n$1.toml" <<EOF
node_id = "n$1"
port = 25230
peers = [${peers%, }]
enable_service_discovery = $2
encryption = $ic_enc
log_path = "$run/n$1.db"

[storages]
data = "$run/r$1"
EOF
}

# One round (discovery true or false): starts the three daemons, waits until each is
# connected to both others, sets disc_mesh_s (from the start to the last of those
# connections), disc_rss_kib (node 1, 3 s later) and, once, disc_threads; stops them.
disc_round() { # discovery
  local t0 k n=0 pids=()
  rm -f "$run"/n*.db* "$run"/n*.log
  for k in 1 2 3; do disc_config "$k" "$1"; done
  t0=$(now)
  for k in 1 2 3; do
    ip netns exec "${disc_base}h$k" "$bin" --daemon --config "$run/n$k.toml" > "$run/n$k.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 600); do
    n=0
    for k in 1 2 3; do
      [ "$(grep -o 'connected to n[0-9]' "$run/n$k.log" | sort -u | wc -l)" -ge 2 ] && n=$((n + 1))
    done
    [ "$n" = 3 ] && break
    sleep 0.05
  done
  [ "$n" = 3 ] || fail "the three nodes did not all connect (discovery $1): $(tail -3 "$run/n1.log" | tr '\n' ' ')"
  # The moment the last node had both peers, from the log lines' own timestamps.
  disc_mesh_s=$(python3 - "$t0" "$run"/n1.log "$run"/n2.log "$run"/n3.log <<'PY'
import datetime, re, sys
t0 = float(sys.argv[1])
last = 0.0
for path in sys.argv[2:]:
    first = {}
    for line in open(path, errors="replace"):
        m = re.match(r"(\S+Z) .*connected to (n\d) at", line)
        if m and m.group(2) not in first:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
            first[m.group(2)] = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    last = max(last, max(first.values()))
print(f"{last - t0:.3f}")
PY
)
  sleep 3
  disc_rss_kib=$(awk '/^VmRSS/ { print $2 }' "/proc/${pids[0]}/status")
  if [ -z "$disc_threads" ] && [ "$1" = true ]; then
    disc_threads=$(cat "/proc/${pids[0]}"/task/*/comm | sort | uniq -c |
      awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
  fi
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" 2> /dev/null || true
}

# Writes the config of node i of a five-node full mesh.
mesh_config() { # i dir
  local j peers=""
  for j in 1 2 3 4 5; do [ "$j" = "$1" ] || peers="$peers $((25230 + j))"; done
  ic_config "n$1" $((25230 + $1)) "$peers" "$2"
}

# Five nodes, full mesh, each with its own files, all started at once as one-shot runs:
# wall time until the last one exits; per node peak RSS and CPU (five-nodes, scenario 7).
ic_mesh() { # data-dir (holding n1..n5)
  local i pids=() t0 t1 w0 w1 rc
  for i in 1 2 3 4 5; do
    cp -al "$1/n$i" "$run/n$i"
    mesh_config "$i" "$run/n$i"
  done
  w0=$(wire_now)
  t0=$(now)
  for i in 1 2 3 4 5; do
    timeout 3600 ip netns exec "$ns" /usr/bin/time -v -o "$run/n$i.time" "$bin" -q --config "$run/n$i.toml" > "$run/n$i.log" 2>&1 &
    pids+=($!)
  done
  local bad=""
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    [ "$rc" = 0 ] || bad="$bad n$((i + 1)) exited with status $rc ($(grep -v '^network:' "$run/n$((i + 1)).log" | tail -1));"
  done
  t1=$(now)
  w1=$(wire_now)
  # A node that failed or replicas that differ fail the run, but the figures are kept.
  local why=$bad r="" c="" status=ok
  [ -n "$why" ] || why=$(py same "$run"/n{1,2,3,4,5} 2>&1 > /dev/null) || true
  for i in 1 2 3 4 5; do
    r="$r,$(rss "n$i")"
    c="$c,$(cpu "n$i")"
  done
  [ -z "$why" ] || status=failed
  rec "${ids[@]}" status="$status" reason="${why# }" wall_s="$(minus "$t1" "$t0")" \
    wire_bytes=$((w1 - w0)) rss_kib:="[${r#,}]" cpu_s:="[${c#,}]"
}

# One node holds a file four others lack: how many bytes does it read? (rchar of the holder,
# a daemon, read from /proc after convergence; and the node's own counter from its log.)
ic_fanout() { # MiB
  local mib=$1 i t0 t1 w0 w1
  for i in 1 2 3 4 5; do
    mkdir "$run/n$i"
    mesh_config "$i" "$run/n$i"
  done
  gen_big "$run/n1/movie.bin" "$mib" 7
  sync
  for i in 2 3 4 5; do
    start "n$i" "$bin" --daemon -q --config "$run/n$i.toml"
    wait_listen $((25230 + i))
  done
  w0=$(wire_now)
  t0=$(now)
  start n1 "$bin" --daemon -v --config "$run/n1.toml"
  local size=$((mib * 1048576)) done=0
  for _ in $(seq 1 3000); do
    done=1
    for i in 2 3 4 5; do
      [ "$(stat -c %s "$run/n$i/movie.bin" 2> /dev/null || echo 0)" = "$size" ] || done=0
    done
    [ $done = 1 ] && break
    sleep 0.1
  done
  t1=$(now)
  [ $done = 1 ] || fail "the four receivers did not get the file within 300 s"
  # Let the session end so the holder logs its counter.
  for _ in $(seq 1 100); do grep -q 'session done' "$run/n1.log" && break; sleep 0.1; done
  w1=$(wire_now)
  local rchar reported
  rchar=$(awk '/^rchar/ { print $2 }' "/proc/${cpid[n1]}/io")
  for i in 1 2 3 4 5; do stop "n$i"; done
  check_same "$run"/n{1,2,3,4,5}
  reported=$(grep -o 'read [0-9]* bytes' "$run/n1.log" | awk '{ s += $2 } END { print s + 0 }')
  rec "${ids[@]}" status=ok file_bytes="$size" holder_read_bytes="$reported" \
    holder_rchar="$rchar" wire_bytes=$((w1 - w0)) wall_s="$(minus "$t1" "$t0")"
}

# Signature + delta throughput over an unchanged file (in-process, release build, through
# `cargo test --release --test delta_speed -- --ignored`).
ic_delta_speed() { # MiB
  gen_big "$run/speed.bin" "$1" 9
  local out line nomatch
  out=$(cd "$repo" && IC_DELTA_FILE="$run/speed.bin" IC_DELTA_MIB="$(($1 < 256 ? $1 : 256))" \
    cargo test -q --release --test delta_speed -- --ignored --nocapture --test-threads 1 2> "$run/cargo.err") ||
    fail "cargo test --test delta_speed failed: $(grep -m1 -E '^error' "$run/cargo.err" || tail -1 "$run/cargo.err")"
  # The test harness prints progress dots on the same lines: take the labelled parts.
  line=$(grep -o 'delta-speed: .*' <<< "$out")
  nomatch=$(grep -o 'delta-speed-nomatch: .*' <<< "$out")
  rec "${ids[@]}" status=ok result="${line#delta-speed: }" no_match="${nomatch#delta-speed-nomatch: }"
}

# History (iron-carrier alone). Renames: A and B share a big file and a directory of 1,000
# files; A renames the file, runs, renames the directory, runs: the wire of each run. A run
# with one small new file comes first: the first index exchange after the initial sync
# carries, once, the entries B recorded as it received the files (reported apart).
ic_rename() { # MiB
  local a=$run/a b=$run/b w0 w1 rf rd sf sd cu
  mkdir -p "$a/album" "$b"
  gen_big "$a/big.bin" "$1" 9
  python3 -c 'import sys
for i in range(1000):
    open(f"{sys.argv[1]}/album/p{i:04d}.jpg", "w").write(f"photo {i}\n")' "$a"
  ic_config a 25231 25232 "$a"
  ic_config b 25232 25231 "$b"
  start b "$bin" --daemon -q --config "$run/b.toml"
  wait_listen 25232
  run_timed a 1800 "$bin" -q --config "$run/a.toml"
  check_same "$a" "$b"
  echo "one more" > "$a/catch-up.txt"
  w0=$(wire_now)
  run_timed a 600 "$bin" -q --config "$run/a.toml"
  w1=$(wire_now)
  cu=$((w1 - w0))
  mv "$a/big.bin" "$a/big-renamed.bin"
  w0=$(wire_now)
  run_timed a 600 "$bin" -q --config "$run/a.toml"
  w1=$(wire_now)
  check_same "$a" "$b"
  rf=$((w1 - w0))
  sf=$(awk '/^network:/ { print $3 + $6 }' "$run/a.log")
  mv "$a/album" "$a/album-2026"
  w0=$(wire_now)
  run_timed a 600 "$bin" -q --config "$run/a.toml"
  w1=$(wire_now)
  check_same "$a" "$b"
  rd=$((w1 - w0))
  sd=$(awk '/^network:/ { print $3 + $6 }' "$run/a.log")
  stop b
  rec "${ids[@]}" status=ok file_bytes=$(($1 * 1048576)) dir_files=1000 \
    rename_file_wire_bytes="$rf" rename_dir_wire_bytes="$rd" rename_file_ic_bytes="${sf:-0}" \
    rename_dir_ic_bytes="${sd:-0}" catch_up_wire_bytes="$cu" b_rss_kib="$(rss b)"
}

# Re-scan: A holds N tiny files, B none. A's first run hashes and sends them all; its second
# (nothing changed) must read no file. Scan times and bytes read from A's log (-v), its
# database's size, and the database transactions of each run.
ic_rescan() { # files
  local a=$run/a b=$run/b first_wall first_rss db
  mkdir -p "$a" "$b"
  python3 - "$a" "$1" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}.txt"), "w") as f:
        f.write(f"file {i}\n")
PY
  ic_config a 25231 25232 "$a"
  ic_config b 25232 25231 "$b"
  start b "$bin" --daemon -q --config "$run/b.toml"
  wait_listen 25232
  run_timed a 3600 "$bin" -v --config "$run/a.toml"
  first_wall=$wall
  first_rss=$(rss a)
  mv "$run/a.log" "$run/a1.log"
  check_same "$a" "$b"
  run_timed a 3600 "$bin" -v --config "$run/a.toml"
  stop b
  scan_s() { grep -m1 'scanned .* entries' "$1" | sed -n 's/.* in \([0-9.]*\) s$/\1/p'; }
  read_b() { grep -m1 ' bytes read$' "$1" | sed -n 's/.*, \([0-9]*\) bytes read$/\1/p'; }
  tx() { grep 'database transactions' "$1" | tail -1 | sed -n 's/.*; \([0-9]*\) database transactions.*/\1/p'; }
  sessions() { grep -c 'session done' "$1" || true; }
  db=$(($(stat -c %s "$run/a.db") + $(stat -c %s "$run/a.db-wal" 2> /dev/null || echo 0)))
  rec "${ids[@]}" status=ok files="$1" first_scan_s="$(scan_s "$run/a1.log")" \
    rescan_s="$(scan_s "$run/a.log")" first_read_bytes="$(read_b "$run/a1.log")" \
    rescan_read_bytes="$(read_b "$run/a.log")" db_bytes="$db" \
    db_bytes_per_10k=$((db * 10000 / $1)) first_transactions="$(tx "$run/a1.log")" \
    rescan_transactions="$(tx "$run/a.log")" first_sessions="$(sessions "$run/a1.log")" \
    rescan_sessions="$(sessions "$run/a.log")" first_wall_s="$first_wall" rescan_wall_s="$wall" \
    a_rss_first_kib="$first_rss" a_rss_rescan_kib="$(rss a)" b_rss_kib="$(rss b)"
}

# --- rsync ---------------------------------------------------------------------------------

# rsync daemon (the receiver) on 127.0.0.1:8730 with one writable module on $1.
rsync_daemon() { # receiver-dir
  cat > "$run/rsyncd.conf" <<EOF
port = 8730
address = 127.0.0.1
use chroot = no
log file = $run/rsyncd.log
[bench]
path = $1
read only = false
uid = root
gid = root
EOF
  start b rsync --daemon --no-detach --config="$run/rsyncd.conf"
  wait_listen 8730
}

# Scenarios 1-4: a client push `rsync -a --no-whole-file` (delta algorithm on) into the
# daemon. One way only: the lower bound of what a sync tool must do. rsync does not fsync
# unless asked: with a third argument `fsync`, `--fsync` makes the receiver fsync every file
# (as durable as iron-carrier's receiver, minus the directory).
rsync_push() { # source-dir|delta-dir kind(oneway|delta) [fsync]
  local a=$run/a b=$run/b w0 w1 size opts=(-a --no-whole-file)
  [ "${3:-}" = fsync ] && opts+=(--fsync)
  pair_dirs "$1" "$2"
  rsync_daemon "$b"
  w0=$(wire_now)
  run_timed a 1800 rsync "${opts[@]}" "$a/" rsync://127.0.0.1:8730/bench/
  w1=$(wire_now)
  stop b
  check_same "$a" "$b"
  rec "${ids[@]}" status=ok wall_s="$wall" bytes="$size" wire_bytes=$((w1 - w0)) \
    a_rss_kib="$(rss a)" b_rss_kib="$(rss b)" a_cpu_s="$(cpu a)" b_cpu_s="$(cpu b)"
}

# --- Unison --------------------------------------------------------------------------------

unison_client() { # name: one `unison a socket://…/b` run, archives in $run/ua
  run_timed "$1" 1800 env UNISON="$run/ua" unison "$run/a" "socket://127.0.0.1:8740/$run/b" \
    -batch -auto -times -perms 0 -ui text
}

# Scenarios 1-4: `unison -socket 8740` (B's side, archives in $run/ub) and a client run on A,
# each with a fresh archive directory. For deltas a first, unmeasured run builds both
# archives over the identical base, then A's file is replaced and the second run measured.
unison_sync() { # source-dir|delta-dir kind(oneway|delta)
  local a=$run/a b=$run/b w0 w1 size
  mkdir "$run/ua" "$run/ub"
  pair_dirs "$1" "$2" base
  start b env UNISON="$run/ub" unison -socket 8740
  wait_listen 8740
  if [ "$2" = delta ]; then
    unison_client first
    cp --preserve=timestamps "$1/new" "$a/disk.img"
  fi
  w0=$(wire_now)
  unison_client a
  w1=$(wire_now)
  stop b
  check_same "$a" "$b"
  rec "${ids[@]}" status=ok wall_s="$wall" bytes="$size" wire_bytes=$((w1 - w0)) \
    a_rss_kib="$(rss a)" b_rss_kib="$(rss b)" a_cpu_s="$(cpu a)" b_cpu_s="$(cpu b)"
}

# --- Syncthing -----------------------------------------------------------------------------

# Two instances: keys from `syncthing generate`, config patched by bench.py st-config (REST
# on 127.0.0.1:8384/8385 with a known API key, sync on tcp://127.0.0.1:22001/22002, global
# and local discovery, relays, NAT, upgrades, usage and crash reporting off, each device
# known to the other by id with a static address, one sendreceive folder "bench").
st_id_a=
st_id_b=
st_setup() { # watch(0|1)
  local s
  for s in a b; do
    syncthing generate --home="$run/st-$s" --no-default-folder --skip-port-probing > /dev/null 2>&1 ||
      fail "syncthing generate failed"
    mkdir -p "$run/$s/.stfolder"
  done
  st_id_a=$(syncthing --home="$run/st-a" --device-id)
  st_id_b=$(syncthing --home="$run/st-b" --device-id)
  local watch=()
  [ "$1" = 1 ] && watch=(--watch)
  py st-config "$run/st-a" a 22001 8384 "$st_key" "$run/a" "$st_id_b" b 22002 "${watch[@]}"
  py st-config "$run/st-b" b 22002 8385 "$st_key" "$run/b" "$st_id_a" a 22001 "${watch[@]}"
}

st_start() { # a|b
  start "$1" env STNODEFAULTFOLDER=1 STNOUPGRADE=1 syncthing serve --home="$run/st-$1" \
    --no-browser --no-restart
}

# Until both instances are idle, 100 % complete for each other and the trees agree; prints the
# time it saw that. Syncthing gets generous deadlines (start-up, hashing).
st_wait() { # timeout
  in_ns python3 "$helper" st-wait 8384 8385 "$st_key" "$st_id_a" "$st_id_b" "$run/a" "$run/b" \
    --timeout "$1"
}

# The measured part of a Syncthing pair run: from COMMAND (which sets A going) until both
# agree, then the record: wall, wire (minus our REST polling), RSS and CPU of both.
st_measure() { # bytes-expected timeout command...
  local bytes=$1 timeout=$2 w0 w1 t0 t1 a0 a1
  shift 2
  w0=$(wire_now)
  a0=$(api_now)
  t0=$(now)
  "$@"
  t1=$(st_wait "$timeout") || fail "did not converge within $timeout s"
  w1=$(wire_now)
  a1=$(api_now)
  stop a
  stop b
  check_same "$run/a" "$run/b"
  rec "${ids[@]}" status=ok wall_s="$(minus "$t1" "$t0")" bytes="$bytes" \
    wire_bytes=$((w1 - w0)) a_rss_kib="$(rss a)" b_rss_kib="$(rss b)" a_cpu_s="$(cpu a)" \
    b_cpu_s="$(cpu b)" rest_api_bytes_subtracted=$((a1 - a0))
}

# Scenarios 1, 2: B started and its REST API up, then A started: the clock runs from A's start
# (its scan and hashing included) until B has everything. Watcher off.
st_oneway() { # source-dir
  cp -al "$1" "$run/a"
  mkdir "$run/b"
  st_setup 0
  st_start b
  in_ns python3 "$helper" st-ready 8385 "$st_key" --timeout 120 || fail "REST API of B not up"
  st_measure "$(tree_bytes "$1")" 1800 st_start a
}

# Scenarios 3, 4: the base on both, both instances in sync; then A's file is replaced (watcher
# off) and the clock runs from the rescan request on A until B has the new version.
st_delta() { # delta-dir
  mkdir "$run/a" "$run/b"
  cp --preserve=timestamps "$1/base" "$run/b/disk.img"
  cp --preserve=timestamps "$1/base" "$run/a/disk.img"
  st_setup 0
  st_start b
  st_start a
  st_wait 600 > /dev/null || fail "the base did not get in sync within 600 s"
  cp --preserve=timestamps "$1/new" "$run/a/disk.img"
  st_measure "$(stat -c %s "$1/new")" 600 in_ns python3 "$helper" st-scan 8384 "$st_key"
}

# Scenarios 5 and 6 on one pair: watcher on (fsWatcherDelayS=1); A holds the small-file set,
# B is empty; once in sync and 10 s later, the idle window; then $latency_samples times a new
# 4 KiB file on A and the time until it is on B (polled every 5 ms).
st_idle_latency() { # source-dir
  cp -al "$1" "$run/a"
  mkdir "$run/b"
  st_setup 1
  st_start b
  st_start a
  st_wait 1800 > /dev/null || fail "initial sync did not finish within 1800 s"
  sleep 10
  idle_window a b
  local out med samples
  ids=(scenario=latency tool=syncthing variant=-)
  if out=$(py latency "$run/a" "$run/b" "$latency_samples" --timeout 60 --gap 3 2>&1); then
    read -r med samples <<< "$out"
    rec "${ids[@]}" status=ok latency_s="$med" samples_s:="$samples" watcher_delay_s=1
  else
    rec "${ids[@]}" status=failed reason="$out"
  fi
  stop a
  stop b
}

# --- the run -------------------------------------------------------------------------------

started=$(date +%s)
date_start=$(date -u '+%Y-%m-%d %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
versions="iron-carrier $("$bin" --version 2> /dev/null | awk '{ print $NF }'); $(rsync --version | head -1 | awk '{ print "rsync " $3 }'); $(unison -version | awk '{ print "unison " $3 }')"
if [ "$with_syncthing" = 1 ]; then versions="$versions; syncthing $(syncthing --version | awk '{ print $2 }')"; fi
log "$(nproc) cores, $(uname -m), preset $preset, load $load_start, binary $(stat -c %s "$bin") bytes"
baseline_meta=()
if [ -n "$bin_base" ]; then
  baseline_version=$("$bin_base" --version 2> /dev/null | awk '{ print $NF }')
  versions="$versions; baseline iron-carrier ${baseline_version:-?}"
  log "baseline $baseline ($(stat -c %s "$bin_base") bytes), $pairs interleaved runs of each build"
  cmp -s "$bin_new" "$bin_base" && log "note: the baseline is byte-identical to $bin_src"
  baseline_meta=(baseline="$baseline" baseline_pairs="$pairs")
fi

fsync_ms_start=$(py fsync-probe "$root/fsync-probe")
log "generating data"
data=$root/data
gen_small "$data/small" "$n_small" 1
mkdir -p "$data/big"
for i in $(seq 1 "$n_big"); do gen_big "$data/big/big$i.bin" "$big_mib" "$i"; done
gen_delta "$data/delta-overwrite" "$delta_over_mib" overwrite
gen_delta "$data/delta-insert" "$delta_ins_mib" insert
for i in 1 2 3 4 5; do gen_small "$data/five/n$i/n$i" "$n_five" $((100 + i)); done
if [ "$n_scale" -gt 0 ]; then
  for i in 1 2 3 4 5; do gen_small "$data/scale/n$i/n$i" $((n_scale / 5)) $((200 + i)); done
fi
sync

skip_st="skipped in --small (Syncthing's start-up and hashing alone take longer than the one-minute budget)"

# 1. many small files; 2. large files (plaintext; encrypted where the tool has it).
for scen in small-files big-files; do
  src=$data/small
  [ "$scen" = big-files ] && src=$data/big
  variant=-
  [ "$scen" = big-files ] && variant=plaintext
  if [ "$scen" = big-files ]; then
    ic_big_files "$src"
  else
    measure_ic "$scen" "$variant" ic_pair "$src" oneway
  fi
  measure "$scen" rsync "$variant" rsync_push "$src" oneway
  measure "$scen" rsync-fsync "$variant" rsync_push "$src" oneway fsync
  measure "$scen" unison "$variant" unison_sync "$src" oneway
  if [ "$with_syncthing" = 1 ]; then
    measure "$scen" syncthing encrypted st_oneway "$src"
  else
    na "$scen" syncthing encrypted "$skip_st"
  fi
done
na big-files rsync encrypted "its daemon protocol has no encryption (rsync over ssh not measured)"
na big-files rsync-fsync encrypted "its daemon protocol has no encryption (rsync over ssh not measured)"
na big-files unison encrypted "-socket is plain text (unison over ssh not measured)"

# 3. 1 MiB overwritten; 4. 100 bytes inserted.
for scen in delta-overwrite delta-insert; do
  measure_ic "$scen" - ic_pair "$data/$scen" delta
  measure "$scen" rsync - rsync_push "$data/$scen" delta
  measure "$scen" rsync-fsync - rsync_push "$data/$scen" delta fsync
  measure "$scen" unison - unison_sync "$data/$scen" delta
  if [ "$with_syncthing" = 1 ]; then
    measure "$scen" syncthing encrypted st_delta "$data/$scen"
  else
    na "$scen" syncthing encrypted "$skip_st"
  fi
done

# 5. idle; 6. latency.
measure_ic idle - ic_idle_latency "$data/small"
measure watch-memory iron-carrier - ic_watch_memory
measure flood-memory iron-carrier - ic_flood_memory
measure control iron-carrier - ic_control
measure discovery iron-carrier - ic_discovery
for t in rsync rsync-fsync unison; do
  na idle "$t" - "no daemon: a one-shot tool uses nothing between runs"
  na latency "$t" - "no watcher daemon: it syncs only when run"
done
if [ "$with_syncthing" = 1 ]; then
  measure idle syncthing encrypted st_idle_latency "$data/small"
  # A failure before the latency part leaves no latency row: say so.
  grep -q '"scenario": "latency", "tool": "syncthing"' "$rows" ||
    na latency syncthing - "not reached: the idle run before it failed"
else
  na idle syncthing encrypted "$skip_st"
  na latency syncthing - "$skip_st"
fi

# iron-carrier alone.
measure_ic five-nodes - ic_mesh "$data/five"
rm -rf "$data/small" "$data/big"
measure_ic fan-out - ic_fanout "$fan_mib"
measure_ic rename - ic_rename "$rename_mib"
measure_ic rescan - ic_rescan "$n_rescan"
measure delta-speed iron-carrier - ic_delta_speed "$speed_mib"
measure link iron-carrier x86_64 ic_link_speed native
measure link iron-carrier qemu-arm ic_link_speed armv7-unknown-linux-gnueabihf

# 7. scale (--full only), last: whatever runs right after it on the same file system pays for
# its 100,000-file trees (measured: the next five-node run took 25 s and 9 s of CPU per node
# instead of 6 s and 2 s, for whichever build came first, old or new).
if [ "$n_scale" -gt 0 ]; then
  measure_ic scale - ic_mesh "$data/scale"
  na scale rsync - "not measured: one-way and pairwise, a five-node mesh would be 20 separate runs"
  na scale unison - "not measured: pairwise, a five-node mesh needs a star of runs repeated until stable"
  na scale syncthing - "not measured: five instances hashing and indexing 100,000 files each do not fit this 2-core machine's run"
  rm -rf "$data/scale"
fi

# Binary size: the binary passed in (stripped copy), and an armv7 build in target/dist/.
x86=$(stat -c %s "$bin")
if strip -o "$root/stripped" "$bin" 2> /dev/null; then x86=$(stat -c %s "$root/stripped"); fi
size_base=()
if [ -n "$bin_base" ]; then
  x86_base=$(stat -c %s "$bin_base")
  if strip -o "$root/stripped-baseline" "$bin_base" 2> /dev/null; then
    x86_base=$(stat -c %s "$root/stripped-baseline")
  fi
  size_base=(baseline_x86_64_bytes="$x86_base")
fi
# make dist (cross/dist.sh) writes target/dist/iron-carrier-<TARGET>; the goal is armv7 gnueabihf.
arm=$repo/target/dist/iron-carrier-armv7-unknown-linux-gnueabihf
[ -f "$arm" ] || arm=$(find "$repo/target/dist" -type f -name 'iron-carrier*armv7*' ! -name '*.*' 2> /dev/null | sort | head -1 || true)
if [ -n "$arm" ] && [ "$(head -c 4 "$arm" | od -An -c | tr -d ' ')" = '177ELF' ]; then
  arm_bytes=$(stat -c %s "$arm")
  if command -v arm-linux-gnueabihf-strip > /dev/null &&
     arm-linux-gnueabihf-strip -o "$root/arm-stripped" "$arm" 2> /dev/null; then
    arm_bytes=$(stat -c %s "$root/arm-stripped")
  fi
  rec scenario=binary-size tool=iron-carrier variant=- status=ok x86_64_bytes="$x86" \
    armv7_bytes="$arm_bytes" armv7_path="${arm#"$repo"/}" "${size_base[@]}"
else
  rec scenario=binary-size tool=iron-carrier variant=- status=ok x86_64_bytes="$x86" \
    armv7_note="no armv7 binary in target/dist/ (make dist builds it)" "${size_base[@]}"
fi

py record "$root/meta.json" preset="$preset" cores="$(nproc)" machine="$(uname -m)" \
  fsync_ms_start="$fsync_ms_start" fsync_ms_end="$(py fsync-probe "$root/fsync-probe")" \
  date="$date_start" load_start="$load_start" \
  load_end="$(cut -d' ' -f1-3 /proc/loadavg)" duration_s=$(($(date +%s) - started)) \
  versions="$versions" binary="$bin_src" "${baseline_meta[@]}" \
  params:="{\"n_small\":$n_small,\"n_big\":$n_big,\"big_mib\":$big_mib,\"delta_over_mib\":$delta_over_mib,\"delta_ins_mib\":$delta_ins_mib,\"idle_s\":$idle_s,\"n_five\":$n_five,\"fan_mib\":$fan_mib,\"speed_mib\":$speed_mib,\"n_scale\":$n_scale,\"rename_mib\":$rename_mib,\"n_rescan\":$n_rescan,\"syncthing\":$with_syncthing}"
echo
py render "$rows" "$root/meta.json" "$outdir/results.json" --table "$outdir/results.txt"
log "results in $outdir/results.json and $outdir/results.txt"
