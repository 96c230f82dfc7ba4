#!/usr/bin/env bash
# make demo: three nodes on 127.0.0.1 synchronizing temporary folders, with nothing to
# configure. "beta" runs as a daemon; "alpha" and then "gamma" (empty) are one-shot runs
# against it. Prints the folders before and after, and checks they converged.
set -euo pipefail

bin=${1:-target/release/iron-carrier}
bin=$(realpath "$bin")
work=$(mktemp -d /tmp/iron-carrier-demo.XXXXXX)
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
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

echo "== before"
listing
echo

echo "== starting beta as a daemon on 127.0.0.1:$((base + 2))"
"$bin" --daemon -q --config "$work/beta.toml" &
daemon_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$((base + 2))") 2>/dev/null && break
  sleep 0.1
done

echo "== alpha: one-shot sync with beta"
"$bin" -q --config "$work/alpha.toml"
echo "== gamma (empty): one-shot sync with beta"
"$bin" -q --config "$work/gamma.toml"
echo

echo "== after"
listing
echo

ok=1
for n in alpha gamma; do
  if ! diff -r -x '*.db*' -x '*.tmp' -x '.ignore' "$work/beta" "$work/$n" >/dev/null; then
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
