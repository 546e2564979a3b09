#!/usr/bin/env bash
# bench/profile.sh - where bigtransfer spends its time on one loopback copy: the
# system calls of client and server (`strace -c -w -f`: wall time per call, so
# blocking in fdatasync or recv shows up) and a CPU profile (`perf record -g`).
# Then the client's CRC-32 pass alone, and how fast read() copies from the page cache
# into a buffer at page offset 0 vs 16. Used for the analysis in docs/BENCHMARKS.md;
# not part of bench/run.sh.
#
#   bench/profile.sh                 # 2 GiB file from bench/run.sh's data dir (made if missing)
#   SIZE=256M bench/profile.sh
# Env: SIZE (2G), BENCH_HOME (${TMPDIR:-/tmp}/bigtransfer-bench), BIGTRANSFER (binary;
#      default: build target/release/bigtransfer), PORT (47290), OUT (results dir).
# Needs strace and/or perf (each part is skipped with a message when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-2G}
BENCH_HOME=${BENCH_HOME:-${TMPDIR:-/tmp}/bigtransfer-bench}
OUT=${OUT:-$BENCH_HOME/results/profile-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-47290}
mkdir -p "$OUT" "$BENCH_HOME/data"
bytes() { local n=${1%[KMGkmg]}; case ${1#"$n"} in [Kk]) echo $((n << 10));; [Mm]) echo $((n << 20));; [Gg]) echo $((n << 30));; *) echo "$n";; esac; }
SRC=$BENCH_HOME/data/bench-$SIZE.bin
if ! [ -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != "$(bytes "$SIZE")" ]; then
  head -c "$(bytes "$SIZE")" /dev/urandom >"$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
if [ -z "${BIGTRANSFER:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p bigtransfer-cli)
  BIGTRANSFER=$ROOT/target/release/bigtransfer
fi
DST=$BENCH_HOME/work/profile-dst
SRV_PID=""; AUX_PID=""
cleanup() {
  [ -n "$AUX_PID" ] && kill -INT "$AUX_PID" 2>/dev/null
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null
  rm -rf "$DST"
  return 0
}
trap cleanup EXIT

wait_listen() {   # wait_listen LOG : until the server printed "listening on" (10 s)
  local _
  for _ in $(seq 1 200); do grep -q '^listening on' "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "profile: server did not start, see $1" >&2; return 1
}
wait_gone() {     # wait_gone PID SECONDS
  local _
  for _ in $(seq 1 $(($2 * 20))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  return 1
}
stop_server() {
  kill -TERM "$SRV_PID" 2>/dev/null || true
  wait_gone "$SRV_PID" 20 || kill -KILL "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
}
fresh() { rm -rf "$DST"; mkdir -p "$DST"; sync; cat "$SRC" >/dev/null; }
# Each client pins server keys in a file of its own (every run's server has
# a new key on the same port).
client() { BIGTRANSFER_KNOWN_HOSTS=$(mktemp -u "${TMPDIR:-/tmp}/bt-profile-kh.XXXXXX") timeout -k 5 900 "$@" "$BIGTRANSFER" client --host 127.0.0.1 --port "$PORT" --json --quiet "$SRC"; }

if command -v strace >/dev/null; then
  echo "== strace -c -w -f (wall time per system call; strace itself slows the copy)" | tee "$OUT/strace.txt"
  fresh
  "$BIGTRANSFER" server --port "$PORT" --bind 127.0.0.1 --dir "$DST" >"$OUT/server1.out" 2>&1 &
  SRV_PID=$!
  wait_listen "$OUT/server1.out"
  strace -c -w -f -p "$SRV_PID" -o "$OUT/strace-server.txt" 2>/dev/null &
  AUX_PID=$!
  sleep 0.5
  client strace -c -w -f -o "$OUT/strace-client.txt" | tee -a "$OUT/strace.txt"
  kill -INT "$AUX_PID" 2>/dev/null || true
  wait_gone "$AUX_PID" 30 || true
  wait "$AUX_PID" 2>/dev/null || true
  AUX_PID=""
  stop_server
  for side in client server; do
    { echo "-- $side"; head -n 14 "$OUT/strace-$side.txt" || true; } | tee -a "$OUT/strace.txt"
  done
else
  echo "profile: strace not installed, skipped" >&2
fi

if command -v perf >/dev/null; then
  echo "== perf record -g (CPU samples, 999 Hz)" | tee "$OUT/perf.txt"
  fresh
  "$BIGTRANSFER" server --port "$PORT" --bind 127.0.0.1 --dir "$DST" >"$OUT/server2.out" 2>&1 &
  SRV_PID=$!
  wait_listen "$OUT/server2.out"
  perf record -q -F 999 -g -p "$SRV_PID" -o "$OUT/perf-server.data" >/dev/null 2>&1 &
  AUX_PID=$!
  sleep 0.5
  client perf record -q -F 999 -g -o "$OUT/perf-client.data" -- | tee -a "$OUT/perf.txt"
  kill -INT "$AUX_PID" 2>/dev/null || true
  wait_gone "$AUX_PID" 30 || true
  wait "$AUX_PID" 2>/dev/null || true
  AUX_PID=""
  stop_server
  for side in client server; do
    { echo "-- $side: top symbols (self), incl. kernel"
      perf report -i "$OUT/perf-$side.data" --stdio --no-children --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -n 15 || true
    } | tee -a "$OUT/perf.txt"
  done
else
  echo "profile: perf not installed, skipped" >&2
fi
# protocol 1 hashes the whole file before connecting; protocol 2 hashes while sending
HASH_ARGS=(); "$BIGTRANSFER" client --help 2>/dev/null | grep -q -- --legacy && HASH_ARGS=(--legacy --no-cache)
echo "== the client's CRC-32 pass alone (client ${HASH_ARGS[*]} against a closed port, --retries 0), 3 times" | tee "$OUT/hash.txt"
cat "$SRC" >/dev/null
for _ in 1 2 3; do
  /usr/bin/time -f "%e s wall, %U s user, %S s sys" "$BIGTRANSFER" client --host 127.0.0.1 --port 1 --retries 0 --quiet \
    "${HASH_ARGS[@]}" "$SRC" 2>&1 | tail -n 1 | tee -a "$OUT/hash.txt" || true
done

if command -v python3 >/dev/null; then
  # read() from the page cache into a 1 MiB buffer at page offset 0 vs 16 (where a
  # heap-allocated 1 MiB Vec lands: glibc puts a 16-byte header before mmap'd chunks)
  echo "== read() of $SIZE from the page cache into a 1 MiB buffer at page offset 0 vs 16" | tee "$OUT/align.txt"
  python3 - "$SRC" <<'PY' | tee -a "$OUT/align.txt"
import mmap, os, sys, time
path = sys.argv[1]
for off in (0, 16, 0, 16):
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(-1, (1 << 20) + 4096)
    mv = memoryview(m)[off:off + (1 << 20)]
    t = time.perf_counter(); n = 0
    while True:
        k = os.readv(fd, [mv])
        if k == 0:
            break
        n += k
    el = time.perf_counter() - t
    os.close(fd); mv.release(); m.close()
    print(f"buffer at page offset {off:2d}: {el:.3f} s, {n / el / 1e9:.1f} GB/s")
PY
fi
echo "profile: results in $OUT" >&2
