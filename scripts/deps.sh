#!/usr/bin/env bash
# deps.sh — install the Debian packages stipple needs, only those missing.
# Usage: scripts/deps.sh [build|test]
#   build: compiler, meson, libraries
#   test:  build + Check, clang sanitizer/libFuzzer runtimes, valgrind
# Idempotent and fast when everything is there. Runs apt-get as root, or
# through sudo when not root.
set -euo pipefail

pkgs=(meson ninja-build gcc pkg-config libstb-dev libsentencepiece-dev libcjson-dev)
if [ "${1:-build}" = test ]; then
  pkgs+=(check clang libclang-rt-14-dev valgrind)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "stipple: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "stipple: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
