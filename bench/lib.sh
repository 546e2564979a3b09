# shellcheck shell=bash disable=SC2034
# bench/lib.sh - helpers for bench/run.sh. Source it, don't run it.
#
# Reuses the peer benchmark harness in $SHARED_BENCH (default: ../shared/bench
# beside the work tree, i.e. /work/shared/bench): its lib.sh (servers and
# clients in their own CPU cgroups, timing, ssh/rsyncd fixtures) and the peer
# functions of its peers.sh and peers.d/bigtransfer.sh, imported by name so the
# commands measured here are exactly the ones peers.sh measures.
#
# That harness is written for `set -u` without `set -e`/pipefail (it relies on
# failing `kill`s and `grep -q` pipelines), so every call into it goes through
# bt_lenient ... bt_strict.

BT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${SHARED_BENCH:-}" ]; then
  for d in "$BT_ROOT/../shared/bench" /work/shared/bench; do
    [ -f "$d/lib.sh" ] && { SHARED_BENCH=$(cd "$d" && pwd); break; }
  done
fi
[ -n "${SHARED_BENCH:-}" ] && [ -f "$SHARED_BENCH/lib.sh" ] && [ -f "$SHARED_BENCH/peers.sh" ] || {
  echo "bench: cannot find the shared peer harness (lib.sh, peers.sh); set SHARED_BENCH=DIR" >&2
  exit 2
}

bt_lenient() { set +e +o pipefail; }
bt_strict() { set -e -o pipefail; }

bt_lenient
# shellcheck source=/dev/null
. "$SHARED_BENCH/lib.sh"
bt_strict

# bt_import_fn FILE NAME... : define the shell functions NAME... exactly as FILE
# defines them (from the line starting "NAME()" to the first line starting "}").
bt_import_fn() {
  local f=$1 n body; shift
  for n in "$@"; do
    body=$(awk -v n="$n()" 'index($0, n) == 1 {on = 1} on {print} on && /^}/ {exit}' "$f")
    [ -n "$body" ] || { echo "bench: no function $n in $f" >&2; return 1; }
    eval "$body"
  done
}

bt_import_fn "$SHARED_BENCH/peers.sh" peer_socat_b1m peer_rsyncd peer_scp
# shellcheck source=/dev/null
[ -f "$SHARED_BENCH/peers.d/bigtransfer.sh" ] && . "$SHARED_BENCH/peers.d/bigtransfer.sh"
declare -F peer_bigtransfer >/dev/null || peer_bigtransfer() {   # same as peers.d/bigtransfer.sh
  local src=$1 dst=$2 port=$3
  bench_server "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst"
  bench_wait_port "$port" || return 1
  bench_client "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" --quiet "$src"
  bench_stop_servers
  BENCH_OUT=$dst/$(basename "$src")
}

# ---- peak RSS ---------------------------------------------------------------
# Peak RSS, in kB, of the largest single process on each side:
# - client: every bench_client command runs under `/usr/bin/time -f %M` (the
#   maximum RSS of the command and of the children it waited for);
# - server: VmHWM (/proc/PID/status, the kernel's RSS high-water mark, the same
#   counter) of every process in the server cgroup, sampled every 0.5 s by a
#   background sampler and once more right before bench_stop_servers stops them
#   (VmHWM never decreases, so for a long-lived server that reading is exact;
#   short-lived forked children of a daemon are caught by the sampler).
# The sampler also watches the client cgroup, as a fallback without /usr/bin/time.

bt_hwm_max() {   # bt_hwm_max CGROUP_DIR -> BT_HWM (kB, 0 if none)
  BT_HWM=0
  local p k v _r
  [ -n "$1" ] && [ -r "$1/cgroup.procs" ] || return 0
  while read -r p; do
    { while read -r k v _r; do
        if [ "$k" = VmHWM: ]; then [ "$v" -gt "$BT_HWM" ] && BT_HWM=$v; break; fi
      done <"/proc/$p/status"; } 2>/dev/null || true
  done <"$1/cgroup.procs" 2>/dev/null || true
}

