#!/usr/bin/env bash
# bench/wan.sh - bigtransfer over an emulated long link, side by side with its
# peers on the same link, in one run: the scenarios of the issue on parallel
# streams and compression, each selectable.
#
#   SCENARIO=a  50 ms each way, 1 Gbit/s, no loss: iperf3 (default, -w, -P 8),
#               bigtransfer --streams 1, auto and 4, --legacy, socat.
#   SCENARIO=b  50 ms each way, 1 Gbit/s, 0.5 % loss, CUBIC as the namespaces'
#               default (WAN_CC=cubic): iperf3, iperf3 -P 8, rsync, scp,
#               bigtransfer --streams 1 and auto. rsync and scp stop at
#               PEER_LIMIT seconds; their rate is the bytes moved by then.
#   SCENARIO=c  10 ms each way, 100 Mbit/s, no loss: a realistic compressible
#               file (a tar of /usr/share, repeated as needed and truncated to
#               SIZE) with --compress auto and off, then the same with random
#               data; prints the zstd -3 ratio of the file and the target
#               0.9 x payload rate x ratio. A row against a plaintext
#               server (--tls off) shows the per-block zstd frames of
#               before (plaintext offers no zstd stream).
#   SCENARIO=all  a, b and c in turn.
#
# Uses the shared harness's wan.sh (two private network namespaces joined by
# wanwire, a user-space delay/loss/rate relay) and prints a Markdown table per
# scenario: seconds, Mbit/s (file bytes / wall time, connection set-up
# included) and the ratio to iperf3's single stream with default settings.
# Every copy is compared with its source. Needs root (network namespaces) and
# iperf3; socat, rsync, scp/sshd and zstd are used where installed. Not part
# of the tests (it takes minutes and the link is emulated in user space on a
# shared CPU): compare within one run.
#
#   bench/wan.sh                        # scenario a, 1 GiB, 1 run
#   SCENARIO=b SIZE=128M PEER_LIMIT=30 bench/wan.sh   # a short check of b
#   SCENARIO=all RUNS=3 bench/wan.sh
#   DELAY=25 LOSS=0.5 RATE=0 bench/wan.sh   # scenario a's rows on another link
#   DEST=tmpfs bench/wan.sh             # receive into /dev/shm instead of the disk
#   SCENARIO=b ONLY=auto RUNS=3 bench/wan.sh   # only the `--streams auto` row, 3 times
#
# Env: SCENARIO (a), SIZE (1G), DELAY ms one way, LOSS % each way, RATE Mbit/s
# (0 = unlimited) (defaults: the scenario's), RUNS (1), IPERF_SECS (15),
# PEER_LIMIT (240), DEST disk|tmpfs (disk), ONLY (all rows; bt: bigtransfer's
# rows only; auto: only bigtransfer's `--streams auto` rows), BENCH_HOME (work dir, default
# /tmp/bt-bench-wan), SHARED_BENCH.
set -euo pipefail
BT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${SHARED_BENCH:-}" ]; then
  for d in "$BT_ROOT/../shared/bench" /work/shared/bench; do
    [ -f "$d/wan.sh" ] && { SHARED_BENCH=$(cd "$d" && pwd); break; }
  done
fi
WAN=${SHARED_BENCH:-}/wan.sh
[ -f "$WAN" ] || { echo "bench/wan.sh: cannot find the shared wan.sh; set SHARED_BENCH=DIR" >&2; exit 2; }
case "${1:-}" in -h|--help) sed -n '2,40p' "$0"; exit 0 ;; esac
[ "$(id -u)" = 0 ] || { echo "bench/wan.sh: needs root (ip netns)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "bench/wan.sh: iperf3 is missing (apt-get install iperf3, or ../shared/bench/setup.sh)" >&2; exit 2; }

SCENARIO=${SCENARIO:-a} SIZE=${SIZE:-1G} RUNS=${RUNS:-1} ONLY=${ONLY:-}
case "$ONLY" in ''|bt|auto) ;; *) echo "bench/wan.sh: ONLY is bt or auto, not $ONLY" >&2; exit 2 ;; esac
IPERF_SECS=${IPERF_SECS:-15} DEST=${DEST:-disk} PEER_LIMIT=${PEER_LIMIT:-240}
# The link's settings as given (each scenario has its own defaults).
U_DELAY=${DELAY:-} U_LOSS=${LOSS:-} U_RATE=${RATE:-}
case "$SCENARIO" in a|b|c|all) ;; *) echo "bench/wan.sh: SCENARIO is a, b, c or all, not $SCENARIO" >&2; exit 2 ;; esac
H=${BENCH_HOME:-/tmp/bt-bench-wan}
mkdir -p "$H"
IP_B=10.77.0.2 NS_B=bnt-wanB NS_A=bnt-wanA
if [ "$DEST" = tmpfs ]; then D=/dev/shm/bt-bench-wan-dst; else D=$H/dst; fi

