#!/usr/bin/env bash
# `make package-dry-run`: installs BINARY the way the Buildroot and OpenWrt packages do, into
# scratch root trees, and checks what lands there, without a Buildroot or OpenWrt tree.
#
#   cross/package-dry-run.sh BINARY [TARGET_TRIPLE]
#
# TARGET_TRIPLE defaults to the one in BINARY's name (target/dist/iron-carrier-<triple> of
# `make dist`), else this host's. The install steps are not copied here: the real
# IRON_CARRIER_INSTALL_TARGET_CMDS, _INSTALL_INIT_SYSV and _INSTALL_INIT_SYSTEMD of
# iron-carrier.mk and Package/iron-carrier/install of the OpenWrt Makefile run, through make,
# with stubs for what Buildroot and OpenWrt define around them (INSTALL_CONF & co. as in
# OpenWrt's rules.mk). Then, per tree: the file list and modes, the staged binary identical
# to BINARY and of the triple's architecture, the paths the init scripts and the unit name
# present, and the shipped config through the staged binary's `check-config` (natively, or
# under qemu-<arch>-static; skipped, saying so, when neither can run it).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

usage() {
  echo "usage: $0 BINARY [TARGET_TRIPLE]" >&2
  exit 2
}
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
binary=$1
[ -f "$binary" ] || { echo "package-dry-run: $binary: no such file (make release?)" >&2; exit 2; }
binary=$(realpath "$binary")

if [ $# -eq 2 ]; then
  triple=$2
else
  case "$(basename "$binary")" in
    iron-carrier-*-linux-*) triple=$(basename "$binary") triple=${triple#iron-carrier-} ;;
    *) triple=$(uname -m)-unknown-linux-gnu ;;
  esac
fi

# What the ELF header of a binary for the triple says: class (1: 32-bit, 2: 64-bit), byte
# order (1: little, 2: big endian), e_machine; and which qemu-user runs it.
case "$triple" in
  x86_64-unknown-linux-gnu | x86_64-unknown-linux-musl) elf="2 1 62" qemu=x86_64 ;;
  aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl) elf="2 1 183" qemu=aarch64 ;;
  arm-unknown-linux-gnueabihf | arm-unknown-linux-musleabihf | \
    armv7-unknown-linux-gnueabihf | armv7-unknown-linux-musleabihf) elf="1 1 40" qemu=arm ;;
  mipsel-unknown-linux-musl) elf="1 1 8" qemu=mipsel ;;
  mips-unknown-linux-musl) elf="1 2 8" qemu=mips ;;
  *)
    echo "package-dry-run: unknown target $triple" >&2
    exit 2
    ;;
esac

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
ok() { echo "ok: $*"; }

read -r class data m0 m1 <<<"$(od -An -tu1 -j4 -N2 "$binary") $(od -An -tu1 -j18 -N2 "$binary")"
if [ "$data" = 1 ]; then machine=$((m0 + 256 * m1)); else machine=$((m0 * 256 + m1)); fi
if [ "$class $data $machine" = "$elf" ]; then
  ok "$binary is an ELF binary for $triple"
else
  fail "$binary: ELF class/byte order/machine $class $data $machine, $triple wants $elf"
fi

# How to run a binary of the triple here, or why it cannot be.
runner=()
skip_run=""
if [ "$qemu" = "$(uname -m)" ]; then
  :
elif command -v "qemu-$qemu-static" >/dev/null; then
  runner=("qemu-$qemu-static")
  case "$triple" in
    *-gnu*)
      # A glibc binary needs the target's loader and libc: Debian's cross libc packages.
      case "$qemu" in
        arm) sysroot=/usr/arm-linux-gnueabihf ;;
        *) sysroot=/usr/$qemu-linux-gnu ;;
      esac
      if [ -d "$sysroot" ]; then
        runner+=(-L "$sysroot")
      else
        skip_run="no $sysroot for qemu-$qemu-static to load a glibc binary from"
      fi
      ;;
  esac
else
  skip_run="qemu-$qemu-static is not installed"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Buildroot ---------------------------------------------------------------------------
