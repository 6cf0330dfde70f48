#!/usr/bin/env bash
# Installs what `make test`, `make run` and `make bench` need on a bare Debian 12
# machine: system packages (redis-server, mosquitto, prometheus, the firmware
# toolchain; wrk and valgrind for benchmarks), uv, and the locked
# Python environment. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "bootstrap: need root (or sudo) to install: $*" >&2; exit 1; fi
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
# promtool (rule unit tests) and prometheus (the dashboards/rules test scrapes the stack).
command -v promtool >/dev/null || missing+=(prometheus)
if [ "${BOOTSTRAP_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null || missing+=(wrk)
  command -v valgrind >/dev/null || missing+=(valgrind)  # callgrind: `make bench BENCH=instr`
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The STM32 firmware's host compiler, cross compiler, newlib and QEMU.
bash firmware/stm32/tools/ensure-toolchain.sh

if ! command -v uv >/dev/null && [ ! -x .tools/bin/uv ]; then
  echo "bootstrap: installing uv into .tools/"
  python3 -m venv .tools
  .tools/bin/pip install -q --disable-pip-version-check "uv>=0.8,<0.14"
fi
UV=$(command -v uv || echo .tools/bin/uv)
export UV_PYTHON_DOWNLOADS=never
"$UV" sync --frozen --all-packages --python "$(command -v python3)" -q
