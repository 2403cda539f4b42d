#!/usr/bin/env bash
# demo.sh — install what is missing, build, and make an image with the
# built-in model (weights/builtin/, found next to the binary; no -m).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
mkdir -p out
exec build/cmd/stipple txt2img -p "a rocket on a yellow background" \
  --seed 42 -o out/demo.png --overwrite "$@"
