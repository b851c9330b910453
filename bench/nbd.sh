#!/usr/bin/env bash
# bench/nbd.sh: NBD workloads of `vdk convert` against qemu-img and nbdcopy.
#
# A generated 256 MiB disk (random data, compressible text, written zeros
# and holes) sits behind nbdkit with the delay filter (2 ms per request:
# read, write, zero, trim, extents) on a unix socket. Every tool copies the
# same input in the same run, in alternating order; the script prints each
# one's median wall time and the ratio vdk / peer.
#
#   source  NBD export -> raw file: vdk convert -m 16 -W, vdk convert
#           (defaults), qemu-img convert -m 16 -W, nbdcopy
#   target  raw file -> NBD export (nbdkit memory, fresh per run):
#           vdk convert -n -m 16 -W, vdk convert -n, nbdcopy,
#           qemu-img convert -n -m 16 -W
#
# Nothing is flushed (vdk -t unsafe; qemu-img's and nbdcopy's defaults), so
# the figures are about the copy, not the disk.
#
#   bench/nbd.sh [-n RUNS] [-s SIZE_MIB] [-d DELAY] [source|target|all]
#   bench/nbd.sh design      the driver's design measurement: a pool of
#                            synchronous libnbd handles against vdk's aio
#                            driver, threads reading or writing the whole
#                            export in 1 MiB, 256 KiB and 64 KiB requests
# Environment: VDK (the vdk program; default build/vdk), VDK_BUILD_DIR
# (for `design`: where libvdk.so is; default build).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runs=5
size_mib=256
delay=2ms
while getopts "n:s:d:" o; do
  case $o in
    n) runs=$OPTARG ;;
    s) size_mib=$OPTARG ;; # a multiple of 64
    d) delay=$OPTARG ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
what=${1:-all}
vdk=${VDK:-$top/build/vdk}
build=${VDK_BUILD_DIR:-$top/build}

work=$(mktemp -d /tmp/vdk-bench-nbd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

delays="delay-read=$delay delay-write=$delay delay-zero=$delay delay-trim=$delay delay-extents=$delay"
nserve=0
# serve PLUGIN ARGS...: nbdkit with the delay filter on a new socket; sets
# $uri and $pid.
serve() {
  nserve=$((nserve + 1))
  local sock=$work/s$nserve.sock pidf=$work/s$nserve.pid
  # shellcheck disable=SC2086
  nbdkit --log=null -U "$sock" -P "$pidf" --filter=delay "$@" $delays
  for _ in $(seq 100); do [ -s "$pidf" ] && break; sleep 0.05; done
  pid=$(cat "$pidf")
  pids+=("$pid")
  uri="nbd+unix:///?socket=$sock"
}
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
}

# The source disk: per 64 MiB, 24 MiB random, 8 MiB text, 8 MiB written
# zeros, 24 MiB hole.
make_source() {
  local f=$1 i
  qemu-img create -q -f raw "$f" "${size_mib}M"
  for ((i = 0; i + 64 <= size_mib; i += 64)); do
    dd if=/dev/urandom of="$f" bs=1M count=24 seek=$i conv=notrunc status=none
    qemu-io -f raw -c "write -P 0x61 $((i + 24))M 8M" -c "write -z $((i + 32))M 8M" "$f" >/dev/null
  done
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

# run_set NAME... : the tools of one workload, each a function tool_NAME;
# prints medians and ratios against the first.
run_set() {
  local names=("$@") r n t0 t1
  for n in "${names[@]}"; do : >"$work/t.$n"; done
  for ((r = 0; r < runs; r++)); do
    local order=("${names[@]}")
    if ((r % 2)); then
      local rev=() i
      for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
      order=("${rev[@]}")
    fi
    for n in "${order[@]}"; do
      "prep_$n"
      t0=$(now_ms)
      "tool_$n"
      t1=$(now_ms)
      "check_$n"
      echo $((t1 - t0)) >>"$work/t.$n"
    done
  done
  for n in "${names[@]}"; do median <"$work/t.$n" >"$work/m.$n"; done
  printf '  %-34s %8s\n' "tool" "median"
  for n in "${names[@]}"; do printf '  %-34s %6s ms\n' "${label[$n]}" "$(cat "$work/m.$n")"; done
  local v
  for v in "${names[@]}"; do
    case $v in vdk*) ;; *) continue ;; esac
    for n in "${names[@]}"; do
      case $n in vdk*) continue ;; esac
      awk -v a="$(cat "$work/m.$v")" -v b="$(cat "$work/m.$n")" -v x="${label[$v]}" -v y="${label[$n]}" \
        'BEGIN {printf "  %s / %s = %.2f\n", x, y, a / b}'
    done
  done
}

