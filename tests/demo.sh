#!/usr/bin/env bash
# make demo: three nodes on 127.0.0.1 synchronizing temporary folders, with nothing to
# configure. "beta" runs as a daemon; "alpha" and then "gamma" (empty) are one-shot runs
# against it. Prints the folders before and after, and checks they converged. Then gamma
# runs as a daemon too, a file saved on beta reaches it through the watcher, and beta is
# asked what it is doing (iron-carrier status).
set -euo pipefail

bin=${1:-target/release/iron-carrier}
bin=$(realpath "$bin")
work=$(mktemp -d /tmp/iron-carrier-demo.XXXXXX)
daemon_pid=
gamma_pid=
started_pid=
cleanup() {
  for p in $daemon_pid $gamma_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Ports below the ephemeral range, picked from the pid so two demos rarely collide.
base=$((21000 + ($$ % 400) * 10))
mkdir -p "$work"/{alpha,beta,gamma}

config() { # name port peer-port
  cat > "$work/$1.toml" <<EOF
node_id = "$1"
port = $2
listen_address = "127.0.0.1"
peers = ["127.0.0.1:$3"]
enable_service_discovery = false
encryption = false
delay_watcher_events = 1
log_path = "$work/$1.db"

[storages]
photos = "$work/$1"
EOF
}
config alpha $((base + 1)) $((base + 2))
config beta $((base + 2)) $((base + 1))
config gamma $((base + 3)) $((base + 2))

# Sample content: some files only on one side, one edited on both (beta's edit is newer).
mkdir -p "$work/alpha/2024/summer" "$work/beta/2025/winter" "$work/beta/empty album"
echo "beach, day 1" > "$work/alpha/2024/summer/beach.txt"
head -c 2000000 /dev/urandom > "$work/alpha/2024/summer/panorama.raw"
echo "snow" > "$work/beta/2025/winter/snow.txt"
echo "captions, first draft" > "$work/alpha/captions.txt"
touch -d '2 hours ago' "$work/alpha/captions.txt"
echo "captions, second draft (newer)" > "$work/beta/captions.txt"
printf '*.tmp\n' > "$work/alpha/.ignore"
echo "scratch, never synchronized" > "$work/alpha/edit.tmp"

listing() {
  for n in alpha beta gamma; do
    echo "  $n/"
    (cd "$work/$n" && find . -mindepth 1 -not -name '*.db*' | sort | sed 's|^\./|    |')
  done
}

# Starts node $1 as a daemon on port $2 and waits until it accepts connections.
start_daemon() { # name port
  "$bin" --daemon -q --config "$work/$1.toml" &
  started_pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && break
    sleep 0.1
  done
}

echo "== before"
listing
echo

echo "== starting beta as a daemon on 127.0.0.1:$((base + 2))"
start_daemon beta $((base + 2))
daemon_pid=$started_pid

# One-shot runs as a person would start them: a progress line per storage on stderr (plain
# lines here, as stderr is not a terminal when piped), then the summary.
echo "== alpha: one-shot sync with beta"
"$bin" --config "$work/alpha.toml"
echo "== gamma (empty): one-shot sync with beta"
"$bin" --config "$work/gamma.toml"
echo

echo "== after"
listing
echo

ok=1
for n in alpha gamma; do
  # Each node's storage marker holds its own id: never synchronized, never the same.
  if ! diff -r -x '*.db*' -x '*.tmp' -x '.ignore' -x '.iron-carrier.storage' "$work/beta" "$work/$n" >/dev/null; then
    ok=0
    echo "!! $n differs from beta"
  fi
done
if [ "$(cat "$work/alpha/captions.txt")" != "captions, second draft (newer)" ]; then
  ok=0
  echo "!! the newer edit did not win"
fi
if [ -e "$work/beta/edit.tmp" ]; then
  ok=0
  echo "!! an ignored file was synchronized"
fi
if [ $ok = 1 ]; then
  echo "demo: all three folders hold the same files; the newer edit won; ignored files stayed put."
else
  echo "demo: FAILED"
  exit 1
fi
echo

echo "== gamma as a daemon too; a file saved on beta (delay_watcher_events = 1)"
start_daemon gamma $((base + 3))
gamma_pid=$started_pid
# The two daemons synchronize once on connecting; the note is written after that settles.
sleep 3
echo "written on beta at $(date +%T.%N | cut -c1-12)" > "$work/beta/note.txt"
saved=$(date +%s%N)
arrived=
for _ in $(seq 1 300); do
  if [ -s "$work/gamma/note.txt" ]; then arrived=$(date +%s%N); break; fi
  sleep 0.05
done
if [ -n "$arrived" ]; then
  echo "  gamma has it after $(((arrived - saved) / 1000000)) ms: $(cat "$work/gamma/note.txt")"
  echo "demo: the watcher carried a saved file to the other daemon."
else
  echo "demo: FAILED"
  exit 1
fi
echo

echo "== iron-carrier status, asked of the beta daemon"
"$bin" status --config "$work/beta.toml"
