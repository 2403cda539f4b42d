#!/usr/bin/env bash
# test.sh — install what is missing, build, and run the whole test suite.
#
# Tiers (SQLite-style: the same suite, more scrutiny):
#   1. release build, every suite (includes cmd's bad-input matrix,
#      interrupts and the allocation-failure sweep from the real binary)
#   with CI=true (or STIPPLE_FULL_TESTS=1) also:
#   2. the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer,
#      LeakSanitizer on (the allocation sweep's stipple runs included);
#   3. one small end-to-end txt2img under valgrind (memcheck, leaks);
#   3b. the whole suite again from a plain-C build (-Dsimd=false: no x86
#      intrinsics, the portable kernels only — what ARM and old CPUs run);
#   4. each libFuzzer target for STIPPLE_FUZZ_SECONDS (default 30) from its
#      seed corpus tests/fuzz/seeds_<name>/.
# Each tier prints its wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test

werror=false
[ "${CI:-}" = true ] && werror=true
times=()
tier() { # name start
  times+=("$(printf '%-28s %5d s' "$1" $((SECONDS - $2)))")
}

# 1. The normal build and suite.
t=$SECONDS
[ -f build/build.ninja ] || meson setup build --buildtype=release -Dwerror=$werror >/dev/null
meson configure build -Dwerror=$werror >/dev/null
ninja -C build
meson test -C build --print-errorlogs
tier "release suite" $t

if [ "${CI:-}" = true ] || [ "${STIPPLE_FULL_TESTS:-}" = 1 ]; then
  # 2. The same suite under ASan + UBSan (+ LeakSanitizer). The allocation
  #    sweep samples every 4th N here (each run is several times slower).
  t=$SECONDS
  [ -f build-asan/build.ninja ] || meson setup build-asan --buildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=$werror >/dev/null
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    STIPPLE_ALLOC_SWEEP_STEP=${STIPPLE_ALLOC_SWEEP_STEP:-4} \
    meson test -C build-asan --print-errorlogs --timeout-multiplier 4
  tier "asan+ubsan suite" $t

  # 3. One small end-to-end run under valgrind: no invalid access, no
  #    uninitialised read, no leak.
  t=$SECONDS
  if command -v valgrind >/dev/null; then
    vdir=$(mktemp -d)
    valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
      --quiet build/cmd/stipple txt2img -p 'a cat' \
      -m tests/data/golden/sd1-tiny/model/sd1-tiny_f16.safetensors \
      -W 64 -H 64 --steps 2 --seed 1 --threads 1 --quiet -o "$vdir/valgrind.png"
    test -s "$vdir/valgrind.png"
    rm -rf "$vdir"
  else
    echo "valgrind: not installed (scripts/deps.sh test installs it)" >&2
    exit 1
  fi
  tier "valgrind txt2img" $t

  # 3b. Plain C: no AVX code compiled at all; every golden must still pass.
  t=$SECONDS
  [ -f build-plain/build.ninja ] || meson setup build-plain --buildtype=release -Dsimd=false \
    -Dwerror=$werror >/dev/null
  ninja -C build-plain
  meson test -C build-plain --print-errorlogs
  tier "plain-C suite" $t

  # 4. libFuzzer targets, a bounded time each. clang's C++ default is C++14;
  #    the SentencePiece headers need C++17.
  t=$SECONDS
  [ -f build-fuzz/build.ninja ] || CC=clang CXX=clang++ meson setup build-fuzz \
    --buildtype=debugoptimized -Dfuzz=true -Dopenmp=disabled -Db_lundef=false \
    -Dcpp_std=c++17 >/dev/null
  ninja -C build-fuzz
  for target in build-fuzz/tests/fuzz/fuzz_*; do
    [ -x "$target" ] && [ -f "$target" ] || continue
    name=$(basename "$target")
    seeds=tests/fuzz/seeds_${name#fuzz_}
    corpus=$(mktemp -d)
    echo "fuzz: $name (${STIPPLE_FUZZ_SECONDS:-30} s)"
    # A crash stops the fuzzer with a non-zero status: the tier fails.
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
      "$target" -max_total_time="${STIPPLE_FUZZ_SECONDS:-30}" -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$corpus/" "$corpus" "$seeds" >"$corpus.log" 2>&1 || {
      tail -n 40 "$corpus.log"
      echo "fuzz: $name found a failure; the input is in $corpus/" >&2
      exit 1
    }
    grep -E 'stat::number_of_executed_units|Done' "$corpus.log" | tail -n 2
    rm -rf "$corpus" "$corpus.log"
  done
  tier "fuzzers" $t
fi

printf '%s\n' "test.sh: wall time per tier" "${times[@]}"