declare -A label

bench_source() {
  echo "== NBD source ($size_mib MiB, $delay per request) -> raw file, $runs runs"
  serve -r file "$src"
  local s_uri=$uri
  out=$work/out.raw
  label[vdk_w]="vdk convert -m 16 -W -t unsafe"
  label[vdk]="vdk convert -t unsafe"
  label[qemu]="qemu-img convert -m 16 -W"
  label[nbdcopy]="nbdcopy"
  for n in vdk_w vdk qemu nbdcopy; do eval "prep_$n() { rm -f \"\$out\"; }; check_$n() { cmp -s \"\$src\" \"\$out\" || { echo \"$n: output differs\" >&2; exit 1; }; }"; done
  tool_vdk_w() { "$vdk" convert -q -m 16 -W -t unsafe -f raw -O raw "$s_uri" "$out"; }
  tool_vdk() { "$vdk" convert -q -t unsafe -f raw -O raw "$s_uri" "$out"; }
  tool_qemu() { qemu-img convert -m 16 -W -f raw -O raw "$s_uri" "$out"; }
  tool_nbdcopy() { nbdcopy "$s_uri" "$out"; }
  run_set vdk_w vdk qemu nbdcopy
}

bench_target() {
  echo "== raw file -> NBD target ($size_mib MiB nbdkit memory, $delay per request), $runs runs"
  label[vdk_w]="vdk convert -n -m 16 -W -t unsafe"
  label[vdk]="vdk convert -n -t unsafe"
  label[nbdcopy]="nbdcopy"
  label[qemu]="qemu-img convert -n -m 16 -W"
  for n in vdk_w vdk qemu nbdcopy; do
    eval "prep_$n() { serve memory ${size_mib}M; t_uri=\$uri; t_pid=\$pid; }"
    eval "check_$n() { qemu-img compare -q -f raw -F raw \"\$src\" \"\$t_uri\" || { echo \"$n: target differs\" >&2; exit 1; }; stop \"\$t_pid\"; }"
  done
  tool_vdk_w() { "$vdk" convert -q -n -m 16 -W -t unsafe -f raw -O raw "$src" "$t_uri"; }
  tool_vdk() { "$vdk" convert -q -n -t unsafe -f raw -O raw "$src" "$t_uri"; }
  tool_nbdcopy() { nbdcopy "$src" "$t_uri"; }
  tool_qemu() { qemu-img convert -n -m 16 -W -f raw -O raw "$src" "$t_uri"; }
  run_set vdk_w vdk nbdcopy qemu
}

