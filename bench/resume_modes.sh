#!/usr/bin/env bash
# bench/resume_modes.sh - what each resume situation costs, protocol 1 (--legacy)
# against protocol 2 (the default), on one random file of SIZE bytes, over loopback.
#
# Scenarios (each row: its own server process and a fresh storage dir; a fresh
# checksum cache dir per row unless the row says --no-cache):
#   1. fresh upload                 - baseline: time to first byte, total time
#   2. clean resume                 - client started with --limit-rate, SIGKILLed when the
#                                     held .part reaches SIZE/2, the server's "held part kept"
#                                     awaited, then resumed without a rate limit (same cache)
#   2b. clean resume, --no-cache    - the same, both runs with --no-cache
#   3. changed-source resume        - interrupted as in 2, then one byte of the SOURCE at
#                                     ~25 % (inside the held region) changed, then resumed
#   4. corrupted-block resume       - interrupted as in 2, then one byte of the server's held
#                                     .part at ~25 % flipped, then resumed
#   5. wire bit flip                - through a loopback TCP proxy (python3 stdlib) that flips
#                                     one bit at ~60 % of the client-to-server stream of its
#                                     first connection only
#
# "re-sent" = bytes_sent - (SIZE - held), where held is what the server said it kept when
# the interrupted client died (its "held part kept" log line; 0 for rows 1 and 5): the bytes
# sent beyond those that were really missing on the server. Nothing is expected here: the
# numbers are what happened; the "Checks" section lists failures and any protocol-2 row
# that re-sent more than one block.
#
# Before each row the work dir's file system is synced (sync -f), so that the previous
# row's writeback does not land in this row's times.
#
# Environment:
#   SIZE=2G          file size (K/M/G binary units)
#   WORK=/tmp        where the temporary directory is created (removed at exit; KEEP=1 keeps it)
#   OUT=bench/results/resume_modes.md   the markdown report ('' = stdout only)
#   BIGTRANSFER=target/release/bigtransfer   the binary (copied into the temp dir first)
#   BIN_DESC=text    where that binary comes from, for the report's header
#   RATE=SIZE/20     --limit-rate of the interrupted runs (half the file in ~10 s)
#   DD=1             measure the disk's fdatasync write speed (dd 1 GiB) for the header
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${SIZE:-2G}
OUT=${OUT-$ROOT/bench/results/resume_modes.md}
SRC_BIN=${BIGTRANSFER:-$ROOT/target/release/bigtransfer}
DD=${DD:-1}
KEEP=${KEEP:-0}

die() { echo "resume_modes: $*" >&2; exit 1; }
log() { echo "resume_modes: $*" >&2; }

to_bytes() {   # 64M | 2G | 1048576 -> bytes
  local s=$1 n u
  n=${s%[KkMmGgTt]}; u=${s#"$n"}
  [[ "$n" =~ ^[0-9]+$ ]] || die "bad size '$s'"
  case $u in
    "") echo "$n" ;; [Kk]) echo $((n << 10)) ;; [Mm]) echo $((n << 20)) ;;
    [Gg]) echo $((n << 30)) ;; [Tt]) echo $((n << 40)) ;;
  esac
}
BYTES=$(to_bytes "$SIZE")
[ "$BYTES" -ge $((8 << 20)) ] || die "SIZE must be at least 8M"
RATE=$(to_bytes "${RATE:-$((BYTES / 20))}")
HALF=$((BYTES / 2))
QUARTER=$((BYTES / 4 + 777))          # "the middle of the held region", not block-aligned
FLIP_AT=$((BYTES * 6 / 10))           # stream offset of the wire bit flip
CLIENT_LIMIT=$((300 + BYTES / 10000000))   # seconds: bound for one client run
WAIT_LIMIT=$((120 + BYTES / 2 / RATE * 4)) # seconds: bound for reaching SIZE/2

command -v python3 >/dev/null || die "python3 is needed (proxy, byte flips, JSON)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
if [ ! -x "$SRC_BIN" ]; then
  log "building bigtransfer-cli"
  (cd "$ROOT" && cargo build --release -p bigtransfer-cli) >&2
fi
[ -x "$SRC_BIN" ] || die "no binary at $SRC_BIN"

