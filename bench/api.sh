#!/usr/bin/env bash
# bench/api.sh - the same upload through the CLI, the C API and the Python
# module, alternated in one run, into one `bigtransfer server` over loopback.
#
# Prints, per client, the median and best wall time of RUNS uploads and the
# ratio of its throughput to the CLI's, also as the median of the per-round
# ratios, which one slow round cannot drag far (>= 0.95 is the goal: the libraries run
# the same engine, they must not add a copy or a wait). Every upload starts
# with an empty checksum cache and is checked with cmp.
#
#   bench/api.sh                # 1 GiB, 6 runs of each, received into tmpfs
#   SIZE=2G RUNS=7 DEST=disk bench/api.sh
#   SIZE=512M RUNS=15 bench/api.sh        # shorter copies, less exposed to slow minutes
#
# The destination defaults to tmpfs (/dev/shm) because what differs between
# the three is the client, and this machine's disk varies more from one
# upload to the next than the clients could. Builds: the CLI and libbigtransfer
# (cargo, release), ffi/examples/send.c (cc), and the Python module into
# .venv (maturin, as tests/python/run.sh does). Not part of the tests.
#
# Env: SIZE (1G) RUNS (6) DEST tmpfs|disk (tmpfs) BENCH_HOME
# (/tmp/bt-bench-api) PORT (47390) PYTHON (python3, for the venv).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in -h|--help) sed -n '2,22p' "$0"; exit 0 ;; esac
SIZE=${SIZE:-1G} RUNS=${RUNS:-6} DEST=${DEST:-tmpfs} PORT=${PORT:-47390}
H=${BENCH_HOME:-/tmp/bt-bench-api}
mkdir -p "$H"
if [ "$DEST" = tmpfs ]; then D=/dev/shm/bt-bench-api-dst; else D=$H/dst; fi

cd "$root"
cargo build --release -q -p bigtransfer-cli -p bigtransfer-ffi
BT=$H/bigtransfer; cp target/release/bigtransfer "$BT"
cc -O2 -Wall -Wextra -Werror -Iinclude ffi/examples/send.c -o "$H/send" \
   target/release/libbigtransfer.a -lpthread -ldl -lm
venv=$root/.venv
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -c 'import maturin' 2>/dev/null ||
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "maturin>=1.5,<2"
# The maturin command: the venv's own, else one on the PATH (a system-wide
# maturin's Python package, seen through a --system-site-packages venv,
# cannot find its own binary), as tests/python/run.sh does.
if [ -x "$venv/bin/maturin" ]; then
  maturin=("$venv/bin/maturin")
elif command -v maturin >/dev/null 2>&1 && maturin --version >/dev/null 2>&1; then
  maturin=("$(command -v maturin)")
else
  maturin=("$venv/bin/python" -m maturin)
fi
(export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH; unset CONDA_PREFIX
 "${maturin[@]}" develop -q --release -m python/Cargo.toml >"$H/maturin.log" 2>&1) ||
  { echo "bench/api.sh: building the Python module failed, see $H/maturin.log" >&2; exit 1; }
PY=$venv/bin/python

SRC=$H/src-$SIZE
if [ ! -f "$SRC" ]; then head -c "$SIZE" /dev/urandom >"$SRC.tmp"; mv "$SRC.tmp" "$SRC"; fi
cat "$SRC" >/dev/null   # hot cache for every client alike

SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf /dev/shm/bt-bench-api-dst
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$D"; mkdir -p "$D"
"$BT" server --port "$PORT" --bind 127.0.0.1 --dir "$D" >"$H/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$H/server.log" && break; sleep 0.05; done
grep -q listening "$H/server.log" || { echo "bench/api.sh: the server did not start" >&2; exit 1; }

ROWS=$H/rows.tsv; : >"$ROWS"
one() {  # one LABEL CMD...
  local label=$1 t0 t1; shift
  rm -f "$D/$(basename "$SRC")"
  rm -rf "$H/cache"; mkdir -p "$H/cache"; rm -f "$H/known_hosts"
  t0=$(date +%s%N)
  BIGTRANSFER_CACHE_DIR=$H/cache BIGTRANSFER_KNOWN_HOSTS=$H/known_hosts "$@" >>"$H/clients.log" 2>&1 ||
    { echo "bench/api.sh: $label failed, see $H/clients.log" >&2; exit 1; }
  t1=$(date +%s%N)
  cmp -s "$SRC" "$D/$(basename "$SRC")" || { echo "bench/api.sh: $label: copy differs" >&2; exit 1; }
  printf '%s\t%s\n' "$label" $((t1 - t0)) >>"$ROWS"
}
cli() { one "CLI (bigtransfer client)" "$BT" client --host 127.0.0.1 --port "$PORT" --quiet "$SRC"; }
capi() { one "C API (ffi/examples/send.c)" "$H/send" 127.0.0.1 "$PORT" "$SRC"; }
py() {
  one "Python (bigtransfer.send_file)" "$PY" -c \
    'import sys, bigtransfer; bigtransfer.send_file("127.0.0.1", int(sys.argv[1]), sys.argv[2])' "$PORT" "$SRC"
}
for r in $(seq 1 "$RUNS"); do
  echo "run $r of $RUNS" >&2
  # The order rotates: on this VM the first upload after a pause is at times
  # slower, and no client should always take that slot.
  case $((r % 3)) in
    1) cli; capi; py ;;
    2) capi; py; cli ;;
    0) py; cli; capi ;;
  esac
done

echo "# bench/api.sh: $(basename "$SRC") ($(stat -c %s "$SRC") B), hot cache, into $DEST, $RUNS alternated runs; $(uptime | sed 's/.*load/load/')"
echo
python3 - "$ROWS" "$(stat -c %s "$SRC")" <<'EOF'
import sys, statistics
rows = {}
seq = []
for line in open(sys.argv[1]):
    k, ns = line.rstrip('\n').split('\t')
    rows.setdefault(k, []).append(int(ns) / 1e9)
    seq.append((k, int(ns) / 1e9))
# Rounds of three consecutive copies (one per client): a slow minute tends to
# hit one round, so the median of the per-round ratios resists it best.
rounds = [dict(seq[i:i + 3]) for i in range(0, len(seq) - 2, 3)]
b = int(sys.argv[2])
cli = rows["CLI (bigtransfer client)"]
order = ["CLI (bigtransfer client)", "C API (ffi/examples/send.c)", "Python (bigtransfer.send_file)"]
rows = {k: rows[k] for k in order if k in rows}
print("| client | median s | best s | MB/s (median) | vs CLI, median | vs CLI, best | vs CLI, median of per-round ratios |")
print("|---|---:|---:|---:|---:|---:|---:|")
for k, v in rows.items():
    m, best = statistics.median(v), min(v)
    paired = [r["CLI (bigtransfer client)"] / r[k] for r in rounds if k in r and "CLI (bigtransfer client)" in r]
    pr = f"{statistics.median(paired):.2f}x" if paired else "-"
    print(f"| {k} | {m:.2f} | {best:.2f} | {b / m / 1e6:.0f} | {statistics.median(cli) / m:.2f}x | {min(cli) / best:.2f}x | {pr} |")
EOF