# The design measurement of formats/nbd/nbd.c: threads copying the whole
# export through a pool of synchronous libnbd handles, or through vdk.
bench_design() {
  cat >"$work/design.c" <<'EOF'
#include <libnbd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "vdk.h"

static int writing;
static size_t chunk;
static uint64_t size;
static atomic_ulong pos;
static struct nbd_handle *pool[16];
static int freeidx[16], nfree;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static vdk_image *img;

static void *sync_worker(void *arg) {
  char *buf = calloc(1, chunk);
  for (uint64_t off; (off = atomic_fetch_add(&pos, chunk)) < size;) {
    pthread_mutex_lock(&mu);
    while (!nfree) pthread_cond_wait(&cv, &mu);
    int i = freeidx[--nfree];
    pthread_mutex_unlock(&mu);
    int r = writing ? nbd_pwrite(pool[i], buf, chunk, off, 0) : nbd_pread(pool[i], buf, chunk, off, 0);
    if (r < 0) { fprintf(stderr, "%s\n", nbd_get_error()); exit(1); }
    pthread_mutex_lock(&mu);
    freeidx[nfree++] = i;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
  }
  free(buf);
  return arg;
}

static void *aio_worker(void *arg) {
  char *buf = calloc(1, chunk);
  vdk_error err;
  for (uint64_t off; (off = atomic_fetch_add(&pos, chunk)) < size;) {
    int r = writing ? vdk_image_pwrite(img, buf, chunk, off, &err) : vdk_image_pread(img, buf, chunk, off, &err);
    if (r < 0) { fprintf(stderr, "%s\n", err.msg); exit(1); }
  }
  free(buf);
  return arg;
}

/* design sync|aio read|write CONNS THREADS CHUNK URI */
int main(int argc, char **argv) {
  if (argc != 7) return 2;
  int sync = !strcmp(argv[1], "sync"), conns = atoi(argv[3]), threads = atoi(argv[4]);
  writing = !strcmp(argv[2], "write");
  chunk = strtoul(argv[5], NULL, 0);
  if (sync) {
    for (int i = 0; i < conns; i++) {
      pool[i] = nbd_create();
      if (!pool[i] || nbd_connect_uri(pool[i], argv[6]) < 0) { fprintf(stderr, "%s\n", nbd_get_error()); return 1; }
      freeidx[nfree++] = i;
    }
    size = nbd_get_size(pool[0]);
  } else {
    char n[8];
    snprintf(n, sizeof n, "%d", conns);
    setenv("VDK_NBD_CONNECTIONS", n, 1);
    vdk_open_opts o = {.flags = writing ? VDK_OPEN_RDWR : 0};
    vdk_error err;
    if (vdk_image_open(argv[6], &o, &img, &err) < 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
    size = vdk_image_size(img);
  }
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  pthread_t t[64];
  for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, sync ? sync_worker : aio_worker, NULL);
  for (int i = 0; i < threads && i < 64; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.0f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
  if (img) vdk_image_close(img, NULL);
  for (int i = 0; i < conns && sync; i++) nbd_close(pool[i]);
  return 0;
}
EOF
  cc -O2 -o "$work/design" "$work/design.c" -I"$top/core" -L"$build" -lvdk -lnbd -lpthread \
     -Wl,-rpath,"$build"
  serve memory "${size_mib}M"
  echo "== design: ${size_mib} MiB nbdkit memory, $delay per request (ms, median of $runs)"
  echo "   columns: threads x request size, read or write; aio rows: at most N connections"
  local cols=("8 1048576 read" "8 1048576 write" "8 262144 read" "8 262144 write"
              "64 65536 read" "64 65536 write")
  printf '  %-22s' ""
  printf ' %11s' "8x1M rd" "8x1M wr" "8x256K rd" "8x256K wr" "64x64K rd" "64x64K wr"
  echo
  local mode c col line th ch op
  for mode in sync aio; do
    for c in 1 4; do
      line=$(printf '  %-22s' "$mode, $c connection(s)")
      for col in "${cols[@]}"; do
        read -r th ch op <<<"$col"
        local ts=()
        for ((r = 0; r < runs; r++)); do ts+=("$("$work/design" $mode $op $c $th $ch "$uri")"); done
        line+=$(printf ' %11s' "$(printf '%s\n' "${ts[@]}" | median)")
      done
      echo "$line"
    done
  done
}

for tool in nbdkit qemu-img nbdcopy; do
  command -v $tool >/dev/null || { echo "bench/nbd.sh: $tool is not installed" >&2; exit 1; }
done
if [ "$what" = design ]; then
  bench_design
  exit 0
fi
[ -x "$vdk" ] || { echo "bench/nbd.sh: no vdk at $vdk (set VDK=...)" >&2; exit 1; }
src=$work/src.raw
make_source "$src"
case $what in
  source) bench_source ;;
  target) bench_target ;;
  all) bench_source; echo; bench_target ;;
  *) echo "bench/nbd.sh: unknown workload '$what'" >&2; exit 2 ;;
esac