# A fake package build dir: the binary where the .mk expects cargo to have put it.
br_pkgdir=$PWD/buildroot/package/iron-carrier
br_build=$tmp/br-build
mkdir -p "$br_build/target/$triple/release"
cp "$binary" "$br_build/target/$triple/release/iron-carrier"
cat >"$tmp/br.mk" <<'EOF'
# What Buildroot defines around a package .mk, as far as its install steps use it.
qstrip = $(strip $(subst ",,$(1)))
cargo-package =
include $(PKG_MK)
$(BUILD)/stamp:
	$(IRON_CARRIER_INSTALL_TARGET_CMDS)
	$($(INIT_CMDS))
EOF
for init in SYSV SYSTEMD; do
  root=$tmp/br-$init
  mkdir -p "$root"
  make -s -f "$tmp/br.mk" PKG_MK="$br_pkgdir/iron-carrier.mk" BUILD="$br_build" \
    INSTALL=install TARGET_DIR="$root" IRON_CARRIER_PKGDIR="$br_pkgdir/" \
    RUSTC_TARGET_NAME="$triple" INIT_CMDS="IRON_CARRIER_INSTALL_INIT_$init" "$br_build/stamp"
done

# --- OpenWrt -----------------------------------------------------------------------------
top=$tmp/owrt-top
mkdir -p "$top/include" "$top/feeds/packages/lang/rust" "$tmp/owrt-install/bin"
cp "$binary" "$tmp/owrt-install/bin/iron-carrier"
cat >"$top/rules.mk" <<'EOF'
# OpenWrt's rules.mk, as far as the package's install step uses it.
INCLUDE_DIR:=$(TOPDIR)/include
INSTALL_BIN:=install -m0755
INSTALL_DIR:=install -d -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
EOF
printf 'define BuildPackage\nendef\n' >"$top/include/package.mk"
: >"$top/feeds/packages/lang/rust/rust-package.mk"
cat >"$tmp/owrt.mk" <<'EOF'
ic-dry-run:
	$(call Package/iron-carrier/install,$(STAGE))
	$(file >$(OUT)/postinst,$(Package/iron-carrier/postinst))
	$(file >$(OUT)/conffiles,$(Package/iron-carrier/conffiles))
EOF
owrt=$tmp/owrt
mkdir -p "$owrt"
make -s -C openwrt/iron-carrier -f Makefile -f "$tmp/owrt.mk" TOPDIR="$top" \
  PKG_INSTALL_DIR="$tmp/owrt-install" STAGE="$owrt" OUT="$tmp" ic-dry-run

# --- Checks ------------------------------------------------------------------------------
# Every file and directory with its mode. The intermediate directories come from
# `install -D` here; on a device the skeleton already has them.
listing() {
  (cd "$1" && find . -mindepth 1 -printf '%y %m %P\n' | LC_ALL=C sort)
}

check_tree() { # NAME ROOT EXPECTED-LISTING
  if [ "$(listing "$2")" = "$3" ]; then
    ok "$1: files and modes as expected"
  else
    fail "$1: files or modes differ (- expected, + staged):"
    diff <(echo "$3") <(listing "$2") | sed -n 's/^[<>]/  &/p' | sed 's/^  </  -/; s/^  >/  +/'
  fi
  if cmp -s "$binary" "$2/usr/bin/iron-carrier"; then
    ok "$1: /usr/bin/iron-carrier is BINARY"
  else
    fail "$1: /usr/bin/iron-carrier is not BINARY"
  fi
}

# Paths a script or unit names must exist in the tree it ships in.
check_paths() { # NAME ROOT PATH...
  local name=$1 root=$2 p
  shift 2
  for p in "$@"; do
    if [ -e "$root$p" ]; then ok "$name: $p is there"; else fail "$name: $p is missing"; fi
  done
}

check_script() { # NAME FILE
  if [ -x "$2" ] && sh -n "$2"; then
    ok "$1: executable, parses"
  else
    fail "$1: not executable or does not parse"
  fi
}

# check-config on the shipped config with its absolute paths moved into the tree, as the
# device sees them; the staged binary runs it.
check_config() { # NAME ROOT
  local name=$1 root=$2 config=$tmp/$1.toml out
  if [ -n "$skip_run" ]; then
    echo "skipped: $name: check-config with the $triple binary: $skip_run"
    return
  fi
  sed -E '/^[[:space:]]*#/! s|"(/[^"]*)"|"'"$root"'\1"|g' "$root/etc/iron-carrier/config.toml" >"$config"
  # check-config also wants the port free: a daemon of this machine may hold the default.
  if (exec 3<>/dev/tcp/127.0.0.1/25230) 2>/dev/null; then
    sed -i '1i port = 25239' "$config"
  fi
  if out=$("${runner[@]}" "$root/usr/bin/iron-carrier" check-config --config "$config" 2>&1); then
    ok "$name: shipped config passes check-config${runner[*]:+ (under ${runner[*]})}"
  else
    fail "$name: check-config refuses the shipped config:"
    printf '  %s\n' "$out"
  fi
}

version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)
if [ -n "$skip_run" ]; then
  echo "skipped: running the $triple binary: $skip_run"
elif out=$("${runner[@]}" "$binary" --version 2>&1) && [ "$out" = "iron-carrier $version" ]; then
  ok "BINARY --version: $out${runner[*]:+ (under ${runner[*]})}"
else
  fail "BINARY --version: '$out', expected 'iron-carrier $version'"
fi

common="d 755 etc
d 755 etc/iron-carrier
f 644 etc/iron-carrier/config.toml
d 755 usr
d 755 usr/bin
f 755 usr/bin/iron-carrier
d 755 var
d 755 var/lib
d 755 var/lib/iron-carrier
d 755 var/lib/iron-carrier/data"

echo "== Buildroot, BusyBox init (INSTALL_TARGET_CMDS + INSTALL_INIT_SYSV)"
root=$tmp/br-SYSV
check_tree buildroot-sysv "$root" "$(LC_ALL=C sort <<EOF
$common
d 755 etc/default
f 644 etc/default/iron-carrier
d 755 etc/init.d
f 755 etc/init.d/S60iron-carrier
EOF
)"
check_script buildroot-sysv "$root/etc/init.d/S60iron-carrier"
# The script's defaults, as it computes them.
mapfile -t sysv_paths < <(DAEMON=iron-carrier sh -c '
  eval "$(grep -E "^(IRON_CARRIER_BIN|CONFIG|IRON_CARRIER_DIRS)=" "$1")"
  printf "%s\n" "$IRON_CARRIER_BIN" "$CONFIG" $IRON_CARRIER_DIRS' sh "$root/etc/init.d/S60iron-carrier")
check_paths buildroot-sysv "$root" "${sysv_paths[@]}"
check_config buildroot-sysv "$root"

echo "== Buildroot, systemd (INSTALL_TARGET_CMDS + INSTALL_INIT_SYSTEMD)"
root=$tmp/br-SYSTEMD
check_tree buildroot-systemd "$root" "$(LC_ALL=C sort <<EOF
$common
d 755 usr/lib
d 755 usr/lib/systemd
d 755 usr/lib/systemd/system
f 644 usr/lib/systemd/system/iron-carrier.service
EOF
)"
mapfile -t unit_paths < <(grep -E '^Exec' "$root/usr/lib/systemd/system/iron-carrier.service" |
  grep -oE '/usr/bin/iron-carrier|/etc/iron-carrier/[^ ]+' | sort -u)
