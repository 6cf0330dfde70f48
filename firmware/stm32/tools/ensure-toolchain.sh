#!/usr/bin/env bash
# Install what the firmware build and its tests need, if missing (idempotent).
# Debian 12: gcc and make (host tests), the Arm cross compiler and newlib
# (image), QEMU's Arm system emulator (netduinoplus2) and Mosquitto (the e2e
# test's broker). Non-interactive; as root, or through sudo when not root.
set -euo pipefail

# package -> a file that shows it is installed
declare -A wants=(
  [gcc]=/usr/bin/gcc
  [make]=/usr/bin/make
  [libc6-dev]=/usr/include/stdio.h
  [gcc-arm-none-eabi]=/usr/bin/arm-none-eabi-gcc
  [binutils-arm-none-eabi]=/usr/bin/arm-none-eabi-size
  [libnewlib-arm-none-eabi]=/usr/lib/arm-none-eabi/newlib/libc.a
  [qemu-system-arm]=/usr/bin/qemu-system-arm
  [mosquitto]=/usr/sbin/mosquitto
)
missing=()
for pkg in "${!wants[@]}"; do
  [[ -e "${wants[$pkg]}" ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  echo "ensure-toolchain: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure-toolchain: installing ${missing[*]}" >&2
install=("${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}")
if ! "${install[@]}"; then
  "${as_root[@]}" apt-get update -q
  "${install[@]}"
fi
# Debian's mosquitto package enables and starts a system broker on port 1883;
# the tests start their own on free ports and do not need it.
