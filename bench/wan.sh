#!/usr/bin/env bash
# bench/wan.sh - one upload over an emulated long fat link, side by side with
# iperf3 (one stream and -P 8) and socat on the same link, in one run;
# bigtransfer with one stream, --streams auto and --streams 4.
#
# Uses the shared harness's wan.sh (two private network namespaces joined by
# wanwire, a user-space delay/loss/rate relay) and prints a Markdown table:
# seconds, Mbit/s (file bytes / wall time, connection set-up included) and the
# ratio to iperf3's single stream with default settings. Every copy is
# compared with its source. Needs root (network namespaces) and iperf3; socat
# is optional. Not part of the tests (it takes minutes and the link is
# emulated in user space on a shared CPU): compare within one run.
#
#   bench/wan.sh                  # 512 MiB, 50 ms each way, no loss, 1 Gbit/s, 1 run
#   SIZE=1G RUNS=3 bench/wan.sh
#   DELAY=25 LOSS=0.5 RATE=0 bench/wan.sh
#   DEST=tmpfs bench/wan.sh       # receive into /dev/shm instead of the disk
#
# Env: SIZE (default 512M), DELAY ms one way (50), LOSS % each way (0), RATE
# Mbit/s (1000; 0 = unlimited), RUNS (1), IPERF_SECS (15), DEST disk|tmpfs
# (disk), BENCH_HOME (work dir, default /tmp/bt-bench-wan), SHARED_BENCH.
set -euo pipefail
BT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${SHARED_BENCH:-}" ]; then
  for d in "$BT_ROOT/../shared/bench" /work/shared/bench; do
    [ -f "$d/wan.sh" ] && { SHARED_BENCH=$(cd "$d" && pwd); break; }
  done
