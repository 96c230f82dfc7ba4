#!/usr/bin/env bash
# Installs, idempotently, what builds and tests need beyond rustup's toolchain:
#   deps  — system packages the test suite uses (iproute2 for network namespaces, procps,
#           the linter of the shell scripts, shellcheck, BusyBox for the init-script test,
#           GNU time for cross/qemu-rss.sh, python3 for the mDNS flood of tests/discovery.rs,
#           util-linux's setpriv/prlimit/losetup and FAT/exFAT tools for tests/faults.rs and
#           tests/names.rs: a case-folding storage, a daemon out of descriptors)
#   host  — Debian's rustc-web/cargo-web 1.85, the MSRV toolchain, as /usr/bin/{rustc,cargo}
#   cross — host, plus what `make cross-test` and `make dist` need to build for and run on
#           every target of cross/env.sh without Docker:
#           - glibc armv7 (Debian armhf) and aarch64 (Debian arm64): the 1.85 standard
#             library of both architectures (multiarch libstd-rust-web-dev), their C cross
#             compilers (linkers, and bundled SQLite's C compiler), their C libraries (so
#             qemu finds the dynamic loader at /lib/ld-linux-*.so without -L);
#           - static musl for ARMv6/ARMv7/AArch64/x86_64/MIPS: the standard library's source
#             (rust-web-src 1.85, for -Zbuild-std) and zig with cargo-zigbuild, both from
#             PyPI at pinned versions, in a virtual environment ($ZIG_VENV of cross/env.sh);
#           - qemu-user-static for all of them.
# Versions are pinned so every machine checks against the same compiler; the Rust standard
# library must be the same version for every architecture as rustc itself. The apt index is
# refreshed once more if the first attempt fails (a mirror in the middle of a sync).
set -euo pipefail

RUST_DEB_VERSION="1.85.0+dfsg3-1~deb12u3"
# Multiarch packages ("Multi-Arch: same", e.g. libc6, liblzma5) must have the same version on
# every architecture. Resolving everything from this one suite keeps them in step even when
# another suite (bookworm-security) has an index for amd64 but not, or not yet, for armhf.
CROSS_SUITE="bookworm"
CROSS_ARCHES=(armhf arm64)
# zig links the musl targets; cargo-zigbuild drives it. Pinned: a newer zig may change its
# musl or its linker flags under us.
ZIGLANG_VERSION="0.13.0.post1"
CARGO_ZIGBUILD_VERSION="0.19.8"
# shellcheck source=cross/env.sh
. "$(dirname "$0")/env.sh"

die() {
  echo "toolchain.sh: $*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || die "need root to install: $*"
}

# Refreshes the apt index; once more after a pause if the first attempt fails. A suite that
# still fails is only a warning: the packages may well come from the others.
apt_update() {
  if ! apt-get update -qq; then
    echo "toolchain.sh: apt-get update failed (mirror mid-sync?); retrying once in 5 s" >&2
    sleep 5
    apt-get update -qq ||
      echo "toolchain.sh: warning: apt-get update failed twice; using the index as it is" >&2
  fi
}

# apt_install [apt options --] PACKAGE... — installs, refreshing the index first if the
# install fails (an index too old to know the pinned versions).
apt_install() {
  local opts=()
  if [ "${1:-}" = "-t" ]; then
    opts=(-t "$2")
    shift 3
  fi
  need_root "$*"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-remove --allow-downgrades "${opts[@]}" "$@" >/dev/null 2>&1; then
    apt_update
    apt-get install -y -qq --no-remove --allow-downgrades "${opts[@]}" "$@" >/dev/null ||
      die "could not install: $* (see the apt messages above)"
  fi
}

# Whether package $1 (name[:arch]) is installed, at version $2 if given.
installed() {
  local v
  v=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null) || return 1
  if [ -n "${2:-}" ]; then
    [ "$v" = "installed $2" ]
  else
    [ "${v%% *}" = installed ]
  fi
}

have_msrv() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] &&
    /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.85\.' &&
    /usr/bin/cargo --version 2>/dev/null | grep -q '^cargo 1\.85\.'
}

install_host() {
  if ! have_msrv; then
    apt_install "rustc-web=$RUST_DEB_VERSION" "cargo-web=$RUST_DEB_VERSION" \
      "libstd-rust-web-dev=$RUST_DEB_VERSION"
  fi
  have_msrv || die "Rust 1.85 not available as /usr/bin/rustc"
}

# The Rust target each Debian architecture's libstd-rust-web-dev provides.
rust_target() {
  case "$1" in
    armhf) echo armv7-unknown-linux-gnueabihf ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
  esac
}

have_cross() {
  local a libdir
  command -v arm-linux-gnueabihf-gcc >/dev/null || return 1
  command -v aarch64-linux-gnu-gcc >/dev/null || return 1
  command -v qemu-arm-static >/dev/null || return 1
  command -v qemu-aarch64-static >/dev/null || return 1
  [ -e /lib/ld-linux-armhf.so.3 ] || return 1
  [ -e /lib/ld-linux-aarch64.so.1 ] || return 1
  for a in "${CROSS_ARCHES[@]}"; do
    installed "libstd-rust-web-dev:$a" "$RUST_DEB_VERSION" || return 1
    libdir=$(/usr/bin/rustc --print target-libdir --target "$(rust_target "$a")" 2>/dev/null) ||
      return 1
    compgen -G "$libdir/libstd-*.rlib" >/dev/null || return 1
  done
}

