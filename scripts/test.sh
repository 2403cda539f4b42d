#!/usr/bin/env bash
# test.sh — install what is missing, build, and run the whole test suite.
# With CI=true it also runs the suite under AddressSanitizer +
# UndefinedBehaviorSanitizer and each libFuzzer target for a short,
# bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test

werror=false
[ "${CI:-}" = true ] && werror=true

# 1. The normal build and suite.
[ -f build/build.ninja ] || meson setup build --buildtype=release -Dwerror=$werror >/dev/null
meson configure build -Dwerror=$werror >/dev/null
ninja -C build
meson test -C build --print-errorlogs

if [ "${CI:-}" = true ] || [ "${STIPPLE_FULL_TESTS:-}" = 1 ]; then
  # 2. The same suite under ASan + UBSan.
  [ -f build-asan/build.ninja ] || meson setup build-asan --buildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=$werror >/dev/null
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --timeout-multiplier 4

  # 3. libFuzzer targets, a bounded time each.
  [ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz --buildtype=debugoptimized \
    -Dfuzz=true -Dopenmp=disabled -Db_lundef=false >/dev/null
  ninja -C build-fuzz
  for target in build-fuzz/tests/fuzz/fuzz_*; do
    [ -x "$target" ] || continue
    name=$(basename "$target")
    seeds=tests/fuzz/seeds_${name#fuzz_}
    corpus=$(mktemp -d)
    echo "fuzz: $name (${STIPPLE_FUZZ_SECONDS:-30} s)"
    "$target" -max_total_time="${STIPPLE_FUZZ_SECONDS:-30}" -max_len=65536 -print_final_stats=1 \
      "$corpus" "$seeds" 2>&1 | tail -n 12
    rm -rf "$corpus"
  done
fi
