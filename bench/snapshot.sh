#!/usr/bin/env bash
# bench/snapshot.sh - the snapshot-saving pipeline and snapshot create and
# delete, against the naive path, dd and qemu-img, in one run, alternating.
#
#   VDK_BUILD_DIR=build bash bench/snapshot.sh
#
# 1. Saving a VM state of STATE_MB MiB (default 2048) into a new snapshot
#    with cache=none (O_DIRECT):
#      vdk    `vdk snapshot -t none -c s --vmstate-in state.bin` (the
#             pipeline: double-buffered 8 MiB aligned writes on a worker)
#      naive  the same state written as QEMU did before its fix: a 17-byte
#             header, then 32 KiB chunks, each written synchronously where
#             it lands (so every write is unaligned: read-modify-write
#             under O_DIRECT), then the snapshot
#      dd     `dd if=/dev/zero bs=1M oflag=direct` of the same size on the
#             same file system (the sequential O_DIRECT bandwidth)
#    Goals: vdk >= 3x faster than naive, >= 80% of dd's bandwidth.
# 2. Snapshot create and delete on a fully allocated DISK_GB GiB image
#    (default 8, preallocation=falloc), vdk against qemu-img snapshot.
#    Goal: <= 0.5x qemu-img's time.
# 3. NSNAP (default 50) snapshots created one after the other (1 MiB
#    written between two), then deleted: time per operation for the first
#    and the last ones. Goal: no worse than linear in the number of
#    snapshots (the per-operation time stays flat).
# Prints medians of RUNS (default 3) runs. BENCH_DIR must be on a real
# file system (O_DIRECT; not tmpfs); it is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${VDK_BUILD_DIR:-build}
VDK=$(realpath "$BUILD/vdk")
DIR=${BENCH_DIR:-/var/tmp/vdk-bench-snapshot}
STATE_MB=${STATE_MB:-2048}
DISK_GB=${DISK_GB:-8}
NSNAP=${NSNAP:-50}
RUNS=${RUNS:-3}
mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT

now() { date +%s%N; }
# median of the numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ms() { awk -v ns="$1" 'BEGIN {printf "%.1f", ns / 1e6}'; }

echo "== vdk snapshot benchmark: $(date -u +%F) on $(nproc) cores, $(df -T "$DIR" | awk 'NR==2 {print $2}') in $DIR"
"$VDK" --version | head -1
qemu-img --version | head -1

# ---------------------------------------------------------------- 1. VM state
STATE=$DIR/state.bin
head -c $((STATE_MB << 20)) /dev/urandom > "$STATE"
cat "$STATE" > /dev/null # in the page cache for every contender

cat > "$DIR/naive.lua" <<'EOF'
-- The naive path: a 17-byte header, then 32 KiB chunks, each written
-- synchronously at its (unaligned) place; then the snapshot.
local vdk = require "vdk"
local savevm = require "vdk.savevm"
local img = assert(vdk.open(arg[1], { readonly = false, cache = "none" }))
local f = assert(io.open(arg[2], "rb"))
local first = true
local function chunks()
  if first then first = false return f:read(17) end
  return f:read(32768)
end
assert(savevm.save(img, "s", chunks, { naive = true }))
f:close()
assert(img:close())
EOF

declare -a T_VDK T_NAIVE T_DD
for r in $(seq "$RUNS"); do
  qemu-img create -q -f qcow2 "$DIR/v.qcow2" 1G
  t0=$(now); "$VDK" snapshot -q -t none -c s --vmstate-in "$STATE" "$DIR/v.qcow2"; t1=$(now)
  T_VDK+=($((t1 - t0)))
  qemu-img check -q "$DIR/v.qcow2"
  rm -f "$DIR/v.qcow2"
  qemu-img create -q -f qcow2 "$DIR/n.qcow2" 1G
  t0=$(now); "$VDK" run "$DIR/naive.lua" "$DIR/n.qcow2" "$STATE"; t1=$(now)
  T_NAIVE+=($((t1 - t0)))
  rm -f "$DIR/n.qcow2"
  t0=$(now); dd if=/dev/zero of="$DIR/dd.bin" bs=1M count="$STATE_MB" oflag=direct conv=fdatasync status=none; t1=$(now)
  T_DD+=($((t1 - t0)))
  rm -f "$DIR/dd.bin"
done
v=$(printf '%s\n' "${T_VDK[@]}" | median)
n=$(printf '%s\n' "${T_NAIVE[@]}" | median)
d=$(printf '%s\n' "${T_DD[@]}" | median)
echo
echo "1. saving a ${STATE_MB} MiB VM state, cache=none (median of $RUNS)"
awk -v v="$v" -v n="$n" -v d="$d" -v mb="$STATE_MB" 'BEGIN {
  printf "   vdk pipeline  %8.0f ms  %7.0f MiB/s\n", v / 1e6, mb / (v / 1e9)
  printf "   naive         %8.0f ms  %7.0f MiB/s\n", n / 1e6, mb / (n / 1e9)
  printf "   dd bs=1M      %8.0f ms  %7.0f MiB/s\n", d / 1e6, mb / (d / 1e9)
  printf "   vdk vs naive: %.1fx faster (goal >= 3x); vdk vs dd: %.0f%% of its bandwidth (goal >= 80%%)\n", n / v, 100 * d / v
}'
rm -f "$STATE"