# ---- temp dir, processes, cleanup -------------------------------------------
mkdir -p "${WORK:-/tmp}"
T=$(mktemp -d "${WORK:-/tmp}/bt-resume-modes.XXXXXX")
PIDS=()
cleanup() {
  local p i
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BIN=$T/bigtransfer
cp "$SRC_BIN" "$BIN"                 # immune to rebuilds while we run
BIN_BUILT=$(date -u -r "$SRC_BIN" '+%Y-%m-%d %H:%M:%S UTC')
BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- core cli 2>/dev/null | wc -l || true)
if [ -n "${BIN_DESC:-}" ]; then
  BIN_FROM=$BIN_DESC
elif [ -n "${BIGTRANSFER:-}" ]; then
  BIN_FROM="given as BIGTRANSFER=$BIGTRANSFER"
else
  BIN_FROM="$SRC_BIN; work tree HEAD $COMMIT with $DIRTY uncommitted file(s) under core/ cli/ when the run started"
fi
unset BIGTRANSFER_TOKEN              # an inherited token would change what is measured
export BIGTRANSFER_CACHE_DIR=$T/cache-default   # never touch ~/.cache
# Nor ~/.config: each client run pins server keys in a file of its own (the
# servers here come and go on the same ports, each with a new key).
kh() { mktemp -u "$T/known_hosts.XXXXXX"; }
SRC=$T/src.bin

forget_pid() {   # drop $1 from PIDS
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
stop_pid() {   # stop_pid PID: SIGTERM, bounded wait, SIGKILL
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 400); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$p" 2>/dev/null; then log "pid $p ignored SIGTERM for 20 s; SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  wait "$p" 2>/dev/null || true
  forget_pid "$p"
}
wait_grep() {   # wait_grep FILE REGEX SECONDS
  local end=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$end" ]; do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# ---- helpers written into the temp dir ------------------------------------------
cat >"$T/flip.py" <<'EOF'
# flip.py FILE OFFSET: invert every bit of the byte at OFFSET, in place (size unchanged)
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off)
    b = f.read(1)
    if len(b) != 1:
        sys.exit("flip.py: %s has no byte %d" % (path, off))
    f.seek(off)
    f.write(bytes([b[0] ^ 0xFF]))
EOF

cat >"$T/flipproxy.py" <<'EOF'
# flipproxy.py PORTFILE TARGET_PORT FLIP_AT: loopback TCP proxy to 127.0.0.1:TARGET_PORT that
# flips one bit (0x10) of the byte at offset FLIP_AT of the client-to-server stream of its
# FIRST connection only. Writes its port to PORTFILE; logs to stderr; runs until killed.
import os, socket, sys, threading
portfile, target, flip_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
count = [0]

def say(msg):
    sys.stderr.write("flipproxy: " + msg + "\n")
    sys.stderr.flush()

def pump(conn, src, dst, name, flip):
    n = 0
    try:
        while True:
            buf = src.recv(1 << 20)
            if not buf:
                break
            if flip is not None and n <= flip < n + len(buf):
                b = bytearray(buf)
                b[flip - n] ^= 0x10
                buf = bytes(b)
                say("conn %d: flipped bit 0x10 of %s byte %d" % (conn, name, flip))
                flip = None
            dst.sendall(buf)
            n += len(buf)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    except OSError as e:
        say("conn %d: %s: %s" % (conn, name, e))
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    say("conn %d: %s carried %d bytes" % (conn, name, n))

def serve(c):
    with lock:
        count[0] += 1
        conn = count[0]
    try:
        s = socket.create_connection(("127.0.0.1", target), timeout=10)
        s.settimeout(None)
    except OSError as e:
        say("conn %d: cannot reach the server: %s" % (conn, e))
        c.close()
        return
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(target=pump, args=(conn, c, s, "client->server", flip_at if conn == 1 else None), daemon=True)
    down = threading.Thread(target=pump, args=(conn, s, c, "server->client", None), daemon=True)
    up.start(); down.start(); up.join(); down.join()
    c.close(); s.close()

ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(16)
with open(portfile + ".tmp", "w") as f:
    f.write("%d\n" % ls.getsockname()[1])
os.rename(portfile + ".tmp", portfile)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

# jfields FILE -> "resumed_from bytes_sent bytes_hashed bytes_read blocks_resent repairs protocol attempts first_byte seconds" or ""
jfields() {
  python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        j = json.loads(line)
        print(j.get("result", "?"), *[j[k] for k in ("resumed_from", "bytes_sent", "bytes_hashed", "bytes_read",
              "blocks_resent", "repairs", "protocol", "attempts")],
              "%.3f" % j["first_byte_seconds"], "%.3f" % j["seconds"])
        break
EOF
}
mib() { awk -v b="$1" 'BEGIN { if (b == "-" || b == "") print "-"; else { v = b / 1048576; if (v == int(v)) printf "%d", v; else printf "%.2f", v } }'; }