(cd "$BT_ROOT" && cargo build --release -q -p bigtransfer-cli)
BT=$H/bigtransfer
cp "$BT_ROOT/target/release/bigtransfer" "$BT"
RANDOM_SRC=$H/src-$SIZE
if [ ! -f "$RANDOM_SRC" ]; then head -c "$SIZE" /dev/urandom >"$RANDOM_SRC.tmp"; mv "$RANDOM_SRC.tmp" "$RANDOM_SRC"; fi
SRC=$RANDOM_SRC
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
cleanup() { stop_server; bash "$WAN" down >/dev/null 2>&1 || true; rm -rf /dev/shm/bt-bench-wan-dst "$H/dst" "$H/rsync-dst"; }
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
ROWS=$H/rows.tsv; : >"$ROWS"; : >"$H/notes.txt"
# tool, seconds, identical, bytes moved (default: the whole file)
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-$BYTES}" >>"$ROWS"; }

# wanted LABEL: whether ONLY lets this row run.
wanted() {
  case "$ONLY" in
    bt) [[ $1 == bigtransfer* ]] ;;
    auto) [[ $1 == "bigtransfer --streams auto"* || $1 == "bigtransfer auto"* ]] ;;
    *) true ;;
  esac
}
run_iperf() {  # run_iperf LABEL [iperf3 args...]
  local label=$1; shift
  wanted "$label" || return 0
  start_server 5201 iperf3 -s -1 -B "$IP_B" -p 5201
  ip netns exec "$NS_A" timeout -k 5 $((IPERF_SECS + 30)) iperf3 -c "$IP_B" -p 5201 -t "$IPERF_SECS" -J "$@" >"$H/iperf.json"
  stop_server
  python3 - "$H/iperf.json" "$label" "$BYTES" >>"$ROWS" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))['end']['sum_received']
