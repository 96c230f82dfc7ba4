# shellcheck shell=bash
# Sourced by cross/cross-test.sh, cross/dist.sh and cross/qemu-rss.sh: how to build for, and
# run on, every target without Docker. `cross/toolchain.sh cross` installs all of it.
#
# One compiler, Debian's rustc-web 1.85 (/usr/bin/rustc, /usr/bin/cargo), two ways to link:
#   DEBIAN_TARGETS  glibc, dynamically linked: Debian's multiarch standard library of armhf
#                   and arm64, Debian's cross gcc as linker and C compiler.
#   ZIG_TARGETS     musl, static: the standard library built from Debian's rust-web-src by
#                   cargo itself (RUSTC_BOOTSTRAP=1, -Zbuild-std; cached in the target dir
#                   like any crate), zig (Python package `ziglang`) as C compiler and linker
#                   through cargo-zigbuild, with zig's own musl.
# musl targets are linked with -C link-self-contained=no: rustc would otherwise add its own
# crt objects, which Debian does not ship, next to zig's.
#
# Their release builds take the standard library without two default features and with one
# more (measured on the ARMv6 binary, 2,864,392 bytes before):
#   - no `backtrace`: the symbolizer (gimli, addr2line, miniz_oxide) had nothing to read in a
#     stripped binary anyway; a panic still prints its message and place. -154 KB together
#     with the next.
#   - no `panic-unwind`: the release profile aborts on panic.
#   - `optimize_for_size`: the small variants of sorting (merge sort and heap sort, still
#     n log n) and number formatting. -94 KB.
# The std_detect features stay as they are by default. Test builds keep the defaults: the
# harness needs unwinding.
#
# MIPS is built with -C relocation-model=static: Rust's MIPS musl targets default to
# static-pie, whose position-independent code loads every call's address from the GOT, while
# the other static targets are non-PIE already. -441 KB of 3.95 MB (mipsel).
#
#   target_env TARGET   exports, for TARGET (a Rust triple), only variables named after it
#   (so nothing leaks into the next target) plus RUSTC, RUSTC_BOOTSTRAP and PATH, and sets:
#     BUILD         the cargo command: (/usr/bin/cargo) or (cargo-zigbuild)
#     STD_RELEASE   extra arguments of a release build: () or (-Zbuild-std=std,panic_abort
#                   and the standard library's features, see below)
#     STD_TEST      extra arguments of a test build: () or (-Zbuild-std)
#     QEMU          the emulator command, with the CPU to emulate, or "" for the host's own
#     STRIP         a strip that reads TARGET's objects, or "" when the linker already
#                   stripped (the release profile's strip = true)
#     STRIP_ARGS    what dist asks of STRIP: (--strip-all), and on MIPS also the section
#                   .pdr, which LLVM writes for every function and no linker drops
#   ARMv6 is emulated as an ARM1176 (Pi Zero/1): an ARMv7-only instruction then traps. MIPS
#   as a 24KEc (little-endian, MT7621's family) and a 24Kc (big-endian, ath79's family).

# shellcheck disable=SC2034 # the variables are the interface, read by the scripts sourcing this
DEBIAN_TARGETS=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)
ZIG_TARGETS=(arm-unknown-linux-musleabihf armv7-unknown-linux-musleabihf
  aarch64-unknown-linux-musl x86_64-unknown-linux-musl mipsel-unknown-linux-musl
  mips-unknown-linux-musl)

# Where cross/toolchain.sh puts zig and cargo-zigbuild (a Python virtual environment).
ZIG_VENV=${IC_ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/iron-carrier/zig-venv}

target_env() {
  local target=$1 upper lower flags="" gnu_prefix="" soft_float=0
  upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
  lower=${target//-/_}
  export RUSTC=/usr/bin/rustc
  BUILD=(cargo-zigbuild)
  STD_RELEASE=("-Zbuild-std=std,panic_abort"
    "-Zbuild-std-features=std_detect_file_io,std_detect_dlsym_getauxval,optimize_for_size")
  STD_TEST=(-Zbuild-std)
  STRIP=""
  STRIP_ARGS=(--strip-all)
  case "$target" in
    armv7-unknown-linux-gnueabihf)
      gnu_prefix=arm-linux-gnueabihf QEMU=qemu-arm-static ;;
    aarch64-unknown-linux-gnu)
      gnu_prefix=aarch64-linux-gnu QEMU=qemu-aarch64-static ;;
    arm-unknown-linux-musleabihf)
      QEMU="qemu-arm-static -cpu arm1176" flags="-C target-cpu=arm1176jzf-s" ;;
    armv7-unknown-linux-musleabihf)
      QEMU="qemu-arm-static -cpu cortex-a7" ;;
    aarch64-unknown-linux-musl)
      QEMU=qemu-aarch64-static ;;
    x86_64-unknown-linux-musl)
      QEMU="" ;;
    mipsel-unknown-linux-musl)
      QEMU="qemu-mipsel-static -cpu 24KEc" soft_float=1 STRIP=mipsel-linux-gnu-strip ;;
    mips-unknown-linux-musl)
      QEMU="qemu-mips-static -cpu 24Kc" soft_float=1 STRIP=mips-linux-gnu-strip ;;
    *)
      echo "cross/env.sh: unknown target $target (known: ${DEBIAN_TARGETS[*]} ${ZIG_TARGETS[*]})" >&2
      return 1 ;;
  esac
  if [ -n "$gnu_prefix" ]; then
    BUILD=(/usr/bin/cargo)
    STD_RELEASE=()
    STD_TEST=()
    STRIP=$gnu_prefix-strip
    # No -L for qemu: the multiarch libc6 provides the dynamic loader where the binary looks
    # for it (with -L, threads hang under qemu).
    export "CARGO_TARGET_${upper}_LINKER=${gnu_prefix}-gcc"
    export "CC_${lower}=${gnu_prefix}-gcc"
    export "AR_${lower}=${gnu_prefix}-ar"
  else
    export RUSTC_BOOTSTRAP=1
    export PATH="$ZIG_VENV/bin:$PATH"
    # cargo-zigbuild runs the cargo it finds as $CARGO: Debian's, the one that matches rustc.
    export CARGO=/usr/bin/cargo
    if [ "$soft_float" = 1 ]; then
      # Rust's MIPS musl targets are soft-float (OpenWrt's ABI); zig's mips(el)-linux-musl
      # is hard-float unless told, for the C code (SQLite) and for the musl it links.
      export "CFLAGS_${lower}=-msoft-float"
      flags="-C link-arg=-msoft-float -C relocation-model=static"
    fi
    export "CARGO_TARGET_${upper}_RUSTFLAGS=${flags:+$flags }-C link-self-contained=no"
    if [ "$soft_float" = 1 ]; then STRIP_ARGS+=(--remove-section=.pdr); fi
  fi
  if [ -n "$QEMU" ]; then
    export "CARGO_TARGET_${upper}_RUNNER=$QEMU"
  fi
}
