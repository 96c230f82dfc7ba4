#!/usr/bin/env bash
# `make dist-src`: the source release archive target/dist/iron-carrier-<version>.tar.gz: the
# committed tree at HEAD plus every crate of Cargo.lock vendored into VENDOR/ and a
# .cargo/config.toml that points cargo at it, so `cargo build --release --locked --offline`
# needs no network. Buildroot's download step leaves an archive that already holds
# <top>/VENDOR as it is, so this is what its hash line in
# buildroot/package/iron-carrier/iron-carrier.hash is about.
#
#   cross/dist-src.sh                 write the archive, print its sha256 and size
#   cross/dist-src.sh --check         also: does the hash line match this archive? (exit 1 if not)
#   cross/dist-src.sh --update-hash   also: rewrite the hash line to this archive's hash
#
# Reproducible: the same commit (and the same cargo and gzip) gives the same bytes. Every
# entry has the time of the last commit that changed what the archive holds, owner 0/0, a
# normalized mode, sorted names; gzip -n leaves out name and time.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=""
case "${1:-}" in
  '') ;;
  --check) mode=check ;;
  --update-hash) mode=update ;;
  *)
    echo "usage: $0 [--check | --update-hash]" >&2
    exit 2
    ;;
esac

git rev-parse --verify -q HEAD >/dev/null || {
  echo "dist-src: needs the git repository: the archive is made of its HEAD commit" >&2
  exit 1
}

hash_file=buildroot/package/iron-carrier/iron-carrier.hash
# Left out: the hash file (it holds this archive's hash: it cannot be inside it), and the
# fuzzing and CI setups (fuzz/ has a Cargo.lock of its own that is not vendored).
excluded=("$hash_file" fuzz .ci)

# The version of the commit archived, not of the work tree.
version=$(git show HEAD:Cargo.toml |
  awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }')
[ -n "$version" ] || { echo "dist-src: no version in Cargo.toml's [package]" >&2; exit 1; }
name=iron-carrier-$version
out=target/dist/$name.tar.gz

pathspec=(.)
for e in "${excluded[@]}"; do
  pathspec+=(":(exclude)$e")
done
# The commit time of HEAD would change with a commit that only refreshes the hash line,
# making that line stale at once; the last commit that changed the archive's files does not.
epoch=$(git log -1 --format=%ct HEAD -- "${pathspec[@]}")
commit=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- "${pathspec[@]}"; then
  echo "dist-src: note: uncommitted changes are not in the archive (it is made of $commit)" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 022

git archive --format=tar --prefix="$name/" HEAD | tar -x -C "$tmp"
for e in "${excluded[@]}"; do
  rm -rf "${tmp:?}/$name/$e"
done

# Buildroot's cargo-post-process vendors with these very options into VENDOR/, and the
# package's pre-build hook looks for that folder: the same name keeps both paths alike.
# Vendoring keeps every platform's crates (windows-*): `--locked` resolves the whole lock
# file, so a crate left out would fail the offline build.
mkdir -p "$tmp/$name/.cargo"
# (Its stdout is that config; --quiet would empty it too.) It is appended to the tree's own
# .cargo/config.toml, whose [env] (the SQLite build flags) the archive's builds need too.
if ! (cd "$tmp/$name" && cargo vendor --locked VENDOR >"$tmp/vendor.toml" 2>"$tmp/vendor.log"); then
  cat "$tmp/vendor.log" >&2
  exit 1
fi
grep -q '^directory = "VENDOR"$' "$tmp/vendor.toml" || {
  echo "dist-src: cargo vendor wrote no source replacement:" >&2
  cat "$tmp/vendor.toml" >&2
  exit 1
}
{
  echo
  cat "$tmp/vendor.toml"
} >>"$tmp/$name/.cargo/config.toml"

mkdir -p target/dist
# --mode: the executable bit as the files had it, everything else fixed, so the umask of
# whoever runs this does not show in the archive.
LC_ALL=C tar --sort=name --format=gnu --mtime="@$epoch" \
  --owner=0 --group=0 --numeric-owner --mode='u=rwX,go=rX' \
  -C "$tmp" -cf - "$name" | gzip -9 -n >"$tmp/out.tar.gz"
mv -f "$tmp/out.tar.gz" "$out"

sum=$(sha256sum "$out" | cut -d' ' -f1)
size=$(stat -c %s "$out")
echo "$out ($commit, $size bytes)"
echo "sha256  $sum  $name.tar.gz"

line="sha256  $sum  $name.tar.gz"
case "$mode" in
  check)
    if grep -qxF "$line" "$hash_file"; then
      echo "$hash_file: up to date"
    else
      echo "$hash_file: stale, its line for $name.tar.gz is:" >&2
      grep -F "  $name.tar.gz" "$hash_file" >&2 || echo "  (none)" >&2
      echo "refresh it with: cross/dist-src.sh --update-hash" >&2
      exit 1
    fi
    ;;
  update)
    # Every other line (the license's, the comments) stays as it is.
    grep -vE '^sha256 +[0-9a-f]{64} +iron-carrier-.*\.tar\.gz$' "$hash_file" >"$tmp/hash"
    echo "$line" >>"$tmp/hash"
    cat "$tmp/hash" >"$hash_file"
    echo "$hash_file: updated; commit it on its own (the archive leaves it out)"
    ;;
esac