# ---- server -------------------------------------------------------------------------
SRV_PID=""; SRV_PORT=""
start_server() {   # start_server DIR LOG
  "$BIN" server --port 0 --bind 127.0.0.1 --dir "$1" >"$2.out" 2>"$2" &
  SRV_PID=$!; PIDS+=("$SRV_PID")
  wait_grep "$2.out" '^listening on ' 15 || { cat "$2" >&2; die "server did not start"; }
  SRV_PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\)$/\1/p' "$2.out" | head -n 1)
  [ -n "$SRV_PORT" ] || die "cannot read the port from: $(head -n 1 "$2.out")"
}

# client_args MODE CACHE -> CARGS (mode: legacy | new; cache: DIR or "none")
client_args() {
  CARGS=(--json --quiet)
  [ "$1" = legacy ] && CARGS+=(--legacy)
  if [ "$2" = none ]; then CARGS+=(--no-cache); else CARGS+=(--cache-dir "$2"); fi
}

# run_client PORT OUTBASE ARGS... : foreground, bounded; sets CL_RC
run_client() {
  local port=$1 out=$2; shift 2
  set +e
  BIGTRANSFER_KNOWN_HOSTS=$(kh) timeout -k 10 "$CLIENT_LIMIT" "$BIN" client --host 127.0.0.1 --port "$port" "$@" "$SRC" >"$out.json" 2>"$out.err"
  CL_RC=$?
  set -e
  [ "$CL_RC" = 124 ] && log "client timed out after ${CLIENT_LIMIT}s"
  return 0
}

# interrupt DIR SLOG OUTBASE ARGS... : rate-limited client, SIGKILLed once the held part
# reaches HALF; waits for the server's "held part kept"; sets HELD (bytes the server says it kept)
interrupt() {
  local dir=$1 slog=$2 out=$3 pid part sz end; shift 3
  BIGTRANSFER_KNOWN_HOSTS=$(kh) "$BIN" client --host 127.0.0.1 --port "$SRV_PORT" --limit-rate "$RATE" "$@" "$SRC" >"$out.json" 2>"$out.err" &
  pid=$!; PIDS+=("$pid")
  end=$((SECONDS + WAIT_LIMIT))
  while :; do
    sz=0
    for part in "$dir"/.bigtransfer/*.part; do
      [ -f "$part" ] && sz=$(stat -c %s "$part" 2>/dev/null || echo 0)
    done
    [ "$sz" -ge "$HALF" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true; forget_pid "$pid"
      cat "$out.err" >&2; die "the rate-limited client ended before SIZE/2 was held"
    fi
    [ "$SECONDS" -lt "$end" ] || { stop_pid "$pid"; die "SIZE/2 not reached within ${WAIT_LIMIT}s"; }
    sleep 0.02
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
  wait_grep "$slog" 'held part kept' 60 || { cat "$slog" >&2; die "no 'held part kept' in the server log"; }
  HELD=$(grep 'held part kept' "$slog" | tail -n 1 | sed -n \
    -e 's/.*held part kept: \([0-9][0-9]*\) bytes.*/\1/p' \
    -e 's/.*at byte \([0-9][0-9]*\) of [0-9]*; held part kept.*/\1/p' \
    -e 's/.*held part kept at byte \([0-9][0-9]*\).*/\1/p' | head -n 1)
  [ -n "$HELD" ] || die "cannot read the held size from: $(grep 'held part kept' "$slog" | tail -n 1)"
  PART_SIZE=$sz
  log "  killed at part size $sz; server holds $HELD bytes"
}

