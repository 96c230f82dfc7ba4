#!/usr/bin/env bash
# Installs, idempotently, what builds and tests need beyond rustup's toolchain:
#   deps  — system packages the test suite uses (iproute2 for network namespaces, procps)
#   host  — Debian's rustc-web/cargo-web 1.85, the MSRV toolchain, as /usr/bin/{rustc,cargo}
# Versions are pinned so every machine checks against the same compiler. The apt index is
# refreshed once more if the first attempt fails (a mirror in the middle of a sync).
set -euo pipefail

RUST_DEB_VERSION="1.85.0+dfsg3-1~deb12u3"

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "toolchain.sh: need root to install: $*" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --allow-downgrades "$@" >/dev/null 2>&1; then
    apt-get update -qq || { sleep 5; apt-get update -qq; }
    apt-get install -y -qq --allow-downgrades "$@" >/dev/null
  fi
}

have_msrv() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] &&
    /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.85\.' &&
    /usr/bin/cargo --version 2>/dev/null | grep -q '^cargo 1\.85\.'
}

case "${1:-}" in
  deps)
    missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v pkill >/dev/null || missing+=(procps)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
    ;;
  host)
    if ! have_msrv; then
      apt_install "rustc-web=$RUST_DEB_VERSION" "cargo-web=$RUST_DEB_VERSION" \
        "libstd-rust-web-dev=$RUST_DEB_VERSION"
    fi
    have_msrv || { echo "toolchain.sh: Rust 1.85 not available as /usr/bin/rustc" >&2; exit 1; }
    ;;
  *)
    echo "usage: $0 deps|host" >&2
    exit 2
    ;;
esac