bps = e['bits_per_second']
# as seconds for SIZE bytes at that rate, so that every row reads the same way
print(f"{sys.argv[2]}\t{int(sys.argv[3]) * 8 / bps:.2f}\tmemory\t{sys.argv[3]}")
EOF
}
run_bt() {  # run_bt LABEL [client args...]
  local label=$1 t0 t1; shift
  wanted "$label" || return 0
  rm -rf "$D"; mkdir -p "$D"
  # shellcheck disable=SC2086 # BT_SERVER_ARGS: extra words for the server
  start_server 7000 "$BT" server --port 7000 --bind "$IP_B" --dir "$D" ${BT_SERVER_ARGS:-}
  t0=$(now)
  # A known-hosts file per run: each run's server has a new key on the same address.
  BIGTRANSFER_KNOWN_HOSTS=$H/known_hosts.$t0 ip netns exec "$NS_A" timeout -k 5 600 "$BT" client --host "$IP_B" --port 7000 --quiet --json --no-cache "$@" "$SRC" >"$H/last.json" 2>>"$H/client.log" || true
  cat "$H/last.json" >>"$H/client.log"
  t1=$(now)
  stop_server
  local ok=no; cmp -s "$SRC" "$D/$(basename "$SRC")" && ok=yes
  row "$label" "$(awk -v n=$((t1 - t0)) 'BEGIN{printf "%.2f", n/1e9}')" "$ok"
  # What the client used: streams, auto's decision, congestion control, compression.
  python3 - "$H/last.json" "$label" >>"$H/notes.txt" <<'PY' || true
import json, sys
j = json.load(open(sys.argv[1]))
print(f"- {sys.argv[2]}: streams {j.get('streams')}, congestion {j.get('congestion')}, "
      f"compressed blocks {j.get('compressed_blocks')}, wire bytes {j.get('wire_bytes')}"
      + (f" ({'; '.join(j['stream_notes'])})" if j.get('stream_notes') else ""))
PY
}
run_socat() {
  wanted socat || return 0
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

# Ends a row for a peer stopped at PEER_LIMIT: the bytes it moved by then.
limited_row() {  # limited_row LABEL T0 T1 RC FILE_GOT
  local got=0 ok=no
  [ -f "$5" ] && got=$(stat -c %s "$5")
  cmp -s "$SRC" "$5" && ok=yes
  [ "$4" = 124 ] && ok="stopped at ${PEER_LIMIT} s"
  row "$1" "$(awk -v n=$(($3 - $2)) 'BEGIN{printf "%.2f", n/1e9}')" "$ok" "$got"
}
run_rsync() {
  wanted rsync || return 0
  command -v rsync >/dev/null || { echo "rsync missing: skipped" >&2; return 0; }
  local d=$H/rsync-dst cfg=$H/rsyncd.conf t0 t1 rc=0
  rm -rf "$d"; mkdir -p "$d"
  printf 'use chroot = no\nlock file = %s/rsyncd.lock\n[dst]\n path = %s\n read only = no\n uid = root\n gid = root\n' "$H" "$d" >"$cfg"
  start_server 8730 rsync --daemon --no-detach --config="$cfg" --address="$IP_B" --port=8730
  t0=$(now)
  ip netns exec "$NS_A" timeout -k 5 "$PEER_LIMIT" rsync --inplace "$SRC" "rsync://$IP_B:8730/dst/" >>"$H/client.log" 2>&1 || rc=$?
  t1=$(now)
  stop_server
  limited_row "rsync (daemon, plain TCP)" "$t0" "$t1" "$rc" "$d/$(basename "$SRC")"
  rm -rf "$d"
}
# A private sshd in namespace B, key authentication only.
ssh_setup() {
  local s=$H/ssh
  mkdir -p "$s" /run/sshd; chmod 700 "$s"; chmod 755 /run/sshd
  [ -f "$s/host" ] || ssh-keygen -q -t ed25519 -N '' -f "$s/host"
  [ -f "$s/client" ] || ssh-keygen -q -t ed25519 -N '' -f "$s/client"
  cp "$s/client.pub" "$s/authorized_keys"
  printf 'Port 2222\nListenAddress %s\nHostKey %s/host\nPidFile none\nAuthorizedKeysFile %s/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n' "$IP_B" "$s" "$s" >"$s/sshd_config"
  printf 'Host wanb\n  HostName %s\n  Port 2222\n  User root\n  IdentityFile %s/client\n  IdentitiesOnly yes\n  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking accept-new\n  BatchMode yes\n  LogLevel ERROR\n' "$IP_B" "$s" "$s" >"$s/ssh_config"
}
run_scp() {
  wanted scp || return 0
  command -v scp >/dev/null && [ -x /usr/sbin/sshd ] || { echo "scp or sshd missing: skipped" >&2; return 0; }
  ssh_setup
  local t0 t1 rc=0
  rm -rf "$D"; mkdir -p "$D"
  start_server 2222 /usr/sbin/sshd -D -e -f "$H/ssh/sshd_config"
  t0=$(now)
  ip netns exec "$NS_A" timeout -k 5 "$PEER_LIMIT" scp -q -F "$H/ssh/ssh_config" "$SRC" "wanb:$D/scp.out" >>"$H/client.log" 2>&1 || rc=$?
  t1=$(now)
  stop_server
  limited_row "scp (OpenSSH, SFTP)" "$t0" "$t1" "$rc" "$D/scp.out"
}

# table TITLE: the rows so far as a Markdown table (median of the runs),
# then a fresh set of rows.
table() {
  echo "# bench/wan.sh scenario $1: $(basename "$SRC") ($BYTES B), ${DELAY} ms each way, loss ${LOSS} %, rate ${RATE} Mbit/s, dest $DEST, $RUNS run(s)"
  echo "# $(ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_congestion_control) (namespaces' default); tcp_wmem $(ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_wmem | tr '\t' ' '); wmem_max $wmax; ping $ping"
  echo
  python3 - "$ROWS" <<'PY' || BAD=1
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    tool, s, ok, b = line.rstrip('\n').split('\t')
    rows.setdefault(tool, []).append((float(s), ok, int(b)))
rate = lambda v: statistics.median(b * 8 / s / 1e6 for s, _, b in v)
base = rate(rows["iperf3 (default)"]) if "iperf3 (default)" in rows else None
print("| tool | s (median) | Mbit/s (each run) | vs iperf3 default | identical |")
print("|---|---:|---:|---:|---|")
bad = False
for tool, v in rows.items():
    s = statistics.median(x for x, _, _ in v)
    oks = {o for _, o, _ in v}
    bad |= 'no' in oks
    r = rate(v)
    ratio = f"{r / base:.2f}x" if base else "-"
    each = ", ".join(f"{b * 8 / x / 1e6:.0f}" for x, _, b in v) if len(v) > 1 else ""
    print(f"| {tool} | {s:.2f} | {r:.0f}{f' ({each})' if each else ''} | {ratio} | {'/'.join(sorted(oks))} |")
sys.exit(1 if bad else 0)
PY
  echo
  if [ -s "$H/notes.txt" ]; then cat "$H/notes.txt"; echo; fi
  : >"$ROWS"; : >"$H/notes.txt"
}

link_up() {  # link_up DELAY LOSS RATE
  DELAY=$1 LOSS=$2 RATE=$3
  bash "$WAN" up "$DELAY" "$LOSS" "$RATE" >/dev/null
  ping="n/a (no ping installed)"
  command -v ping >/dev/null && ping=$(ip netns exec "$NS_A" ping -c 3 -i 0.2 -q "$IP_B" | tail -1)
  wmax=$(ip netns exec "$NS_A" sysctl -n net.core.wmem_max)
}
link_down() { bash "$WAN" down >/dev/null 2>&1 || true; }

scenario_a() {
  link_up "${U_DELAY:-50}" "${U_LOSS:-0}" "${U_RATE:-1000}"
  SRC=$RANDOM_SRC BYTES=$(stat -c %s "$RANDOM_SRC")
  for r in $(seq 1 "$RUNS"); do
    echo "scenario a: run $r of $RUNS" >&2
    run_iperf "iperf3 (default)"
    run_iperf "iperf3 -w $((wmax / 1048576))M (SO_SNDBUF = wmem_max, as bigtransfer)" -w "$wmax"
    run_iperf "iperf3 -P 8 (eight streams)" -P 8
    run_bt "bigtransfer --streams 1 (protocol 2)" --streams 1
    run_bt "bigtransfer --streams auto" --streams auto
    run_bt "bigtransfer --streams 4" --streams 4
    run_bt "bigtransfer --legacy (protocol 1)" --legacy
    run_socat
  done
  table "a (target: bigtransfer auto >= 0.8 x the link)"
  link_down
}

scenario_b() {
  export WAN_CC=cubic
  link_up "${U_DELAY:-50}" "${U_LOSS:-0.5}" "${U_RATE:-1000}"
  SRC=$RANDOM_SRC BYTES=$(stat -c %s "$RANDOM_SRC")
  for r in $(seq 1 "$RUNS"); do
    echo "scenario b: run $r of $RUNS" >&2
    run_iperf "iperf3 (default)"
    run_iperf "iperf3 -P 8 (eight streams)" -P 8
    run_rsync
    run_scp
    run_bt "bigtransfer --streams 1" --streams 1
    run_bt "bigtransfer --streams auto" --streams auto
  done
  table "b (CUBIC default; target: bigtransfer auto >= 0.6 x the link and >= 5 x rsync)"
  link_down
  unset WAN_CC
}

# A tar of /usr/share, repeated until it reaches SIZE, truncated to it.
compressible_file() {
  local f=$H/usr-share-$SIZE.tar want
  want=$(numfmt --from=iec "$SIZE")
  if [ ! -f "$f" ]; then
    : >"$f.tmp"
    while [ "$(stat -c %s "$f.tmp")" -lt "$want" ]; do
      tar -cf - /usr/share 2>/dev/null | head -c $((want - $(stat -c %s "$f.tmp"))) >>"$f.tmp" || true
    done
    mv "$f.tmp" "$f"
  fi
  echo "$f"
}

scenario_c() {
  link_up "${U_DELAY:-10}" "${U_LOSS:-0}" "${U_RATE:-100}"
  local tarf ratio payload
  tarf=$(compressible_file)
  ratio=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / max(1, int(sys.argv[2])):.3f}')" \
    "$(stat -c %s "$tarf")" "$(zstd -3 -T1 -c "$tarf" | wc -c)")
  # TCP payload of a 1500-byte packet with timestamps: 1448 bytes.
  payload=$(awk -v r="$RATE" 'BEGIN{printf "%.1f", r * 1448 / 1500}')
  for r in $(seq 1 "$RUNS"); do
    echo "scenario c: run $r of $RUNS" >&2
    SRC=$tarf BYTES=$(stat -c %s "$tarf")
    run_bt "bigtransfer auto, /usr/share tar" --compress auto
    # Plaintext offers no zstd stream: per-block frames, as before it.
    BT_SERVER_ARGS="--tls off" run_bt "bigtransfer auto, plaintext server (per-block zstd frames), /usr/share tar" --compress auto
    run_bt "bigtransfer --compress off, /usr/share tar" --compress off
  done
  SRC=$tarf BYTES=$(stat -c %s "$tarf")
  table "c, compressible: zstd -3 ratio $ratio; link payload $payload Mbit/s; target for auto 0.9 x $payload x $ratio = $(awk -v p="$payload" -v r="$ratio" 'BEGIN{printf "%.0f", 0.9 * p * r}') Mbit/s"
  for r in $(seq 1 "$RUNS"); do
    SRC=$RANDOM_SRC BYTES=$(stat -c %s "$RANDOM_SRC")
    run_bt "bigtransfer auto, random" --compress auto
    run_bt "bigtransfer --compress off, random" --compress off
  done
  table "c, random data (target: auto within 5 % of off)"
  link_down
}

BAD=0
case "$SCENARIO" in
  a) scenario_a ;;
  b) scenario_b ;;
  c) scenario_c ;;
  all) scenario_a; scenario_b; scenario_c ;;
esac
exit "$BAD"
