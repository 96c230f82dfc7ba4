#!/usr/bin/env bash
# make demo: shows the main job on loopback. Synchronization between nodes has not landed yet,
# so for now this validates a generated config and says what is missing.
set -euo pipefail
bin=${1:-target/release/iron-carrier}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/a"
printf '[storages]\ndocs = "%s/a"\n' "$tmp" > "$tmp/a.toml"
"$bin" check-config --config "$tmp/a.toml"
echo
echo "demo: not yet — node-to-node synchronization is the next issue; the config above is what a node would use."