srv_notes() {   # a digest of what the server logged
  local f=$1 n notes=() pat label
  for pat in 'another source|starting over:another source / starting over' \
             're-read its blocks:re-read held blocks' \
             'held part does not match its checkpoint:part does not match checkpoint' \
             'arrived damaged:block arrived damaged' \
             'asking again:repair round' \
             'CRC32_ERROR:CRC32_ERROR'; do
    label=${pat#*:}; pat=${pat%%:*}
    n=$(grep -cE "$pat" "$f" 2>/dev/null || true)
    [ "${n:-0}" -gt 0 ] && notes+=("$label x$n")
  done
  local IFS=';'
  echo "${notes[*]:--}" | sed 's/;/; /g'
}

ROWS=()
CHECKS=()
# record SCENARIO MODE DIR SLOG OUTBASE HELD_BEFORE
record() {
  local sc=$1 mode=$2 dir=$3 slog=$4 out=$5 held=$6 f res rf sent hashed read br rep proto att fb secs ok same resent blk notes
  f=$(jfields "$out.json" 2>/dev/null || true)
  if [ -n "$f" ]; then
    read -r res rf sent hashed read br rep proto att fb secs <<<"$f"
  else
    res="-"; rf="-"; sent="-"; hashed="-"; read="-"; br="-"; rep="-"; proto="-"; att="-"; fb="-"; secs="-"
  fi
  if [ "$CL_RC" = 0 ] && [ "$res" = CRC32_OK ]; then ok=yes; else ok="NO (exit $CL_RC)"; fi
  if [ ! -f "$dir/src.bin" ]; then same="no file"; elif cmp -s "$SRC" "$dir/src.bin"; then same=yes; else same=NO; fi
  if [ "$sent" != "-" ]; then resent=$((sent - (BYTES - held))); else resent="-"; fi
  blk=$(sed -n 's/.*blocks of \([0-9][0-9]*\)).*/\1/p' "$slog" | head -n 1)
  notes=$(srv_notes "$slog")
  ROWS+=("| $sc | $mode | $(mib "$held") | $(mib "$rf") | $(mib "$resent") | $(mib "$sent") | $(mib "$hashed") | $br | $rep | $proto | $att | $fb | $secs | $ok | $same | $notes |")
  [ "$ok" = yes ] || CHECKS+=("$sc / $mode: did not end in CRC32_OK (exit $CL_RC): $(tail -n 2 "$out.err" | tr '\n' ' ')")
  [ "$same" = yes ] || CHECKS+=("$sc / $mode: stored file is not byte-identical to the source ($same)")
  if [ "$proto" = 2 ] && [ "$resent" != "-" ] && [ -n "$blk" ] && [ "$resent" -gt "$blk" ]; then
    CHECKS+=("$sc / $mode: protocol 2 re-sent $resent bytes, more than one block ($blk bytes)")
  fi
  if [ "$proto" = 2 ] && [ "$resent" != "-" ] && [ "$resent" -lt 0 ]; then
    CHECKS+=("$sc / $mode: sent $sent bytes, fewer than the $((BYTES - held)) the server lacked")
  fi
  case $mode in new*) [ "$proto" = 2 ] || CHECKS+=("$sc / $mode: spoke protocol $proto, not 2") ;; esac
  case $mode in legacy*) [ "$proto" = 1 ] || CHECKS+=("$sc / $mode: spoke protocol $proto, not 1") ;; esac
  log "  $sc / $mode: result=$res held=$held sent=$sent resent=$resent hashed=$hashed blocks_resent=$br repairs=$rep attempts=$att ttfb=$fb s total=$secs s cmp=$same"
}

# ---- the runs ------------------------------------------------------------------
log "temp dir $T; SIZE=$SIZE ($BYTES bytes); interrupted runs at --limit-rate $RATE"
log "generating $SRC"
head -c "$BYTES" /dev/urandom >"$SRC"

