#!/usr/bin/env bash
# make bench: measured scenarios on 127.0.0.1 with generated, seeded data.
#
# For each scenario node B starts as an empty daemon (the receiver) and node A, which holds
# the data, runs one-shot against it; A leads and sends. Both run under /usr/bin/time -v,
# which gives peak RSS (VmHWM) and CPU seconds. "wall" is A's run from start to exit: A only
# exits after B has committed (fsynced and renamed) every file, so it is the time to
# converge. Convergence is then checked by comparing path+size+SHA-256 manifests.
#
# Usage: tests/bench.sh BIN [--small]      (results also written to target/bench/results.json)
set -euo pipefail

bin=$(realpath "${1:-target/release/iron-carrier}")
preset=${2:-full}
if [ "$preset" = "--small" ]; then
  n_small=1000; n_big=4; big_mib=16; n_five=200; fan_mib=16
  delta_big=32; delta_small=8; speed_mib=64
else
  n_small=10000; n_big=4; big_mib=256; n_five=2000; fan_mib=100
  delta_big=256; delta_small=64; speed_mib=1024
fi

if ! [ -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
  else
    echo "bench: /usr/bin/time is missing (apt-get install time)" >&2; exit 1
  fi
fi

root=$(mktemp -d /tmp/iron-carrier-bench.XXXXXX)
outdir=target/bench
mkdir -p "$outdir"
results="$outdir/results.json"
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT

base=$((22000 + ($$ % 400) * 10))

gen_small() { # dir count seed: files of 1–16 KiB in nested directories
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
for i in range(n):
    d = os.path.join(root, f"d{i % 50:02d}", f"e{(i // 50) % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
PY
}

gen_big() { # file MiB seed: AES-CTR keystream, fast and reproducible
  # openssl dies of SIGPIPE when head has enough: that is the expected way to stop it.
  { openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
    -iv "$(printf '%032x' "$3")" < /dev/zero 2>/dev/null || true; } | head -c "$(( $2 * 1024 * 1024 ))" > "$1"
}

manifest() {
  (cd "$1" && find . -type f -not -name '*.db*' -print0 | sort -z | xargs -0 sha256sum)
}

config() { # name port peer dir
  cat > "$root/$1.toml" <<EOF
node_id = "$1"
port = $2
listen_address = "127.0.0.1"
peers = ["127.0.0.1:$3"]
enable_service_discovery = false
encryption = false
log_path = "$root/$1.db"

[storages]
data = "$4"
EOF
}

# "key: value" from a /usr/bin/time -v report.
tv() { grep -F "$2" "$1" | head -1 | awk -F': ' '{print $2}'; }

json_rows=()
printf '%-28s %10s %12s %12s %10s %10s\n' scenario wall_s A_rss_KiB B_rss_KiB A_cpu_s B_cpu_s
run_scenario() { # name
  local name=$1 a=$root/$1/a b=$root/$1/b
  config "a-$name" $((base + 1)) $((base + 2)) "$a"
  config "b-$name" $((base + 2)) $((base + 1)) "$b"
  /usr/bin/time -v -o "$root/b.time" "$bin" --daemon -q --config "$root/b-$name.toml" &
  local time_pid=$!
  # Signals go to the daemon itself; `time` then reports and exits with it.
  for _ in $(seq 1 100); do
    daemon_pid=$(pgrep -P "$time_pid" || true)
    [ -n "$daemon_pid" ] && break
    sleep 0.05
  done
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((base + 2))") 2>/dev/null && break
    sleep 0.05
  done
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$root/a.time" "$bin" -q --config "$root/a-$name.toml" > "$root/a.out"
  t1=$(date +%s.%N)
  kill "$daemon_pid"; wait "$time_pid" || true; daemon_pid=
  if ! diff <(manifest "$a") <(manifest "$b") > /dev/null; then
    echo "bench: $name did not converge" >&2; exit 1
  fi
  local wall a_rss b_rss a_cpu b_cpu
  wall=$(echo "$t1 - $t0" | bc)
  a_rss=$(tv "$root/a.time" "Maximum resident set size")
  b_rss=$(tv "$root/b.time" "Maximum resident set size")
  a_cpu=$(echo "$(tv "$root/a.time" "User time") + $(tv "$root/a.time" "System time")" | bc)
  b_cpu=$(echo "$(tv "$root/b.time" "User time") + $(tv "$root/b.time" "System time")" | bc)
  printf '%-28s %10.2f %12s %12s %10.2f %10.2f\n' "$name" "$wall" "$a_rss" "$b_rss" "$a_cpu" "$b_cpu"
  json_rows+=("{\"scenario\":\"$name\",\"wall_s\":$wall,\"a_peak_rss_kib\":$a_rss,\"b_peak_rss_kib\":$b_rss,\"a_cpu_s\":$a_cpu,\"b_cpu_s\":$b_cpu}")
  base=$((base + 3))
}

# Writes the config of node i of a five-node full mesh: name, i, storage dir.
five_config() { # name i dir
  local name=$1 i=$2 dir=$3 peers="" j
  for j in 1 2 3 4 5; do
    [ "$i" = "$j" ] && continue
    peers="$peers\"127.0.0.1:$((base + j))\", "
  done
  cat > "$root/$name-n$i.toml" <<EOF
node_id = "n$i"
port = $((base + i))
listen_address = "127.0.0.1"
peers = [${peers%, }]
enable_service_discovery = false
encryption = false
log_path = "$root/$name-n$i.db"

[storages]
data = "$dir"
EOF
}

# Five nodes, full mesh, every node with its own files, all started at once as one-shot runs:
# wall time until the last one exits; per node peak RSS and CPU.
run_five() { # name files-per-node
  local name=$1 per=$2 i pids=()
  for i in 1 2 3 4 5; do
    mkdir -p "$root/$name/n$i"
    gen_small "$root/$name/n$i/n$i" "$per" $((100 + i))
    five_config "$name" "$i" "$root/$name/n$i"
  done
  sync
  local t0 t1
  t0=$(date +%s.%N)
  for i in 1 2 3 4 5; do
    /usr/bin/time -v -o "$root/$name-n$i.time" "$bin" -q --config "$root/$name-n$i.toml" > /dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(date +%s.%N)
  for i in 2 3 4 5; do
    if ! diff <(manifest "$root/$name/n1") <(manifest "$root/$name/n$i") > /dev/null; then
      echo "bench: $name did not converge (n$i)" >&2; exit 1
    fi
  done
  local wall rss="" cpu=""
  wall=$(echo "$t1 - $t0" | bc)
  for i in 1 2 3 4 5; do
    rss="$rss $(tv "$root/$name-n$i.time" "Maximum resident set size")"
    cpu="$cpu $(echo "$(tv "$root/$name-n$i.time" "User time") + $(tv "$root/$name-n$i.time" "System time")" | bc)"
  done
  printf '%-28s %10.2f   peak RSS KiB per node:%s   CPU s:%s\n' "$name" "$wall" "$rss" "$cpu"
  json_rows+=("{\"scenario\":\"$name\",\"wall_s\":$wall,\"peak_rss_kib\":[$(echo $rss | tr ' ' ,)],\"cpu_s\":[$(echo $cpu | tr ' ' ,)]}")
  base=$((base + 6))
}

# One node holds a file four others lack: how many bytes does it read? (rchar of the holder,
# a daemon, read from /proc after convergence; and the node's own counter from its log.)
run_fanout() { # name MiB
  local name=$1 mib=$2 i pids=()
  for i in 1 2 3 4 5; do
    mkdir -p "$root/$name/n$i"
    five_config "$name" "$i" "$root/$name/n$i"
  done
  gen_big "$root/$name/n1/movie.bin" "$mib" 7
  sync
  for i in 2 3 4 5; do
    "$bin" --daemon -q --config "$root/$name-n$i.toml" &
    pids+=($!)
  done
  sleep 1
  "$bin" --daemon -v --config "$root/$name-n1.toml" 2> "$root/$name-n1.log" &
  local holder=$!
  pids+=($holder)
  local want=$((mib * 1048576)) done
  for _ in $(seq 1 600); do
    done=1
    for i in 2 3 4 5; do
      [ "$(stat -c %s "$root/$name/n$i/movie.bin" 2>/dev/null || echo 0)" = "$want" ] || done=0
    done
    [ $done = 1 ] && break
    sleep 0.1
  done
  # Let the session end so the holder logs its counter.
  for _ in $(seq 1 100); do grep -q 'session done' "$root/$name-n1.log" && break; sleep 0.1; done
  local rchar reported
  rchar=$(awk '/^rchar/ {print $2}' "/proc/$holder/io")
  for p in "${pids[@]}"; do kill "$p"; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  reported=$(grep -o 'read [0-9]* bytes' "$root/$name-n1.log" | awk '{s += $2} END {print s + 0}')
  printf '%-28s %d MiB to 4 nodes: holder read %s bytes (its counter); rchar %s\n' "$name" "$mib" "$reported" "$rchar"
  json_rows+=("{\"scenario\":\"$name\",\"file_bytes\":$want,\"holder_read_bytes\":$reported,\"holder_rchar\":$rchar}")
  base=$((base + 6))
}

# A file present on both nodes, changed on A, sent as a delta to B. Both run as daemons so
# that A's sockets can be inspected once B has converged: the kernel's per-socket counters
# (ss -ti: bytes_sent, bytes_received of A's connections) next to A's own count (its
# "network so far" log line).
run_delta() { # name MiB overwrite|insert
  local name=$1 mib=$2 kind=$3
  mkdir -p "$root/$name/a" "$root/$name/b"
  config "a-$name" $((base + 1)) $((base + 2)) "$root/$name/a"
  config "b-$name" $((base + 2)) $((base + 1)) "$root/$name/b"
  gen_big "$root/$name/b/disk.img" "$mib" 3
  touch -d '2020-01-01' "$root/$name/b/disk.img"
  if [ "$kind" = overwrite ]; then
    # 1 MiB at a non-aligned offset in the middle.
    cp "$root/$name/b/disk.img" "$root/$name/a/disk.img"
    head -c 1048576 /dev/zero | tr '\0' 'x' |
      dd of="$root/$name/a/disk.img" bs=1M seek=$((mib * 524288 + 12345)) oflag=seek_bytes conv=notrunc status=none
  else
    # 100 bytes inserted at offset 4096.
    { head -c 4096 "$root/$name/b/disk.img"; head -c 100 /dev/zero | tr '\0' 'y';
      tail -c +4097 "$root/$name/b/disk.img"; } > "$root/$name/a/disk.img"
  fi
  touch -d '2021-01-01' "$root/$name/a/disk.img"
  sync
  "$bin" --daemon -q --config "$root/b-$name.toml" &
  local bpid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((base + 2))") 2>/dev/null && break
    sleep 0.05
  done
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" --daemon --config "$root/a-$name.toml" 2> "$root/a.log" &
  local apid=$!
  for _ in $(seq 1 1200); do
    cmp -s "$root/$name/a/disk.img" "$root/$name/b/disk.img" && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  for _ in $(seq 1 100); do grep -q 'network so far' "$root/a.log" && break; sleep 0.05; done
  local kernel
  kernel=$(ss -tinpH state established | awk -v pid="pid=$apid," '
    index($0, pid) { mine = 1; next }
    mine { for (i = 1; i <= NF; i++) { split($i, kv, ":");
             if (kv[1] == "bytes_sent") s += kv[2]; if (kv[1] == "bytes_received") r += kv[2] }
           mine = 0 }
    END { print s + 0, r + 0 }')
  kill "$apid" "$bpid"; wait "$apid" "$bpid" || true
  if ! cmp -s "$root/$name/a/disk.img" "$root/$name/b/disk.img"; then
    echo "bench: $name did not converge" >&2; exit 1
  fi
  local sent received wall
  read -r sent received < <(grep 'network so far' "$root/a.log" | tail -1 | sed 's/.*sent \([0-9]*\) bytes, received \([0-9]*\) bytes.*/\1 \2/')
  wall=$(echo "$t1 - $t0" | bc)
  local ksent krecv
  read -r ksent krecv <<< "$kernel"
  printf '%-28s %10.2f   %s MiB file: %d bytes on the wire = %.3f MiB (A sent %d, received %d; kernel sockets: %d, %d)\n' \
    "$name" "$wall" "$mib" $((sent + received)) "$(echo "($sent + $received) / 1048576" | bc -l)" "$sent" "$received" "$ksent" "$krecv"
  json_rows+=("{\"scenario\":\"$name\",\"wall_s\":$wall,\"file_mib\":$mib,\"wire_sent\":$sent,\"wire_received\":$received,\"kernel_bytes_sent\":$ksent,\"kernel_bytes_received\":$krecv}")
  base=$((base + 3))
}

# Signature + delta throughput over an unchanged file (in-process, release build).
run_delta_speed() { # MiB
  gen_big "$root/speed.bin" "$1" 9
  local line
  local out
  out=$(IC_DELTA_FILE="$root/speed.bin" IC_DELTA_MIB="$(( $1 < 256 ? $1 : 256 ))" cargo test -q --release --test delta_speed -- --ignored --nocapture --test-threads 1 2>/dev/null)
  # The test harness prints progress dots on the same lines: take the labelled parts.
  line=$(grep -o 'delta-speed: .*' <<< "$out")
  local nomatch
  nomatch=$(grep -o 'delta-speed-nomatch: .*' <<< "$out")
  printf '%-28s %s\n' delta-speed "${line#delta-speed: }" delta-speed-nomatch "${nomatch#delta-speed-nomatch: }"
  json_rows+=("{\"scenario\":\"delta-speed\",\"result\":\"${line#delta-speed: }\",\"no_match\":\"${nomatch#delta-speed-nomatch: }\"}")
  rm -f "$root/speed.bin"
}

echo "bench: $(nproc) cores, $(uname -m), preset $preset, binary $(stat -c %s "$bin") bytes" >&2
mkdir -p "$root/small-files/a" "$root/small-files/b" "$root/big-files/a" "$root/big-files/b"
gen_small "$root/small-files/a" "$n_small" 1
for i in $(seq 1 "$n_big"); do gen_big "$root/big-files/a/big$i.bin" "$big_mib" "$i"; done
sync

run_scenario small-files
run_scenario big-files
run_five five-nodes "$n_five"
run_fanout fan-out "$fan_mib"
run_delta delta-overwrite "$delta_big" overwrite
run_delta delta-insert "$delta_small" insert
run_delta_speed "$speed_mib"

{
  echo "{\"cores\":$(nproc),\"preset\":\"$preset\",\"scenarios\":["
  (IFS=,; echo "${json_rows[*]}")
  echo "]}"
} > "$results"
echo "bench: results in $results" >&2
