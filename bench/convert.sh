#!/usr/bin/env bash
# bench/convert.sh: time `vdk convert` against `qemu-img convert` (and
# nbdcopy where it applies) on the same generated inputs, alternating the
# tools run by run, and print medians and the ratio vdk / qemu-img.
#
#   bench/convert.sh [-n RUNS] [-s SIZE_MIB] [-d DIR] [WORKLOAD...]
#
# RUNS (default 5) runs of each tool per workload; SIZE_MIB (default 2048)
# sizes the mixed image; DIR (default /tmp/vdk-bench) keeps the inputs
# between invocations (bench/gen-images.lua makes them once). VDK is the vdk
# binary (default: build/vdk next to this script). Workloads (default: all):
#
#   raw-qcow2          mixed.raw -> qcow2, vdk default vs qemu-img -t writeback
#   raw-qcow2-unsafe   the same, vdk -t unsafe vs qemu-img's default (unsafe)
#   qcow2-raw          mixed.qcow2 -> raw, writeback vs -t writeback
#   qcow2-raw-unsafe   the same, unsafe vs qemu-img's default
#   zlib               mixed.raw -> qcow2 -c (zlib), both with default options
#   zstd               the same with -o compression_type=zstd
#   zlib-read          mixed-zlib.qcow2 -> raw, vdk -t unsafe vs qemu-img default
#   zstd-read          mixed-zstd.qcow2 -> raw, the same
#   chain              chain3.qcow2 (4 deep) -> one qcow2, writeback vs -t writeback
#   sparse             1 TiB qcow2 with 1800 L2 tables -> qcow2, writeback vs -t writeback
#   writethrough       mixed.raw -> qcow2, -t writethrough for both
#   none               mixed.raw -> qcow2, -t none (O_DIRECT) for both
#   nbd-src            mixed.raw behind nbdkit (2 ms per request) -> raw:
#                      vdk vs qemu-img -m 16 -W vs nbdcopy, unsafe for all
#   nbd-dst            mixed.raw -> nbdkit memory export (2 ms per request):
#                      vdk -n vs qemu-img -n -m 16 -W vs nbdcopy
#
# Each run removes the output and syncs first (untimed); the inputs stay in
# the page cache (read once before the workload). Times are wall-clock
# seconds (median of RUNS); "rss" is vdk's peak resident memory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
VDK=${VDK:-$here/../build/vdk}
runs=5
size=2048
dir=/tmp/vdk-bench
while getopts "n:s:d:" o; do
  case $o in
    n) runs=$OPTARG ;;
    s) size=$OPTARG ;;
    d) dir=$OPTARG ;;
    *) echo "usage: $0 [-n RUNS] [-s SIZE_MIB] [-d DIR] [WORKLOAD...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
all="raw-qcow2 raw-qcow2-unsafe qcow2-raw qcow2-raw-unsafe zlib zstd zlib-read zstd-read chain sparse writethrough none nbd-src nbd-dst"
workloads=${*:-$all}