ROW=0
scenario() {   # scenario KIND MODE [no-cache]
  local kind=$1 mode=$2 nocache=${3:-} d dir slog out cache label sc held=0 pport ppid
  ROW=$((ROW + 1)); d=$T/r$ROW; mkdir -p "$d"
  dir=$d/store; slog=$d/server.log; out=$d/client
  if [ "$nocache" = no-cache ]; then cache=none; else cache=$d/cache; fi
  client_args "$mode" "$cache"
  label=$mode; [ "$nocache" = no-cache ] && label="$mode --no-cache"
  log "[$ROW] $kind / $label"
  sync -f "$T"   # no writeback left over from the previous row (or the generated file) during this one
  start_server "$dir" "$slog"
  case $kind in
    fresh)
      run_client "$SRV_PORT" "$out" "${CARGS[@]}"
      record "1. fresh upload" "$label" "$dir" "$slog" "$out" 0 ;;
    clean)
      interrupt "$dir" "$slog" "$out.cut" "${CARGS[@]}"; held=$HELD
      run_client "$SRV_PORT" "$out" "${CARGS[@]}"
      if [ "$nocache" = no-cache ]; then sc="2b. clean resume, no cache"; else sc="2. clean resume"; fi
      record "$sc" "$label" "$dir" "$slog" "$out" "$held" ;;
    changed)
      interrupt "$dir" "$slog" "$out.cut" "${CARGS[@]}"; held=$HELD
      python3 "$T/flip.py" "$SRC" "$QUARTER"
      run_client "$SRV_PORT" "$out" "${CARGS[@]}"
      record "3. changed source" "$label" "$dir" "$slog" "$out" "$held"
      python3 "$T/flip.py" "$SRC" "$QUARTER" ;;   # restore the source for the next rows
    corrupt)
      interrupt "$dir" "$slog" "$out.cut" "${CARGS[@]}"; held=$HELD
      local part
      part=$(ls "$dir"/.bigtransfer/*.part)
      python3 "$T/flip.py" "$part" "$QUARTER"
      run_client "$SRV_PORT" "$out" "${CARGS[@]}"
      record "4. corrupted held block" "$label" "$dir" "$slog" "$out" "$held" ;;
    wire)
      python3 "$T/flipproxy.py" "$d/proxy.port" "$SRV_PORT" "$FLIP_AT" 2>"$d/proxy.log" &
      ppid=$!; PIDS+=("$ppid")
      local end=$((SECONDS + 15))
      until [ -s "$d/proxy.port" ]; do
        [ "$SECONDS" -lt "$end" ] && kill -0 "$ppid" 2>/dev/null || { cat "$d/proxy.log" >&2; die "proxy did not start"; }
        sleep 0.05
      done
      pport=$(cat "$d/proxy.port")
      run_client "$pport" "$out" "${CARGS[@]}"
      stop_pid "$ppid"
      grep -q flipped "$d/proxy.log" || CHECKS+=("5. wire bit flip / $label: the proxy never reached byte $FLIP_AT (no flip)")
      sed 's/^/    /' "$d/proxy.log" >&2
      record "5. wire bit flip" "$label" "$dir" "$slog" "$out" 0 ;;
  esac
  stop_pid "$SRV_PID"
  sed 's/^/    server: /' "$slog" >&2
  rm -rf "$dir"   # free the space before the next row
}

for kind in fresh clean; do
  for mode in legacy new; do scenario "$kind" "$mode"; done
done
for mode in legacy new; do scenario clean "$mode" no-cache; done
for kind in changed corrupt wire; do
  for mode in legacy new; do scenario "$kind" "$mode"; done
done

# ---- report --------------------------------------------------------------------
DDSPEED="not measured (DD=0)"
if [ "$DD" = 1 ]; then
  log "measuring the disk: dd 1 GiB conv=fdatasync into $T"
  DDSPEED=$(LC_ALL=C dd if=/dev/zero of="$T/dd.bin" bs=1M count=1024 conv=fdatasync 2>&1 | tail -n 1)
  rm -f "$T/dd.bin"
fi
{
  echo "# Resume modes: protocol 1 (--legacy) vs protocol 2"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs, $(uname -sr); \`free -g\`:"
  echo
  free -g | sed 's/^/      /'
  echo
  echo "- disk (\`dd if=/dev/zero bs=1M count=1024 conv=fdatasync\` in the work dir): $DDSPEED"
  echo "- binary: \`$("$BIN" --version)\` built $BIN_BUILT (sha256 $BIN_SHA): $BIN_FROM"
  echo "- file: $SIZE ($BYTES random bytes), loopback (127.0.0.1); interrupted runs: \`--limit-rate $RATE\`, SIGKILL once the held \`.part\` reached $HALF bytes; byte changed/flipped at offset $QUARTER; wire bit flip at byte $FLIP_AT of the first connection's client-to-server stream (python proxy, so that row's times include the proxy)"
  echo "- held = bytes the server said it kept after the kill (\"held part kept\" log line); re-sent = bytes_sent - (size - held), i.e. bytes sent beyond those really missing; sizes in MiB; time to first byte and total in seconds (client \`--json\`)"
  echo
  echo "| scenario | mode | held (MiB) | resumed_from (MiB) | re-sent (MiB) | bytes_sent (MiB) | bytes_hashed (MiB) | blocks_resent | repairs | protocol | attempts | first byte (s) | total (s) | CRC32_OK | cmp identical | server log |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Checks"
  echo
  if [ "${#CHECKS[@]}" = 0 ]; then
    echo "- every row ended in CRC32_OK with a byte-identical file; no protocol-2 row re-sent more than one block"
  else
    printf -- '- %s\n' "${CHECKS[@]}"
  fi
} >"$T/report.md"

cat "$T/report.md"
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  cp "$T/report.md" "$OUT"
  log "wrote $OUT"
fi