check_paths buildroot-systemd "$root" "${unit_paths[@]}"
check_config buildroot-systemd "$root"

echo "== OpenWrt (Package/iron-carrier/install)"
check_tree openwrt "$owrt" "$(LC_ALL=C sort <<EOF
d 755 etc
d 755 etc/init.d
f 755 etc/init.d/iron-carrier
d 755 etc/iron-carrier
f 600 etc/iron-carrier/config.toml
d 755 etc/sysctl.d
f 644 etc/sysctl.d/30-iron-carrier.conf
d 755 srv
d 755 srv/iron-carrier
d 755 srv/iron-carrier/data
d 755 usr
d 755 usr/bin
f 755 usr/bin/iron-carrier
EOF
)"
check_script openwrt "$owrt/etc/init.d/iron-carrier"
mapfile -t procd_paths < <(sed -n 's/^\(PROG\|CONFIG\)=\(.*\)$/\2/p' "$owrt/etc/init.d/iron-carrier")
check_paths openwrt "$owrt" "${procd_paths[@]}"
mapfile -t conffiles < <(grep . "$tmp/conffiles")
check_paths openwrt-conffiles "$owrt" "${conffiles[@]}"
# The postinst in an image build (IPKG_INSTROOT set) must do nothing and succeed.
if IPKG_INSTROOT="$owrt" sh "$tmp/postinst"; then
  ok "openwrt: postinst succeeds in an image build"
else
  fail "openwrt: postinst fails with IPKG_INSTROOT set"
fi
check_config openwrt "$owrt"

if [ "$failures" -ne 0 ]; then
  echo "package-dry-run: $failures check(s) failed for $triple"
  exit 1
fi
echo "package-dry-run: all checks passed for $triple"