bt_rss_sampler() {   # bt_rss_sampler OUTFILE CLI_CG SRV_CG  (run in background; TERM ends it)
  set +e +o pipefail
  local out=$1 cli=$2 srv=$3 mc=0 ms=0 stop=0
  trap 'stop=1' TERM
  while :; do
    bt_hwm_max "$cli"; [ "$BT_HWM" -gt "$mc" ] && mc=$BT_HWM
    bt_hwm_max "$srv"; [ "$BT_HWM" -gt "$ms" ] && ms=$BT_HWM
    [ "$stop" = 1 ] && break
    sleep 0.5
  done
  printf '%s %s\n' "$mc" "$ms" >"$out"
}
BT_SAMPLER_PID=""
BT_TIME_OUT=""
bt_rss_start() {   # bt_rss_start OUTFILE : after bench_reset, before the peer runs
  BT_SRV_HWM_FINAL=0; BT_TIME_OUT=$1.time; : >"$BT_TIME_OUT"
  bt_rss_sampler "$1" "${CLI_CG:-}" "${SRV_CG:-}" & BT_SAMPLER_PID=$!
}
bt_rss_stop() {   # bt_rss_stop OUTFILE -> BT_CLI_KB BT_SRV_KB
  if [ -n "$BT_SAMPLER_PID" ]; then
    kill -TERM "$BT_SAMPLER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BT_SAMPLER_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$BT_SAMPLER_PID" 2>/dev/null || true
    wait "$BT_SAMPLER_PID" 2>/dev/null || true
    BT_SAMPLER_PID=""
  fi
  BT_CLI_KB=0; BT_SRV_KB=0
  [ -s "$1" ] && read -r BT_CLI_KB BT_SRV_KB <"$1"
  [ "${BT_SRV_HWM_FINAL:-0}" -gt "$BT_SRV_KB" ] && BT_SRV_KB=$BT_SRV_HWM_FINAL
  if [ -s "$BT_TIME_OUT" ]; then   # exact client figure from /usr/bin/time (max over its lines)
    BT_CLI_KB=$(awk -v m="$BT_CLI_KB" '/^[0-9]+$/ && $1 + 0 > m + 0 {m = $1} END {print m}' "$BT_TIME_OUT")
  fi
  rm -f "$1" "$BT_TIME_OUT"; BT_TIME_OUT=""
  return 0
}
# wrap the shared bench_client: the timed command runs under /usr/bin/time,
# and a bigtransfer client pins server keys in a known-hosts file of its own
# (the benchmark's servers come and go on the same ports, each with a new
# key, which a shared file would refuse as a changed key).
eval "bt_orig_bench_client() $(declare -f bench_client | tail -n +2)"
BT_KH_N=0
bench_client() {
  BT_KH_N=$((BT_KH_N + 1))
  local kh=${BENCH_HOME:-${TMPDIR:-/tmp}}/known_hosts.$$.$BT_KH_N
  rm -f "$kh"
  local rc=0
  if [ -n "${BT_TIME_OUT:-}" ] && [ -x /usr/bin/time ]; then
    BIGTRANSFER_KNOWN_HOSTS=$kh bt_orig_bench_client /usr/bin/time -a -o "$BT_TIME_OUT" -f %M "$@" || rc=$?
  else
    BIGTRANSFER_KNOWN_HOSTS=$kh bt_orig_bench_client "$@" || rc=$?
  fi
  rm -f "$kh"
  return "$rc"
}
# wrap the shared bench_stop_servers: one exact VmHWM reading of the servers first
eval "bt_orig_stop_servers() $(declare -f bench_stop_servers | tail -n +2)"
bench_stop_servers() {
  bt_hwm_max "${SRV_CG:-}"; [ "$BT_HWM" -gt "${BT_SRV_HWM_FINAL:-0}" ] && BT_SRV_HWM_FINAL=$BT_HWM
  bt_orig_stop_servers
}

# ---- misc -------------------------------------------------------------------
bt_bytes() {   # bt_bytes 256M|2G|1048576 -> bytes (K/M/G/T are binary)
  local s=$1 n u
  n=${s%[KkMmGgTt]}; u=${s#"$n"}
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "bench: bad size '$s'" >&2; return 2; }
  case $u in
    "") echo "$n" ;; [Kk]) echo $((n << 10)) ;; [Mm]) echo $((n << 20)) ;;
    [Gg]) echo $((n << 30)) ;; [Tt]) echo $((n << 40)) ;;
  esac
}
bt_mbps() { awk -v b="$1" -v n="$2" 'BEGIN{ if (n > 0) printf "%.1f", b / (n / 1e9) / 1e6; else print "-" }'; }
bt_s() { awk -v n="$1" 'BEGIN{ printf "%.2f", n / 1e9 }'; }
bt_mib() { awk -v k="$1" 'BEGIN{ if (k > 0) printf "%.1f", k / 1024; else print "-" }'; }
bt_median() { tr ' ' '\n' | awk 'NF && $1 != "-" {a[n++] = $1} END {
    if (!n) { print "-"; exit } for (i = 1; i < n; i++) { t = a[i]; for (j = i - 1; j >= 0 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    print (n % 2) ? a[(n - 1) / 2] : (a[n / 2 - 1] + a[n / 2]) / 2 }'; }

# bt_make_file PATH BYTES : random file (reused if it already has that size)
bt_make_file() {
  local p=$1 n=$2
  if [ -f "$p" ] && [ "$(stat -c %s "$p")" = "$n" ]; then return 0; fi
  mkdir -p "$(dirname "$p")"
  echo "bench: generating $p ($n random bytes)" >&2
  head -c "$n" /dev/urandom >"$p.tmp"
  mv "$p.tmp" "$p"
}

# bt_wait_log FILE REGEX TIMEOUT_S : wait until FILE has a line matching REGEX
bt_wait_log() {
  local end=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# bt_srv_stamp LOG REGEX : the server's "[2026-11-30T06:56:32.581Z]" (RFC 3339) stamps
# of the matching lines, in ns since the epoch, one a line (older logs' "[secs.ms]" too)
bt_srv_stamp() {
  local t
  sed -n "s/^\[\([0-9]*\)\.\([0-9]*\)\] .*$2.*/\1\2000000/p" "$1" 2>/dev/null || true
  sed -n "s/^\[\([0-9][0-9-]*T[0-9:.]*Z\)\] .*$2.*/\1/p" "$1" 2>/dev/null |
    while read -r t; do date -u -d "$t" +%s%N; done || true
}

# bt_json_field FILE KEY : a number or string value from the client's --json line
bt_json_field() {
  grep -m1 '^{"result"' "$1" 2>/dev/null | sed -n "s/.*\"$2\": \"\{0,1\}\([^,\"}]*\).*/\1/p"
}
