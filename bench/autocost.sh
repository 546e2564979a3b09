#!/usr/bin/env bash
# bench/autocost.sh - what the defaults (`--streams auto --compress auto`) cost
# on loopback against one stream without compression (`--streams 1 --compress
# off`): 1 GiB uploads of random data into ONE server, alternated A B A B ...
# for ROUNDS rounds (the first of each round alternating too), so that both
# see the same machine; prints the median and the best wall time of each, the
# CPU seconds of client and server per copy (CPU cgroups), and the ratios
# (time of `--streams 1` / time of the defaults: >= 0.95 is "costs nothing
# measurable", the issue's bar). Not a test: it times, on a shared machine.
#
#   bench/autocost.sh                         # 9 rounds of 1 GiB into tmpfs
#   ROUNDS=3 SIZE=256M bench/autocost.sh      # quicker
#   PARTS=autocost bench/run.sh               # the same, from the loopback bench
#
# Env: SIZE (1G) ROUNDS (9) DEST tmpfs|disk (tmpfs: /dev/shm, so that the disk's
# noise stays out) BIGTRANSFER (binary; default: cargo build --release)
# BENCH_HOME (${TMPDIR:-/tmp}/bigtransfer-autocost) PORT (47290) SHARED_BENCH
# VM_REPORTING (pause|keep: the VM's free page reporting, see bench/vm.sh).
# Every copy is compared with its source; exit non-zero if one differs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
SIZE=${SIZE:-1G} ROUNDS=${ROUNDS:-9} DEST=${DEST:-tmpfs} PORT=${PORT:-47290}
H=${BENCH_HOME:-${TMPDIR:-/tmp}/bigtransfer-autocost}
if [ -z "${SHARED_BENCH:-}" ]; then
  for d in "$ROOT/../shared/bench" /work/shared/bench; do
    [ -f "$d/lib.sh" ] && { SHARED_BENCH=$(cd "$d" && pwd); break; }
  done
fi
[ -f "${SHARED_BENCH:-}/lib.sh" ] || { echo "bench/autocost.sh: cannot find the shared lib.sh; set SHARED_BENCH=DIR" >&2; exit 2; }
mkdir -p "$H"
export BENCH_LOG=$H/harness.log BENCH_WORK=$H
# shellcheck source=/dev/null
. "$SHARED_BENCH/lib.sh"
# shellcheck source=bench/vm.sh
. "$(dirname "$0")/vm.sh"
if [ -z "${BIGTRANSFER:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p bigtransfer-cli)
  cp "$ROOT/target/release/bigtransfer" "$H/bigtransfer"
  BIGTRANSFER=$H/bigtransfer
fi
SRC=${AUTOCOST_SRC:-$H/src-$SIZE}
[ -f "$SRC" ] || { head -c "$SIZE" /dev/urandom >"$SRC.tmp"; mv "$SRC.tmp" "$SRC"; }
if [ "$DEST" = tmpfs ]; then D=/dev/shm/bigtransfer-autocost-dst; else D=$H/dst; fi
rm -rf "$D"; mkdir -p "$D"
ROWS=$H/autocost.tsv; : >"$ROWS"
# This run's server has a new key: a known-hosts file of its own.
rm -f "$H/known_hosts"

SRV_PID='' SRV_CG='' CLI_CG=''
cleanup() {
  local rc=$?
  set +e   # the server may be gone already: nothing here decides the status
  [ -n "$SRV_CG" ] && bench_cg_kill_rm "$SRV_CG"
  [ -n "$SRV_PID" ] && { kill -TERM "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null; }
  [ -n "$CLI_CG" ] && [ -d "$CLI_CG" ] && bench_cg_kill_rm "$CLI_CG"
  rm -rf "$D"
  bt_vm_restore
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bt_vm_quiet

SRV_CG=$(bench_cg_new srv)
( bench_in_cg "$SRV_CG" "$BIGTRANSFER" server --port "$PORT" --bind 127.0.0.1 --dir "$D" ) >>"$H/server.log" 2>&1 </dev/null &
SRV_PID=$!
bench_wait_port "$PORT" || exit 1
cat "$SRC" >/dev/null   # hot cache, as for every copy

# copy LABEL ARGS...: one upload, timed; appends label, wall ns, client ns, server ns, identical
copy() {
  local label=$1 t0 t1 c s0 s1 ok=no; shift
  CLI_CG=$(bench_cg_new cli)
  s0=$(bench_cg_ns "$SRV_CG")
  t0=$(bench_now)
  ( bench_in_cg "$CLI_CG" env BIGTRANSFER_KNOWN_HOSTS="$H/known_hosts" \
      "$BIGTRANSFER" client --host 127.0.0.1 --port "$PORT" --quiet --no-cache "$@" "$SRC" ) \
    >>"$H/client.log" 2>&1 </dev/null || true
  t1=$(bench_now)
  c=$(bench_cg_ns "$CLI_CG"); s1=$(bench_cg_ns "$SRV_CG")
  bench_cg_kill_rm "$CLI_CG"; CLI_CG=''
  cmp -s "$SRC" "$D/$(basename "$SRC")" && ok=yes
  rm -f "$D/$(basename "$SRC")"
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" $((t1 - t0)) "$c" $((s1 - s0)) "$ok" >>"$ROWS"
  awk -v l="$label" -v w=$((t1 - t0)) -v c="$c" -v s=$((s1 - s0)) -v ok=$ok \
    'BEGIN { printf "autocost: %-42s %6.2f s  cpu %5.2f + %5.2f s  identical=%s\n", l, w / 1e9, c / 1e9, s / 1e9, ok }' >&2
}
A="defaults (--streams auto --compress auto)" B="--streams 1 --compress off"
echo "# bench/autocost.sh: $(basename "$SRC") ($(stat -c %s "$SRC") B, random), $ROUNDS rounds A/B alternated, dest $DEST, one server, $(date -u +%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then copy "$A"; copy "$B" --streams 1 --compress off
  else copy "$B" --streams 1 --compress off; copy "$A"; fi
done
echo "# $BT_VM_NOTE"
echo "# ended $(date -u +%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$ROWS" "$A" "$B" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, c, s, ok = line.rstrip('\n').split('\t')
    rows.setdefault(label, []).append((int(wall) / 1e9, int(c) / 1e9, int(s) / 1e9, ok))
a, b = rows.get(sys.argv[2], []), rows.get(sys.argv[3], [])
if not a or not b:
    sys.exit("autocost: no copies measured")
med = lambda v, i: statistics.median(x[i] for x in v)
best = lambda v: min(x[0] for x in v)
print("| upload | copies | wall s median | wall s best | CPU s client (median) | CPU s server (median) | identical |")
print("|---|---:|---:|---:|---:|---:|---|")
for label, v in ((sys.argv[2], a), (sys.argv[3], b)):
    oks = "/".join(sorted({x[3] for x in v}))
    print(f"| {label} | {len(v)} | {med(v, 0):.3f} | {best(v):.3f} | {med(v, 1):.2f} | {med(v, 2):.2f} | {oks} |")
cpu = lambda v: statistics.median(x[1] + x[2] for x in v)
print()
print(f"ratio (time of --streams 1 / time of the defaults; >= 0.95: no measurable cost): "
      f"median {med(b, 0) / med(a, 0):.2f}, best {best(b) / best(a):.2f}; "
      f"CPU client+server per copy (median): defaults {cpu(a):.2f} s, --streams 1 {cpu(b):.2f} s, "
      f"ratio {cpu(b) / cpu(a):.2f}")
sys.exit(0 if all(x[3] == "yes" for x in a + b) else 1)
PY
