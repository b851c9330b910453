#!/usr/bin/env bash
# bench/check.sh - `vdk check` against `qemu-img check` on two images whose
# check cost is all metadata (docs/benchmarks.md, "check"):
#   full.qcow2    8 GiB, every cluster allocated (preallocation=metadata:
#                 the L2 tables and refcounts of a full image, the data
#                 clusters sparse in the file; a check never reads data)
#   sparse.qcow2  1 TiB virtual, 1800 L2 tables (one 4 KiB write in each of
#                 1800 distinct 512 MiB regions)
#   empty.qcow2   1 MiB, nothing allocated: the fixed cost of each command
#                 (process start, dynamic linking, opening)
# Runs alternate (vdk, qemu-img, vdk, ...) so both see the same cache state;
# prints each tool's median wall time and the ratio vdk / qemu-img.
#
#   bench/check.sh [RUNS]          (default 11)
# VDK_BUILD_DIR names a build tree (default: build-bench, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-11}
build=${VDK_BUILD_DIR:-build-bench}
if [ ! -x "$build/vdk" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi
vdk=$build/vdk
dir=$(mktemp -d /tmp/vdk-bench-check.XXXXXX)
trap 'rm -rf "$dir"' EXIT

qemu-img create -q -f qcow2 "$dir/empty.qcow2" 1M
qemu-img create -q -f qcow2 -o preallocation=metadata "$dir/full.qcow2" 8G
qemu-img create -q -f qcow2 "$dir/sparse.qcow2" 1T
cmds=()
for i in $(seq 0 1799); do
  # region i*569 (of 2048) so the tables spread over the whole 1 TiB
  cmds+=(-c "write -q $(( (i * 569 % 2048) * 512 ))M 4k")
done
qemu-io "${cmds[@]}" "$dir/sparse.qcow2" >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for img in empty full sparse; do
  f=$dir/$img.qcow2
  "$vdk" check "$f" >/dev/null   # warm the page cache
  qemu-img check "$f" >/dev/null
  : >"$dir/v" ; : >"$dir/q"
  for _ in $(seq "$runs"); do
    t0=$(now); "$vdk" check "$f" >/dev/null; t1=$(now)
    qemu-img check "$f" >/dev/null; t2=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}' >>"$dir/v"
    awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}' >>"$dir/q"
  done
  v=$(median <"$dir/v"); q=$(median <"$dir/q")
  l2=$(qemu-img check --output=json "$f" | sed -n 's/.*"allocated-clusters": \([0-9]*\).*/\1/p')
  printf '%-7s %s, %s allocated clusters: vdk check %.3f s, qemu-img check %.3f s, ratio %.2f\n' \
    "$img" "$(du -h --apparent-size "$f" | cut -f1)" "$l2" "$v" "$q" "$(awk -v a="$v" -v b="$q" 'BEGIN {print a / b}')"
done
