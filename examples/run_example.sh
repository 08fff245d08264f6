#!/bin/sh
# examples/run_example.sh — how ctest runs an example: run it, show its output, and fail unless it
# exits with 0 AND every expected line (a grep -E pattern) is in its output.
# Usage: run_example.sh 'PATTERN1' ['PATTERN2' ...] -- PROGRAM [ARGS...]
set -u
n=0
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  n=$((n + 1)); eval "pat_$n=\$1"; shift
done
[ "$#" -gt 1 ] || { echo "usage: run_example.sh PATTERN... -- PROGRAM [ARGS...]"; exit 2; }
shift
out=$("$@" 2>&1); rc=$?
printf '%s\n' "$out"
[ "$rc" -eq 0 ] || { echo "FAIL: $1 exited with $rc"; exit 1; }
i=1
while [ "$i" -le "$n" ]; do
  eval "p=\$pat_$i"
  printf '%s\n' "$out" | grep -Eq -- "$p" || { echo "FAIL: no line matching '$p' in the output"; exit 1; }
  i=$((i + 1))
done