fi
WAN=${SHARED_BENCH:-}/wan.sh
[ -f "$WAN" ] || { echo "bench/wan.sh: cannot find the shared wan.sh; set SHARED_BENCH=DIR" >&2; exit 2; }
case "${1:-}" in -h|--help) sed -n '2,21p' "$0"; exit 0 ;; esac
[ "$(id -u)" = 0 ] || { echo "bench/wan.sh: needs root (ip netns)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "bench/wan.sh: iperf3 is missing (apt-get install iperf3, or ../shared/bench/setup.sh)" >&2; exit 2; }

SIZE=${SIZE:-512M} DELAY=${DELAY:-50} LOSS=${LOSS:-0} RATE=${RATE:-1000} RUNS=${RUNS:-1}
IPERF_SECS=${IPERF_SECS:-15} DEST=${DEST:-disk}
H=${BENCH_HOME:-/tmp/bt-bench-wan}
mkdir -p "$H"
IP_B=10.77.0.2 NS_B=bnt-wanB NS_A=bnt-wanA
if [ "$DEST" = tmpfs ]; then D=/dev/shm/bt-bench-wan-dst; else D=$H/dst; fi

(cd "$BT_ROOT" && cargo build --release -q -p bigtransfer-cli)
BT=$H/bigtransfer
cp "$BT_ROOT/target/release/bigtransfer" "$BT"
SRC=$H/src-$SIZE
if [ ! -f "$SRC" ]; then head -c "$SIZE" /dev/urandom >"$SRC.tmp"; mv "$SRC.tmp" "$SRC"; fi
BYTES=$(stat -c %s "$SRC")

SERVER_PID=
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
cleanup() { stop_server; bash "$WAN" down >/dev/null 2>&1 || true; rm -rf /dev/shm/bt-bench-wan-dst; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server PORT CMD...: runs CMD in namespace B (ip netns exec execs it, so
# the PID is the server's) and waits up to 10 s for PORT to listen.
start_server() {
  local port=$1; shift
  ip netns exec "$NS_B" "$@" >>"$H/server.log" 2>&1 </dev/null &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    ip netns exec "$NS_B" ss -ltnH "sport = :$port" | grep -q . && return 0
    sleep 0.1
  done
  echo "bench/wan.sh: server on port $port did not start" >&2; return 1
}
now() { date +%s%N; }
ROWS=$H/rows.tsv; : >"$ROWS"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$ROWS"; }   # tool, seconds, identical

run_iperf() {  # run_iperf LABEL [iperf3 args...]
  local label=$1; shift
  start_server 5201 iperf3 -s -1 -B "$IP_B" -p 5201
  ip netns exec "$NS_A" timeout -k 5 $((IPERF_SECS + 30)) iperf3 -c "$IP_B" -p 5201 -t "$IPERF_SECS" -J "$@" >"$H/iperf.json"
  stop_server
  python3 - "$H/iperf.json" "$label" "$BYTES" >>"$ROWS" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))['end']['sum_received']
bps = e['bits_per_second']
# as seconds for SIZE bytes at that rate, so that every row reads the same way
print(f"{sys.argv[2]}\t{int(sys.argv[3]) * 8 / bps:.2f}\tmemory")
EOF
}
run_bt() {  # run_bt LABEL [client args...]
  local label=$1 t0 t1; shift
  rm -rf "$D"; mkdir -p "$D"
  start_server 7000 "$BT" server --port 7000 --bind "$IP_B" --dir "$D"
  t0=$(now)
  # A known-hosts file per run: each run's server has a new key on the same address.
  BIGTRANSFER_KNOWN_HOSTS=$H/known_hosts.$t0 ip netns exec "$NS_A" timeout -k 5 600 "$BT" client --host "$IP_B" --port 7000 --quiet --no-cache "$@" "$SRC" >>"$H/client.log" 2>&1
  t1=$(now)
  stop_server
  local ok=no; cmp -s "$SRC" "$D/$(basename "$SRC")" && ok=yes
  row "$label" "$(awk -v n=$((t1 - t0)) 'BEGIN{printf "%.2f", n/1e9}')" "$ok"
}
run_socat() {
  command -v socat >/dev/null || { echo "socat missing: skipped" >&2; return 0; }
  local t0 t1 out
  rm -rf "$D"; mkdir -p "$D"; out=$D/socat.out
  start_server 7001 socat -u -b 1048576 "TCP-LISTEN:7001,bind=$IP_B,reuseaddr" "OPEN:$out,creat,trunc"
  t0=$(now)
  ip netns exec "$NS_A" timeout -k 5 600 socat -u -b 1048576 "OPEN:$SRC" "TCP:$IP_B:7001"
  # socat's receiver exits at end of stream; then make the copy durable like ours
  for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.01; done
  sync "$out"
  t1=$(now)
  stop_server
  local ok=no; cmp -s "$SRC" "$out" && ok=yes
  row "socat -b 1M, then sync" "$(awk -v n=$((t1 - t0)) 'BEGIN{printf "%.2f", n/1e9}')" "$ok"
}

bash "$WAN" up "$DELAY" "$LOSS" "$RATE" >/dev/null
ping="n/a (no ping installed)"
command -v ping >/dev/null && ping=$(ip netns exec "$NS_A" ping -c 3 -i 0.2 -q "$IP_B" | tail -1)
wmax=$(ip netns exec "$NS_A" sysctl -n net.core.wmem_max)
for r in $(seq 1 "$RUNS"); do
  echo "run $r of $RUNS" >&2
  run_iperf "iperf3 (default)"
  run_iperf "iperf3 -w $((wmax / 1048576))M (SO_SNDBUF = wmem_max, as bigtransfer)" -w "$wmax"
  run_iperf "iperf3 -P 8 (eight streams)" -P 8
  run_bt "bigtransfer --streams 1 (protocol 2)" --streams 1
  run_bt "bigtransfer --streams auto" --streams auto
  run_bt "bigtransfer --streams 4" --streams 4
  run_bt "bigtransfer --legacy (protocol 1)" --legacy
  run_socat
done

echo "# bench/wan.sh: $(basename "$SRC") ($BYTES B), ${DELAY} ms each way, loss ${LOSS} %, rate ${RATE} Mbit/s, dest $DEST, $RUNS run(s)"
echo "# $(ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_congestion_control); tcp_wmem $(ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_wmem | tr '\t' ' '); wmem_max $wmax; ping $ping"
echo
python3 - "$ROWS" "$BYTES" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    tool, s, ok = line.rstrip('\n').split('\t')
    rows.setdefault(tool, []).append((float(s), ok))
b = int(sys.argv[2])
base = statistics.median(s for s, _ in rows.get("iperf3 (default)", [(0, '')])) or None
print("| tool | s for the file (median) | Mbit/s | vs iperf3 default | identical |")
print("|---|---:|---:|---:|---|")
bad = False
for tool, v in rows.items():
    s = statistics.median(x for x, _ in v)
    oks = {o for _, o in v}
    bad |= 'no' in oks
    ratio = f"{base / s:.2f}x" if base else "-"
    print(f"| {tool} | {s:.2f} | {b * 8 / s / 1e6:.0f} | {ratio} | {'/'.join(sorted(oks))} |")
sys.exit(1 if bad else 0)
EOF