"$VDK" run "$here/gen-images.lua" "$dir" "$size"
cd "$dir"
out=$dir/out.img
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -f "$out" "$dir"/*.sock "$dir"/*.pid
}
trap cleanup EXIT

# time_run CMD... : prints "seconds rss_kib" for one run of CMD.
time_run() {
  rm -f "$out"
  sync
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$dir/.rss" "$@" >/dev/null 2>"$dir/.err" || {
    echo "FAILED: $*" >&2
    cat "$dir/.err" >&2
    exit 1
  }
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000000 )) $(cat "$dir/.rss")"
}

median() { sort -n | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f", m / 1000 }'; }

# nbd_server NAME ARGS...: start nbdkit on $dir/NAME.sock and set $uri.
# (Not in a subshell: the cleanup must see the server's pid.)
nbd_server() {
  local name=$1
  shift
  rm -f "$dir/$name.pid"
  nbdkit --log=null -U "$dir/$name.sock" -P "$dir/$name.pid" "$@" </dev/null >/dev/null 2>&1
  for _ in $(seq 100); do [ -s "$dir/$name.pid" ] && break; sleep 0.05; done
  pids+=("$(cat "$dir/$name.pid")")
  uri="nbd+unix:///?socket=$dir/$name.sock"
}

# bench NAME SOURCE "VDK ARGS" "QEMU ARGS" ["NBDCOPY ARGS"]: alternate the tools.
bench() {
  local name=$1 src=$2 vargs=$3 qargs=$4 nargs=${5:-}
  [ -f "$src" ] && cat "$src" >/dev/null
  local v=() q=() n=() rss=()
  for _ in $(seq "$runs"); do
    # shellcheck disable=SC2086
    read -r t m < <(time_run "$VDK" convert -q $vargs)
    v+=("$t"); rss+=("$m")
    # shellcheck disable=SC2086
    read -r t _ < <(time_run qemu-img convert $qargs)
    q+=("$t")
    if [ -n "$nargs" ]; then
      # shellcheck disable=SC2086
      read -r t _ < <(time_run nbdcopy $nargs)
      n+=("$t")
    fi
  done
  local vm qm nm=""
  vm=$(printf '%s\n' "${v[@]}" | median)
  qm=$(printf '%s\n' "${q[@]}" | median)
  [ -n "$nargs" ] && nm=$(printf '%s\n' "${n[@]}" | median)
  local rssm
  rssm=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
  printf "%-18s %8s %8s %8s %7.2f %8s\n" "$name" "$vm" "$qm" "${nm:--}" \
    "$(awk -v a="$vm" -v b="$qm" 'BEGIN { print a / b }')" "$((rssm / 1024))M"
}

printf "# %s, %d runs each, %s MiB mixed image, load %s\n" "$(date -u +%Y-%m-%dT%H:%MZ)" \
  "$runs" "$size" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-18s %8s %8s %8s %7s %8s\n" workload vdk qemu-img nbdcopy ratio rss
for w in $workloads; do
  case $w in
    raw-qcow2) bench "$w" mixed.raw "-O qcow2 mixed.raw $out" "-t writeback -O qcow2 mixed.raw $out" ;;
    raw-qcow2-unsafe) bench "$w" mixed.raw "-t unsafe -O qcow2 mixed.raw $out" "-O qcow2 mixed.raw $out" ;;
    qcow2-raw) bench "$w" mixed.qcow2 "mixed.qcow2 $out" "-t writeback -O raw mixed.qcow2 $out" ;;
    qcow2-raw-unsafe) bench "$w" mixed.qcow2 "-t unsafe mixed.qcow2 $out" "-O raw mixed.qcow2 $out" ;;
    zlib) bench "$w" mixed.raw "-c -O qcow2 mixed.raw $out" "-c -O qcow2 mixed.raw $out" ;;
    zstd) bench "$w" mixed.raw "-c -O qcow2 -o compression_type=zstd mixed.raw $out" \
                "-c -O qcow2 -o compression_type=zstd mixed.raw $out" ;;
    zlib-read) bench "$w" mixed-zlib.qcow2 "-t unsafe mixed-zlib.qcow2 $out" "-O raw mixed-zlib.qcow2 $out" ;;
    zstd-read) bench "$w" mixed-zstd.qcow2 "-t unsafe mixed-zstd.qcow2 $out" "-O raw mixed-zstd.qcow2 $out" ;;
    chain) bench "$w" chain3.qcow2 "-O qcow2 chain3.qcow2 $out" "-t writeback -O qcow2 chain3.qcow2 $out" ;;
    sparse) bench "$w" sparse.qcow2 "-O qcow2 sparse.qcow2 $out" "-t writeback -O qcow2 sparse.qcow2 $out" ;;
    writethrough) bench "$w" mixed.raw "-t writethrough -O qcow2 mixed.raw $out" \
                        "-t writethrough -O qcow2 mixed.raw $out" ;;
    none) bench "$w" mixed.raw "-t none -O qcow2 mixed.raw $out" "-t none -O qcow2 mixed.raw $out" ;;
    nbd-src)
      nbd_server src --filter=delay -r file mixed.raw delay-read=2ms delay-extents=2ms
      bench "$w" mixed.raw "-t unsafe -O raw $uri $out" "-m 16 -W -O raw $uri $out" "$uri $out"
      kill "${pids[-1]}"
      ;;
    nbd-dst)
      nbd_server dst --filter=delay memory "${size}M" delay-write=2ms delay-zero=2ms delay-trim=2ms
      # The export is the output here ("out" is only a placeholder file); it
      # is filled once first, untimed, so that no tool pays for the server's
      # first allocation of its memory. The source is raw: nbdcopy reads no qcow2.
      nbdcopy mixed.raw "$uri"
      bench "$w" mixed.raw "-n -t unsafe mixed.raw $uri" "-n -m 16 -W -O raw mixed.raw $uri" \
        "mixed.raw $uri"
      kill "${pids[-1]}"
      ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
  esac
done
