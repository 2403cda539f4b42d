#!/usr/bin/env bash
# demo.sh — install what is missing, build, and make an image.
# Until the built-in model lands (issue 6) the image comes from the small
# random-weight test model in tests/data: it proves the pipeline, not art.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
mkdir -p out
model=tests/data/golden/sd1-tiny/model/sd1-tiny_f16.safetensors
exec build/cmd/stipple txt2img -m "$model" -p "a red apple on a blue background" \
  -W 96 -H 64 --steps 10 --seed 42 -o out/demo.png --overwrite "$@"