# ---------------------------------------------------------------- 2. create/delete
qemu-img create -q -f qcow2 -o preallocation=falloc "$DIR/q.qcow2" "${DISK_GB}G"
cp --sparse=always "$DIR/q.qcow2" "$DIR/w.qcow2"
declare -a QC QD VC VD
for r in $(seq $((RUNS * 3))); do
  t0=$(now); qemu-img snapshot -c s "$DIR/q.qcow2"; t1=$(now); QC+=($((t1 - t0)))
  t0=$(now); "$VDK" snapshot -c s "$DIR/w.qcow2"; t1=$(now); VC+=($((t1 - t0)))
  t0=$(now); qemu-img snapshot -d s "$DIR/q.qcow2"; t1=$(now); QD+=($((t1 - t0)))
  t0=$(now); "$VDK" snapshot -d s "$DIR/w.qcow2"; t1=$(now); VD+=($((t1 - t0)))
done
qemu-img check -q "$DIR/w.qcow2"
# The same operations inside one vdk process (open, create or delete,
# close): what the command costs without the launcher's start-up.
cat > "$DIR/inproc.lua" <<'LUA'
local vdk = require "vdk"
local c, d = {}, {}
for i = 1, tonumber(arg[2]) do
  local t0 = vdk.monotonic()
  local img = assert(vdk.open(arg[1], { readonly = false }))
  assert(img:snapshot_create("s")); assert(img:close())
  local t1 = vdk.monotonic()
  img = assert(vdk.open(arg[1], { readonly = false }))
  assert(img:snapshot_delete({ name = "s" })); assert(img:close())
  local t2 = vdk.monotonic()
  c[#c + 1], d[#d + 1] = t1 - t0, t2 - t1
end
table.sort(c) table.sort(d)
print(("%d %d"):format(math.floor(c[#c // 2 + 1] * 1e9), math.floor(d[#d // 2 + 1] * 1e9)))
LUA
read -r ic id < <("$VDK" run "$DIR/inproc.lua" "$DIR/w.qcow2" $((RUNS * 3)))
qemu-img check -q "$DIR/w.qcow2"
qc=$(printf '%s\n' "${QC[@]}" | median); vc=$(printf '%s\n' "${VC[@]}" | median)
qd=$(printf '%s\n' "${QD[@]}" | median); vd=$(printf '%s\n' "${VD[@]}" | median)
echo
echo "2. snapshot create and delete, fully allocated ${DISK_GB} GiB image (median of $((RUNS * 3)), whole commands)"
awk -v qc="$qc" -v vc="$vc" -v qd="$qd" -v vd="$vd" 'BEGIN {
  printf "   create: qemu-img %6.1f ms  vdk %6.1f ms  ratio %.2f (goal <= 0.5)\n", qc / 1e6, vc / 1e6, vc / qc
  printf "   delete: qemu-img %6.1f ms  vdk %6.1f ms  ratio %.2f (goal <= 0.5)\n", qd / 1e6, vd / 1e6, vd / qd
}'
awk -v qc="$qc" -v qd="$qd" -v ic="$ic" -v id="$id" 'BEGIN {
  printf "   inside one vdk process (open, operation, close): create %.1f ms (%.2f of qemu-img), delete %.1f ms (%.2f)\n", ic / 1e6, ic / qc, id / 1e6, id / qd
}'
t0=$(now); for i in 1 2 3 4 5; do "$VDK" --version > /dev/null; done; t1=$(now)
t2=$(now); for i in 1 2 3 4 5; do qemu-img --version > /dev/null; done; t3=$(now)
echo "   process start-up alone: vdk --version $(ms $(((t1 - t0) / 5))) ms, qemu-img --version $(ms $(((t3 - t2) / 5))) ms"
rm -f "$DIR/q.qcow2"

# ---------------------------------------------------------------- 3. many snapshots
declare -a C50 D50
for i in $(seq "$NSNAP"); do
  qemu-io -c "write -P $((i % 250)) $(((i * 7 % (DISK_GB * 1024 - 1)) << 20)) 1M" "$DIR/w.qcow2" > /dev/null
  t0=$(now); "$VDK" snapshot -c "s$i" "$DIR/w.qcow2"; t1=$(now); C50+=($((t1 - t0)))
done
qemu-img check -q "$DIR/w.qcow2"
for i in $(seq "$NSNAP"); do
  t0=$(now); "$VDK" snapshot -d "s$i" "$DIR/w.qcow2"; t1=$(now); D50+=($((t1 - t0)))
done
qemu-img check -q "$DIR/w.qcow2"
first() { printf '%s\n' "${@:1:5}" | median; }
last() { printf '%s\n' "${@: -5}" | median; }
echo
echo "3. $NSNAP snapshots on the ${DISK_GB} GiB image (median of 5 operations)"
echo "   create: first five $(ms "$(first "${C50[@]}")") ms, last five $(ms "$(last "${C50[@]}")") ms"
echo "   delete: first five $(ms "$(first "${D50[@]}")") ms, last five $(ms "$(last "${D50[@]}")") ms"
