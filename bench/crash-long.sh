#!/usr/bin/env bash
# bench/crash-long.sh - the long crash-consistency run (docs/reliability.md).
#
# Runs the crash replayer (tests/c/test_crash_replay.c) with every prefix of
# each recorded log and REORDERS random reorderings per flush boundary, and
# repeats seeded workloads until each format has reached STATES distinct
# crash states (qcow2 over all its configurations, QED over its own).
# A sample of the states (1 in QEMU_EVERY) also goes through qemu-img check.
#
#   bench/crash-long.sh [STATES] [REORDERS] [SEED]
#
# VDK_BUILD_DIR names a build tree (default: build-crash, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
states=${1:-10000}
reorders=${2:-8}
seed=${3:-1}
qemu_every=${QEMU_EVERY:-50}
build=${VDK_BUILD_DIR:-build-crash}
if [ ! -x "$build/tests/test_crash_replay" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target test_crash_replay >/dev/null
fi
status=0
for fmt in qcow2 qed; do
  echo "=== $fmt: $states distinct states, $reorders reorderings per flush, seed $seed"
  start=$(date +%s)
  "$build/tests/test_crash_replay" --long "$reorders" --states "$states" --seed "$seed" \
    --qemu-every "$qemu_every" --only "$fmt" | grep -v '^    ' || status=1
  echo "=== $fmt: $(( $(date +%s) - start )) s"
done
exit $status
