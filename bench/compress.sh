#!/usr/bin/env bash
# bench/compress.sh - loopback: `--compress auto` against `--compress off` (and
# `zstd:3` for reference) on random and on compressible data, in one run.
#
#   bench/compress.sh                 # 1 GiB each, 2 runs, modes alternated
#   SIZE=256M RUNS=1 bench/compress.sh
#   RATE=100mbit SIZE=256M RUNS=1 bench/compress.sh   # a 100 Mbit/s link (needs root)
#
# The compressible file is a tar of /usr/share repeated up to SIZE (realistic:
# text, man pages, images; blocks are compressed independently, so repeating
# does not flatter the ratio); the random one is /dev/urandom. Each copy is one
# `bigtransfer client --json --no-cache` to a server on 127.0.0.1 storing on
# disk (it fsyncs before CRC32_OK); the figure is file bytes / wall time of the
# client, with its CPU seconds (user + sys) and, from its --json, the wire bytes,
# the compressed blocks and the congestion control. With RATE, everything runs
# in a private network namespace whose loopback is limited to RATE by a tbf
# qdisc (no delay: the policy only needs the link to be the bottleneck), so
# nothing outside the script sees it.
# Env: SIZE (1G) RUNS (2) MODES ("auto off zstd:3") BIGTRANSFER (binary; default
# target/release/bigtransfer, built if missing) STORE (the server's directory;
# /dev/shm/... takes the disk out) BENCH_HOME (${TMPDIR:-/tmp}/bigtransfer-compress)
# Loopback only; the server is stopped by its PID.
set -euo pipefail
if [ -n "${RATE:-}" ] && [ -z "${BT_IN_NETNS:-}" ]; then
  exec unshare -n env BT_IN_NETNS=1 bash "$0" "$@"
fi
if [ -n "${BT_IN_NETNS:-}" ]; then
  # An Ethernet-sized MTU: tbf drops every packet larger than its burst.
  ip link set lo mtu 1500 up
  tc qdisc add dev lo root tbf rate "$RATE" burst 64k latency 100ms
  echo "link: loopback in a private namespace, $(tc qdisc show dev lo)"
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1G}; RUNS=${RUNS:-2}; MODES=${MODES:-"auto off zstd:3"}
BIN=${BIGTRANSFER:-$ROOT/target/release/bigtransfer}
[ -x "$BIN" ] || cargo build --release -p bigtransfer-cli --manifest-path "$ROOT/Cargo.toml"
H=${BENCH_HOME:-${TMPDIR:-/tmp}/bigtransfer-compress}
ST=${STORE:-$H/store}
mkdir -p "$H/data" "$ST"
BYTES=$(numfmt --from=iec "$SIZE")

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
if [ "$(size_of "$H/data/random.bin")" != "$BYTES" ]; then
  head -c "$BYTES" /dev/urandom > "$H/data/random.bin"
fi
if [ "$(size_of "$H/data/usr-share.tar")" != "$BYTES" ]; then
  : > "$H/data/usr-share.tar"
  while [ "$(size_of "$H/data/usr-share.tar")" -lt "$BYTES" ]; do
    tar cf - -C / usr/share 2>/dev/null >> "$H/data/usr-share.tar" || true
  done
  truncate -s "$BYTES" "$H/data/usr-share.tar"
fi
if command -v zstd >/dev/null; then
  z=$(zstd -3 -q -c "$H/data/usr-share.tar" | wc -c)
  echo "zstd -3 ratio of usr-share.tar: $(echo "scale=2; $BYTES / $z" | bc)"
fi

LOG="$H/server.log"
"$BIN" server --port 0 --bind 127.0.0.1 --dir "$ST" > "$LOG" 2>&1 &
SRV=$!
trap 'kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null || true' EXIT
PORT=
for _ in $(seq 100); do
  PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "server did not start: $(cat "$LOG")" >&2; exit 1; }

num() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2"; }
printf '%-15s %-7s %4s %9s %9s %9s %13s %7s %s\n' file mode run seconds 'MiB/s' client_cpu wire_bytes blocks congestion
for run in $(seq "$RUNS"); do
  for f in random.bin usr-share.tar; do
    for m in $MODES; do
      out="$H/out.json"
      start=$(date +%s.%N)
      /usr/bin/time -o "$H/cpu" -f '%U %S' timeout 900 "$BIN" client --host 127.0.0.1 --port "$PORT" --json --quiet --no-cache \
        --compress "$m" --name "copy-$f" "$H/data/$f" > "$out"
      end=$(date +%s.%N)
      cmp -s "$H/data/$f" "$ST/copy-$f" || { echo "copy of $f differs" >&2; exit 1; }
      rm -f "$ST/copy-$f"
      secs=$(echo "$end - $start" | bc)
      rate=$(echo "scale=1; $BYTES / 1048576 / $secs" | bc)
      cpu=$(awk '{print $1 + $2}' "$H/cpu")
      cc=$(sed -n 's/.*"congestion": "\{0,1\}\([a-z0-9]*\).*/\1/p' "$out")
      printf '%-15s %-7s %4s %9.2f %9s %9s %13s %7s %s\n' "$f" "$m" "$run" "$secs" "$rate" "$cpu" \
        "$(num wire_bytes "$out")" "$(num compressed_blocks "$out")" "$cc"
    done
  done
done