have_zig() {
  [ -f /usr/lib/rustlib/src/rust/library/Cargo.lock ] || return 1
  installed rust-web-src "$RUST_DEB_VERSION" || return 1
  command -v qemu-mipsel-static >/dev/null || return 1
  command -v qemu-mips-static >/dev/null || return 1
  command -v mipsel-linux-gnu-strip >/dev/null || return 1
  command -v mips-linux-gnu-strip >/dev/null || return 1
  [ -x "$ZIG_VENV/bin/cargo-zigbuild" ] || return 1
  "$ZIG_VENV/bin/python3" -m ziglang version 2>/dev/null | grep -q '^0\.13\.0$' || return 1
  "$ZIG_VENV/bin/cargo-zigbuild" --version 2>/dev/null | grep -q " ${CARGO_ZIGBUILD_VERSION}\$"
}

install_zig() {
  have_zig && return 0
  installed rust-web-src "$RUST_DEB_VERSION" || apt_install "rust-web-src=$RUST_DEB_VERSION"
  # zig links and strips, but leaves MIPS's .pdr sections (286 KB of a mipsel binary) that
  # only a MIPS-aware strip removes (cross/dist.sh).
  command -v mipsel-linux-gnu-strip >/dev/null || apt_install binutils-mipsel-linux-gnu
  command -v mips-linux-gnu-strip >/dev/null || apt_install binutils-mips-linux-gnu
  local py
  py=$(command -v python3) || die "python3 is needed for zig (apt-get install python3)"
  if [ ! -x "$ZIG_VENV/bin/pip" ]; then
    rm -rf "$ZIG_VENV"
    mkdir -p "$(dirname "$ZIG_VENV")"
    if ! "$py" -m venv "$ZIG_VENV"; then
      # Debian's python3 keeps venv in a package of its own.
      apt_install python3-venv
      rm -rf "$ZIG_VENV"
      /usr/bin/python3 -m venv "$ZIG_VENV" || die "cannot create a Python venv at $ZIG_VENV"
    fi
  fi
  "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" ||
    die "pip could not install ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION"
  have_zig || die "zig toolchain incomplete: want rust-web-src $RUST_DEB_VERSION, \
qemu-mips(el)-static, zig 0.13.0 and cargo-zigbuild $CARGO_ZIGBUILD_VERSION in $ZIG_VENV"
}

install_cross() {
  install_host
  install_debian_cross
  install_zig
}

install_debian_cross() {
  have_cross && return 0
  need_root "the armhf/arm64 cross toolchain"
  local a added=0 host_libc pkgs=()
  for a in "${CROSS_ARCHES[@]}"; do
    if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
      dpkg --add-architecture "$a"
      added=1
    fi
  done
  # A new architecture has no index yet: refresh before the first install attempt.
  if [ "$added" = 1 ]; then apt_update; fi
  host_libc=$(dpkg-query -W -f='${Version}' "libc6:$(dpkg --print-architecture)")
  for a in "${CROSS_ARCHES[@]}"; do
    pkgs+=("libstd-rust-web-dev:$a=$RUST_DEB_VERSION" "libc6:$a=$host_libc")
  done
  pkgs+=(gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu qemu-user-static)
  apt_install -t "$CROSS_SUITE" -- "${pkgs[@]}"
  have_cross || die "the cross toolchain is incomplete after installing: ${pkgs[*]}
  (want arm-linux-gnueabihf-gcc, aarch64-linux-gnu-gcc, qemu-arm-static, qemu-aarch64-static,
  /lib/ld-linux-armhf.so.3, /lib/ld-linux-aarch64.so.1 and the 1.85 std for both targets)"
}

case "${1:-}" in
  deps)
    missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v pkill >/dev/null || missing+=(procps)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    command -v busybox >/dev/null || missing+=(busybox)
    # tests/discovery.rs floods mDNS from a small Python script.
    command -v python3 >/dev/null || missing+=(python3)
    [ -x /usr/bin/time ] || missing+=(time)
    # tests/faults.rs and tests/names.rs: an unprivileged daemon, few descriptors, and a
    # storage on FAT or exFAT (kernel module, or exfat-fuse where the kernel has neither).
    command -v setpriv >/dev/null || missing+=(util-linux)
    command -v losetup >/dev/null || missing+=(mount)
    command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
    command -v mkfs.exfat >/dev/null || missing+=(exfatprogs)
    command -v mount.exfat-fuse >/dev/null || missing+=(exfat-fuse)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
    ;;
  host)
    install_host
    ;;
  cross)
    install_cross
    ;;
  *)
    echo "usage: $0 deps|host|cross" >&2
    exit 2
    ;;
esac
