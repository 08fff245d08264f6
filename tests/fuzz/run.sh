#!/usr/bin/env bash
# Build every tests/fuzz/fuzz_*.cpp with clang + libFuzzer + ASan/UBSan and run each for N seconds
# (default 120). Corpora are seeded from tests/fuzz/corpus/<target>/ when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-120}
command -v clang++ >/dev/null || { echo "fuzz: needs clang (apt-get install clang libclang-rt-14-dev)"; exit 1; }
cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQWEN_FUZZ=ON -DQWEN_BUILD_TESTS=OFF -DQWEN_BUILD_BENCH=OFF >/dev/null
targets=$(for f in tests/fuzz/fuzz_*.cpp; do basename "$f" .cpp; done)
cmake --build build-fuzz -j "$(nproc)" --target $targets
status=0
for bin in build-fuzz/fuzz/fuzz_*; do
  name=$(basename "$bin")
  work=fuzz-out/$name; mkdir -p "$work/corpus"
  seed=tests/fuzz/corpus/$name
  [ -d "$seed" ] && cp -n "$seed"/* "$work/corpus/" 2>/dev/null || true
  echo "== $name for ${secs}s"
  if ! "$bin" "$work/corpus" -max_total_time="$secs" -rss_limit_mb=4096 -artifact_prefix="$work/" \
       -print_final_stats=1 2>"$work/log.txt"; then
    echo "FAILED: $name (see $work/log.txt)"; tail -40 "$work/log.txt"; status=1
  else
    grep -E 'stat::number_of_executed_units|cov:' "$work/log.txt" | tail -2
  fi
done
exit $status
