# shellcheck shell=bash
# Sourced by cross/cross-test.sh and cross/dist.sh: the environment that makes Debian's
# rustc-web 1.85 (/usr/bin/cargo, /usr/bin/rustc) build for, and run on, another
# architecture without Docker. Installed by `cross/toolchain.sh cross`.
#
#   debian_target_env TARGET   exports, for TARGET (a Rust triple):
#     RUSTC                              /usr/bin/rustc (cargo-web would otherwise find rustup's)
#     CARGO_TARGET_<TRIPLE>_LINKER       the Debian cross gcc
#     CARGO_TARGET_<TRIPLE>_RUNNER       qemu-<arch>-static, with no -L: the multiarch libc6
#                                        provides the dynamic loader where the binary looks
#                                        for it (with -L, threads hang under qemu)
#     CC_<triple>, AR_<triple>           for C code built by the cc crate (bundled SQLite)
#   and sets DEB_ARCH, GNU_PREFIX and QEMU for the caller.
#
# Only the targets Debian ships a standard library for are known: armv7 (armhf) and aarch64
# (arm64). ARMv6 (Pi Zero/1) and the musl targets go through cross-rs (cross/Cross.toml).

DEBIAN_TARGETS=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)

debian_target_env() {
  local target=$1 upper lower
  case "$target" in
    armv7-unknown-linux-gnueabihf)
      DEB_ARCH=armhf GNU_PREFIX=arm-linux-gnueabihf QEMU=qemu-arm-static ;;
    aarch64-unknown-linux-gnu)
      DEB_ARCH=arm64 GNU_PREFIX=aarch64-linux-gnu QEMU=qemu-aarch64-static ;;
    *)
      echo "debian-env: no Debian toolchain for $target (known: ${DEBIAN_TARGETS[*]})" >&2
      return 1 ;;
  esac
  upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
  lower=${target//-/_}
  export RUSTC=/usr/bin/rustc
  export "CARGO_TARGET_${upper}_LINKER=${GNU_PREFIX}-gcc"
  export "CARGO_TARGET_${upper}_RUNNER=${QEMU}"
  export "CC_${lower}=${GNU_PREFIX}-gcc"
  export "AR_${lower}=${GNU_PREFIX}-ar"
  export DEB_ARCH GNU_PREFIX QEMU
}
