#!/usr/bin/env bash
# bench/run.sh - throughput benchmark of bigtransfer against the tools users would
# otherwise pick, over loopback, in one run.  Results and method: docs/BENCHMARKS.md.
#
#   bench/run.sh                       # full run: 2 GiB random file, hot cache, 3 runs
#   SIZE=256M RUNS=1 bench/run.sh      # smaller / quicker
#   CACHE=cold RUNS=1 PARTS=peers bench/run.sh   # cold cache (drop_caches before each copy)
#   BIG=1 bench/run.sh                 # also an 8 GiB file in the peak-RSS flatness check
#   bench/run.sh --smoke               # everything once on 32 MiB, < 2 min (CI: bench/smoke.sh)
#
# What it does: builds target/release/bigtransfer (cargo build --release -p
# bigtransfer-cli) and benchmarks a private copy of it (so a concurrent rebuild
# cannot swap it mid-run), generates random test files, then
#   peers      bigtransfer and, where installed, socat -b 1048576, rsync daemon, scp
#              (the peer functions of the shared harness peers.sh), each copy followed
#              by a timed `sync FILE` of the received copy (FSYNC=1): the fair figure
#              is "durable" = bytes / (transfer + sync), since bigtransfer fsyncs
#              before it answers CRC32_OK.  Table: MB/s, CPU s (client+server
#              user+sys, from CPU cgroups), peak RSS of client and server, ratio to socat.
#   nodisk     where the time goes: bigtransfer and socat into tmpfs (no disk at
#              all), and bigtransfer with its fsyncs disabled by eatmydata (if installed)
#   flat       bigtransfer peak RSS for 256 MiB and SIZE (and 8 GiB with BIG=1)
#   concurrent CLIENTS (8) bigtransfer clients x CONC_SIZE (256 MiB) at once into one
#              server vs one client; socat+sync the same way as a reference
#   autocost   (not in the default PARTS) bench/autocost.sh: the defaults (--streams auto
#              --compress auto) against --streams 1 --compress off, 1 GiB (AUTOCOST_SIZE)
#              uploads into one server, alternated for AUTOCOST_ROUNDS (9) rounds: median
#              and best wall time, CPU per copy, ratios
#   resume     bigtransfer client SIGKILLed at 50 % (its first attempt is rate-limited
#              to SIZE/4 per second so the kill lands there), then resumed: MB/s of the
#              rest vs a fresh copy; rsync --append-verify via the shared resume.sh
# Loopback only; every process is started in its own CPU cgroup and stopped by PID.
#
# Env: SIZE (2G) RUNS (3) CACHE (hot|cold) FSYNC (1)
#      PEERS ("bigtransfer bigtransfer_plain bigtransfer_legacy socat_b1m rsyncd scp";
#      bigtransfer = TLS 1.3 (the default), bigtransfer_plain = protocol 2 in plaintext
#      (server --tls off), bigtransfer_legacy = --legacy)
#      PARTS ("peers nodisk flat concurrent resume") NODISK_PEERS (override the nodisk list)
#      BIG (0) CLIENTS (8) CONC_SIZE (256M) AUTOCOST_SIZE (1G) AUTOCOST_ROUNDS (9)
#      FLAT_SIZES ("256M $SIZE") BENCH_HOME (${TMPDIR:-/tmp}/bigtransfer-bench: data/,
#      work/, results/) BIGTRANSFER (use this binary, skip the build) BASE_PORT (47300)
#      BENCH_TIMEOUT (900 s per client) SHARED_BENCH (the shared harness, default
#      ../shared/bench or /work/shared/bench) KEEP (1: keep received copies)
#      VM_REPORTING (pause: in a VM with free page reporting, pause it for the run and
#      touch the free memory once, see bench/vm.sh; keep: leave it on)
# Exit status: non-zero if a bigtransfer copy failed or differs from its source, or a
# peer that reported success produced a copy that differs.  Missing peers are skipped.
set -euo pipefail

SMOKE=0
for a in "$@"; do
  case $a in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--smoke] [--help]" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$SMOKE" = 1 ]; then
  SIZE=${SIZE:-32M}; RUNS=${RUNS:-1}; CONC_SIZE=${CONC_SIZE:-4M}
  FLAT_SIZES=${FLAT_SIZES:-"8M $SIZE"}; DD_SIZE=${DD_SIZE:-64M}
  BENCH_HOME=${BENCH_HOME:-$(mktemp -d "${TMPDIR:-/tmp}/bigtransfer-smoke.XXXXXX")}
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-60}
fi
SIZE=${SIZE:-2G}; RUNS=${RUNS:-3}; CACHE=${CACHE:-hot}; FSYNC=${FSYNC:-1}
PEERS=${PEERS:-"bigtransfer bigtransfer_plain bigtransfer_legacy socat_b1m rsyncd scp"}
PARTS=${PARTS:-"peers nodisk flat concurrent resume"}
BIG=${BIG:-0}; CLIENTS=${CLIENTS:-8}; CONC_SIZE=${CONC_SIZE:-256M}
FLAT_SIZES=${FLAT_SIZES:-"256M $SIZE"}; [ "$BIG" = 1 ] && FLAT_SIZES="$FLAT_SIZES 8G"
DD_SIZE=${DD_SIZE:-1G}
BENCH_HOME=${BENCH_HOME:-${TMPDIR:-/tmp}/bigtransfer-bench}
BASE_PORT=${BASE_PORT:-47300}
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
export BENCH_WORK=$BENCH_HOME/work
DATA=$BENCH_HOME/data
OUT=${RESULTS_DIR:-$BENCH_HOME/results/$(date +%Y%m%d-%H%M%S)}
LOGDIR=$OUT/logs
mkdir -p "$BENCH_WORK" "$DATA" "$LOGDIR"
export BENCH_LOG=$LOGDIR/harness.log

# The binary the user named, before the shared harness (sourced by lib.sh)
# gives BIGTRANSFER its default of target/release/bigtransfer.
USER_BIGTRANSFER=${BIGTRANSFER:-}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
# shellcheck source=bench/vm.sh
. "$ROOT/bench/vm.sh"

SUMMARY=$OUT/summary.md
ROWS=$OUT/results.tsv
printf 'section\trun\tpeer\tbytes\twall_ns\tfsync_ns\tcli_cpu_ns\tsrv_cpu_ns\tcli_rss_kb\tsrv_rss_kb\tidentical\trc\thash_ns\trecv_ns\tnote\tmachine_cpu_ns\n' >"$ROWS"
FAILS=0
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
warn() { printf 'bench: %s\n' "$*" >&2; printf -- '- note: %s\n' "$*" >>"$SUMMARY"; }

TMPFS_WORK=""
cleanup() {
  local rc=$?
  bt_lenient
  [ -n "${BT_SAMPLER_PID:-}" ] && kill -KILL "$BT_SAMPLER_PID" 2>/dev/null
  bench_finish 2>/dev/null
  [ -n "$TMPFS_WORK" ] && rm -rf "$TMPFS_WORK"
  bt_vm_restore
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$BENCH_WORK"/dst-* "$BENCH_WORK"/shared-resume "$BENCH_WORK"/sumcache*
    if [ "$SMOKE" = 1 ] && [ -z "${KEEP_SMOKE:-}" ]; then
      if [ "$rc" = 0 ]; then case $BENCH_HOME in */bigtransfer-smoke.*) rm -rf "$BENCH_HOME" ;; esac
      else echo "bench: smoke failed (rc=$rc); logs kept in $LOGDIR" >&2; fi
    fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
if [ -n "$USER_BIGTRANSFER" ]; then
  BT_SRC_BIN=$USER_BIGTRANSFER
else
  echo "bench: cargo build --release -p bigtransfer-cli" >&2
  (cd "$ROOT" && cargo build --release -q -p bigtransfer-cli)
  BT_SRC_BIN=$ROOT/target/release/bigtransfer
fi
[ -x "$BT_SRC_BIN" ] || { echo "bench: no bigtransfer binary at $BT_SRC_BIN" >&2; exit 1; }
mkdir -p "$BENCH_HOME/bin"
cp "$BT_SRC_BIN" "$BENCH_HOME/bin/bigtransfer.tmp" && mv "$BENCH_HOME/bin/bigtransfer.tmp" "$BENCH_HOME/bin/bigtransfer"
export BIGTRANSFER=$BENCH_HOME/bin/bigtransfer

# ------------------------------------------------------------------ machine
SIZE_B=$(bt_bytes "$SIZE"); CONC_B=$(bt_bytes "$CONC_SIZE"); DD_B=$(bt_bytes "$DD_SIZE")
: >"$SUMMARY"
say "# bigtransfer benchmark $(date -u +%Y-%m-%dT%H:%MZ)$([ "$SMOKE" = 1 ] && echo ' (smoke)')"
say ""
say "- bigtransfer: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- core cli 2>/dev/null || echo ' + uncommitted changes in core/ or cli/'), $BT_SRC_BIN"
say "- machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
say "- storage: $(df -hT "$BENCH_WORK" | awk 'NR == 2 {print $1 " " $2 ", " $5 " free"}') (source, received copies and work files all on it)"
say "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# not in the smoke run: it checks that everything works, on any machine
[ "$SMOKE" = 1 ] || bt_vm_quiet
say "- $BT_VM_NOTE"
disk_speed() {   # dd of DD_SIZE zeros with conv=fdatasync -> MB/s
  local f=$BENCH_WORK/dd.bin r
  sync
  r=$(LC_ALL=C dd if=/dev/zero of="$f" bs=1M count=$((DD_B >> 20)) conv=fdatasync 2>&1 | tail -n 1)
  rm -f "$f"
  awk -v l="$r" 'BEGIN { n = split(l, a, " "); print a[n-1] " " a[n] }'
}
DD_START=$(disk_speed)
say "- disk write, dd bs=1M count=$((DD_B >> 20)) conv=fdatasync: $DD_START (start of run)"
say "- settings: SIZE=$SIZE ($SIZE_B B) RUNS=$RUNS CACHE=$CACHE FSYNC=$FSYNC PARTS=\"$PARTS\""
if [ "$CACHE" = cold ]; then
  sync
  if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo "bench: CACHE=cold needs a writable /proc/sys/vm/drop_caches (root)" >&2; exit 2; fi
fi

# ------------------------------------------------------------------ data
SRC=$DATA/bench-$SIZE.bin
bt_make_file "$SRC" "$SIZE_B"

# ------------------------------------------------------------------ peers
have_peer() {   # have_peer NAME -> 0 if its tools are installed (message otherwise)
  case $1 in
    bigtransfer_legacy) "$BIGTRANSFER" client --help 2>/dev/null | grep -q -- --legacy && return 0
                        warn "$1 skipped: this bigtransfer has no --legacy" ;;
    bigtransfer_plain) "$BIGTRANSFER" server --help 2>/dev/null | grep -q -- --tls && return 0
                       warn "$1 skipped: this bigtransfer has no server --tls" ;;
    bigtransfer*|bt_*) return 0 ;;
    socat*) command -v socat >/dev/null && return 0; warn "$1 skipped: socat not installed" ;;
    rsyncd*) command -v rsync >/dev/null && return 0; warn "$1 skipped: rsync not installed" ;;
    scp*) command -v scp >/dev/null && [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null && return 0
          warn "$1 skipped: OpenSSH client/server not installed" ;;
    *) declare -F "peer_$1" >/dev/null && return 0; warn "unknown peer $1" ;;
  esac
  return 1
}
# peers of the "nodisk" part (bigtransfer's own flags are exactly those of peers.d/bigtransfer.sh)
peer_bigtransfer_tmpfs() { peer_bigtransfer "$@"; }
peer_socat_b1m_tmpfs() { peer_socat_b1m "$@"; }
peer_bigtransfer_legacy_tmpfs() { peer_bigtransfer_legacy "$@"; }
peer_bigtransfer_nosync() {   # server under eatmydata: its fsync/fdatasync become no-ops
  local src=$1 dst=$2 port=$3
  bench_server eatmydata "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst"
  bench_wait_port "$port" || return 1
  bench_client "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" --quiet "$src"
  bench_stop_servers
  BENCH_OUT=$dst/$(basename "$src")
}
peer_bigtransfer_plain() {   # protocol 2 in plaintext: the server has TLS off (the client
  local src=$1 dst=$2 port=$3   # falls back after one refused hello, as a user's would)
  bench_server "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst" --tls off
  bench_wait_port "$port" || return 1
  bench_client "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" --quiet "$src"
  bench_stop_servers
  BENCH_OUT=$dst/$(basename "$src")
}
peer_bigtransfer_legacy() {   # the same with protocol 1 (the original wire protocol) forced
  local src=$1 dst=$2 port=$3
  bench_server "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst"
  bench_wait_port "$port" || return 1
  bench_client "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" --quiet --legacy "$src"
  bench_stop_servers
  BENCH_OUT=$dst/$(basename "$src")
}
dst_for() {   # dst_for PEER -> destination directory
  case $1 in *_tmpfs) echo "$TMPFS_WORK/dst-$1" ;; *) echo "$BENCH_WORK/dst-$1" ;; esac
}
prepare_cache() {   # sync, then cold: drop the page cache; hot: read the source into it
  sync
  if [ "$CACHE" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "$@" >/dev/null; fi
}
is_bt() { case $1 in bigtransfer*|bt_*) return 0 ;; *) return 1 ;; esac; }
check() {   # check PEER RC IDENTICAL WHAT
  if is_bt "$1"; then
    if [ "$2" != 0 ] || [ "$3" != yes ]; then FAILS=$((FAILS + 1)); warn "FAIL: $4: bigtransfer rc=$2 identical=$3 (log: $LOGDIR)"; fi
  elif [ "$2" = 0 ] && [ "$3" = NO ]; then
    FAILS=$((FAILS + 1)); warn "FAIL: $4: $1 exited 0 but its copy differs from the source"
  elif [ "$2" != 0 ]; then
    warn "$4: $1 failed (rc=$2), see $LOGDIR"
  fi
  return 0
}

# rotate RUN ITEM... : the items, starting at the (RUN-1)-th. On this VM the copy
# that comes first after the previous one's cleanup and `sync` was measurably
# slower at times (page-cache writes at ~0.5 GB/s instead of ~1.5), so no tool
# keeps the first slot in every run.
rotate() {
  local run=$1; shift
  local n=$# i; [ "$n" -gt 0 ] || return 0
  local items=("$@")
  for i in $(seq 0 $((n - 1))); do printf '%s ' "${items[$(( (i + run - 1) % n ))]}"; done
}

# machine_busy_ns: CPU time the whole machine spent busy since boot (all CPUs;
# /proc/stat user+nice+system+irq+softirq+steal, in ns). The difference over a
# copy and its sync counts what the cgroups cannot: kernel writeback threads,
# journal commits and the final sync, which do the disk work for tools that
# leave it to the kernel (socat, rsync, scp) and partly for bigtransfer too.
machine_busy_ns() {
  awk '$1 == "cpu" { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / '"$(getconf CLK_TCK)"'; exit }' /proc/stat
}

port=$BASE_PORT
# one_copy SECTION RUN PEER SRC : one timed transfer, appends a row to $ROWS
one_copy() {
  local section=$1 run=$2 p=$3 src=$4 dst label prc fs_ns=- ident=n/a rc t size hash_ns=- recv_ns=- tr tok
  label=$section-$run-$p
  dst=$(dst_for "$p"); rm -rf "$dst" "$dst.time"; mkdir -p "$dst"
  prepare_cache "$src"
  port=$(bench_free_port $((port + 2)))
  BENCH_LOG=$LOGDIR/$label.log; : >"$BENCH_LOG"
  # every copy is a first send: an empty client checksum cache (protocol 2 caches block sums)
  rm -rf "$BENCH_WORK/sumcache"; export BIGTRANSFER_CACHE_DIR=$BENCH_WORK/sumcache
  local m0 m1
  bt_lenient
  bench_reset
  m0=$(machine_busy_ns)
  bt_rss_start "$BENCH_WORK/rss.$label"
  "peer_$p" "$src" "$dst" "$port"; prc=$?
  bt_rss_stop "$BENCH_WORK/rss.$label"
  bench_finish
  bt_strict
  BENCH_LOG=$LOGDIR/harness.log
  [ -n "$BENCH_T0" ] && [ -n "$BENCH_T1" ] || { BENCH_T0=0; BENCH_T1=0; }
  size=$(stat -c %s "$src")
  if [ -n "$BENCH_OUT" ] && [ "$BENCH_OUT" != - ]; then
    if [ "$FSYNC" = 1 ] && [ -f "$BENCH_OUT" ]; then t=$(bench_now); sync "$BENCH_OUT"; fs_ns=$(( $(bench_now) - t )); fi
    m1=$(machine_busy_ns)
    if cmp -s "$src" "$BENCH_OUT"; then ident=yes; else ident=NO; fi
  fi
  rc=$prc; [ "$BENCH_CLI_RC" != 0 ] && rc=$BENCH_CLI_RC
  if is_bt "$p"; then   # phases from the server's log: hashing (client) until "receiving", then receive+sync
    tr=$(bt_srv_stamp "$LOGDIR/$label.log" ': receiving ' | tail -n 1); tok=$(bt_srv_stamp "$LOGDIR/$label.log" 'CRC32_OK' | tail -n 1)
    [ -n "$tr" ] && hash_ns=$((tr - BENCH_T0))
    [ -n "$tr" ] && [ -n "$tok" ] && recv_ns=$((tok - tr))
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$run" "$p" "$size" \
    "$((BENCH_T1 - BENCH_T0))" "$fs_ns" "$BENCH_CLI_NS" "$(( ${BENCH_SRV_NS:-0} - ${BENCH_SRV_NS0:-0} ))" \
    "$BT_CLI_KB" "$BT_SRV_KB" "$ident" "$rc" "$hash_ns" "$recv_ns" "$BENCH_NOTE" "$(( ${m1:-$m0} - m0 ))" >>"$ROWS"
  printf 'bench: %-10s run %s %-22s %7ss %8s MB/s  sync %5ss  cpu %5s+%5ss  rss %6s/%6s MiB  identical=%s rc=%s %s\n' \
    "$section" "$run" "$p" "$(bt_s $((BENCH_T1 - BENCH_T0)))" "$(bt_mbps "$size" $((BENCH_T1 - BENCH_T0)))" \
    "$( [ "$fs_ns" = - ] && echo - || bt_s "$fs_ns")" "$(bt_s "$BENCH_CLI_NS")" "$(bt_s $(( ${BENCH_SRV_NS:-0} - ${BENCH_SRV_NS0:-0} )))" \
    "$(bt_mib "$BT_CLI_KB")" "$(bt_mib "$BT_SRV_KB")" "$ident" "$rc" "$BENCH_NOTE" >&2
  check "$p" "$rc" "$ident" "$section run $run"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dst" "$dst.time"
}

# summary SECTION REF_PEER : markdown table of medians per peer over the runs of SECTION
summary() {
  awk -F'\t' -v sec="$1" -v ref="$2" '
  function med(s,   a, n, i, j, t) { n = split(s, a, " "); if (!n) return -1
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function mx(s,   a, n, i, m) { n = split(s, a, " "); m = 0; for (i = 1; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
  $1 == sec { k = $3; if (!(k in N)) O[++np] = k; N[k]++; B[k] = $4
    W[k] = W[k] " " $5; F[k] = F[k] " " ($6 == "-" ? 0 : $6); D[k] = D[k] " " ($5 + ($6 == "-" ? 0 : $6))
    C[k] = C[k] " " $7; S[k] = S[k] " " $8; T[k] = T[k] " " ($7 + $8); KC[k] = KC[k] " " $9; KS[k] = KS[k] " " $10
    if ($11 != "yes") BAD[k] = BAD[k] " " $11 "(rc " $12 ")"; else if ($12 != 0) BAD[k] = BAD[k] " rc " $12
    if ($13 != "-") H[k] = H[k] " " $13; if ($14 != "-") R[k] = R[k] " " $14; M[k] = M[k] " " ($16 == "" ? 0 : $16)
    DR[k, $2] = $5 + ($6 == "-" ? 0 : $6); if (!($2 in SEEN)) { SEEN[$2] = 1; RUNL[++nr] = $2 } }
  END {
    if (!np) exit
    printf "| peer | runs | MB/s durable (copy+sync) | MB/s copy only | copy s | sync s | CPU s client+server | CPU s per GB, client / server | CPU s whole machine, copy+sync | peak RSS client / server MiB | durable vs %s | copy-only vs %s | machine CPU vs %s | identical |\n", ref, ref, ref
    printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    if (ref in N) { rd = B[ref] / (med(D[ref]) / 1e9) / 1e6; rw = B[ref] / (med(W[ref]) / 1e9) / 1e6 }
    for (i = 1; i <= np; i++) { k = O[i]; d = B[k] / (med(D[k]) / 1e9) / 1e6; w = B[k] / (med(W[k]) / 1e9) / 1e6
      printf "| %s | %d | %.0f | %.0f | %.2f | %.2f | %.2f + %.2f = %.2f | %.2f / %.2f | %.2f | %.1f / %.1f | %s | %s | %s | %s |\n", k, N[k], d, w,
        med(W[k]) / 1e9, med(F[k]) / 1e9, med(C[k]) / 1e9, med(S[k]) / 1e9, med(T[k]) / 1e9, med(C[k]) / B[k], med(S[k]) / B[k],
        med(M[k]) / 1e9, mx(KC[k]) / 1024, mx(KS[k]) / 1024,
        (ref in N) ? sprintf("%.2f", d / rd) : "-", (ref in N) ? sprintf("%.2f", w / rw) : "-",
        (ref in N && med(M[ref]) > 0) ? sprintf("%.2f", med(M[k]) / med(M[ref])) : "-", (BAD[k] == "") ? "yes" : "NO:" BAD[k] }
    # The encrypted default against the others, within this run (the
    # target of the TLS issue: at least 0.7x plaintext and 3x scp).
    if ("bigtransfer" in N) {
      line = ""; dt = B["bigtransfer"] / (med(D["bigtransfer"]) / 1e9) / 1e6
      split("bigtransfer_plain scp rsyncd socat_b1m", vs, " ")
      for (j = 1; j <= 4; j++) if (vs[j] in N)
        line = line sprintf("%s %s %.2fx", (line == "" ? "" : ","), vs[j], dt / (B[vs[j]] / (med(D[vs[j]]) / 1e9) / 1e6))
      pr = ""
      if ("bigtransfer_plain" in N) for (j = 1; j <= nr; j++) if ((("bigtransfer", RUNL[j]) in DR) && (("bigtransfer_plain", RUNL[j]) in DR))
        pr = pr sprintf("%s%.2f", (pr == "" ? "" : " "), DR["bigtransfer_plain", RUNL[j]] / DR["bigtransfer", RUNL[j]])
      if (line != "") printf "\nEncrypted (bigtransfer, TLS 1.3) against:%s (durable MB/s, medians)%s\n", line, (pr == "" ? "" : "; against plaintext run by run: " pr)
    }
    for (i = 1; i <= np; i++) { k = O[i]; if (H[k] != "")
      printf "\n%s phases (median): client CRC-32 pass before connecting %.2f s, server receive+write+fsync+verdict %.2f s (from the server log)\n", k, med(H[k]) / 1e9, (R[k] != "" ? med(R[k]) / 1e9 : 0) }
  }' "$ROWS"
}

part_on() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if part_on peers; then
  RUN_PEERS=""; for p in $PEERS; do have_peer "$p" && RUN_PEERS="$RUN_PEERS $p"; done
  # One untimed copy first: on this VM the first copy of a run was slower
  # whichever tool it was (its client's CPU time up to 1.7x that of the later
  # ones), so it is not counted (section "warmup" of results.tsv).
  first=${RUN_PEERS# }; first=${first%% *}
  [ "$SMOKE" = 1 ] || [ -z "$first" ] || one_copy warmup 0 "$first" "$SRC"
  for run in $(seq 1 "$RUNS"); do
    for p in $(rotate "$run" $RUN_PEERS); do one_copy peers "$run" "$p" "$SRC"; done
  done
  say ""
  say "## Peers: $SIZE random file, cache $CACHE, median of $RUNS run(s)"
  say ""
  summary peers socat_b1m | tee -a "$SUMMARY"
fi

if part_on nodisk; then
  NODISK=""
  TMPFS_WORK=/dev/shm/bigtransfer-bench.$$
  if [ -d /dev/shm ] && [ "$(df -B1 --output=avail /dev/shm | tail -n 1)" -gt $((SIZE_B + (256 << 20))) ]; then
    mkdir -p "$TMPFS_WORK"; NODISK="bigtransfer_tmpfs"
    have_peer bigtransfer_legacy 2>/dev/null && NODISK="$NODISK bigtransfer_legacy_tmpfs"
    have_peer socat_b1m && NODISK="$NODISK socat_b1m_tmpfs"
  else
    warn "tmpfs runs skipped: /dev/shm missing or smaller than $SIZE"
  fi
  if command -v eatmydata >/dev/null; then NODISK="$NODISK bigtransfer_nosync"; else warn "bigtransfer_nosync skipped: eatmydata not installed (apt-get install eatmydata)"; fi
  NODISK=${NODISK_PEERS:-$NODISK}
  for run in $(seq 1 "$RUNS"); do
    for p in $(rotate "$run" $NODISK); do one_copy nodisk "$run" "$p" "$SRC"; done
  done
  rm -rf "$TMPFS_WORK"
  if [ -n "$NODISK" ]; then
    say ""
    say "## Where the time goes: no disk (tmpfs destination) and no fsync (eatmydata), $SIZE, median of $RUNS"
    say ""
    summary nodisk socat_b1m_tmpfs | tee -a "$SUMMARY"
  fi
fi

if part_on flat; then
  for s in $FLAT_SIZES; do
    f=$DATA/bench-$s.bin; [ "$s" = "$SIZE" ] && f=$SRC
    bt_make_file "$f" "$(bt_bytes "$s")"
    one_copy "flat-$s" 1 bigtransfer "$f"
  done
  say ""
  say "## Peak RSS vs file size (bigtransfer, one copy each)"
  say ""
  say "| file | MB/s durable | client peak RSS MiB (/usr/bin/time %M) | server peak RSS MiB (VmHWM) |"
  say "|---|---:|---:|---:|"
  for s in $FLAT_SIZES; do
    awk -F'\t' -v sec="flat-$s" -v s="$s" '$1 == sec { w = $5 + ($6 == "-" ? 0 : $6)
      printf "| %s | %.0f | %.1f | %.1f |\n", s, $4 / (w / 1e9) / 1e6, $9 / 1024, $10 / 1024 }' "$ROWS" | tee -a "$SUMMARY"
  done
fi

# concurrent N TOOL SRC : N clients at once into one server (bigtransfer) or N socat pairs
concurrent() {
  local n=$1 tool=$2 src=$3 label=conc-$2-$1 dst i t0 t1 c0 c1 fs_ns=0 ident=yes rc=0 r pids=() spids=() timep=() srv_ns t
  dst=$BENCH_WORK/dst-$label; rm -rf "$dst"; mkdir -p "$dst"
  prepare_cache "$src"
  BENCH_LOG=$LOGDIR/$label.log; : >"$BENCH_LOG"
  bt_lenient
  bench_reset
  bt_rss_start "$BENCH_WORK/rss.$label"
  if [ "$tool" = bigtransfer ]; then
    port=$(bench_free_port $((port + 2)))
    bench_server "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst"
    bench_wait_port "$port" || rc=1
  else
    for i in $(seq 1 "$n"); do
      port=$(bench_free_port $((port + 2)))
      bench_server socat -b 1048576 -u TCP-LISTEN:"$port",bind=127.0.0.1,reuseaddr OPEN:"$dst/c$i.bin",creat,trunc
      spids+=("${SERVER_PIDS[-1]}")
      bench_wait_port "$port" || rc=1
      eval "cport_$i=$port"
    done
  fi
  timep=(); [ -x /usr/bin/time ] && timep=(/usr/bin/time -a -o "$BT_TIME_OUT" -f %M)
  BENCH_SRV_NS0=$(bench_cg_ns "$SRV_CG"); c0=$(bench_cg_ns "$CLI_CG")
  t0=$(bench_now)
  for i in $(seq 1 "$n"); do
    if [ "$tool" = bigtransfer ]; then
      rm -rf "$BENCH_WORK/sumcache$i"
      rm -f "$BENCH_WORK/known_hosts$i"
      ( export BIGTRANSFER_CACHE_DIR=$BENCH_WORK/sumcache$i BIGTRANSFER_KNOWN_HOSTS=$BENCH_WORK/known_hosts$i; bench_in_cg "$CLI_CG" timeout -k 5 "$BENCH_TIMEOUT" "${timep[@]}" "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" \
          --json --quiet --name "c$i.bin" "$src" ) >"$LOGDIR/$label.client$i.out" 2>&1 </dev/null &
    else
      eval "t=\$cport_$i"
      ( bench_in_cg "$CLI_CG" timeout -k 5 "$BENCH_TIMEOUT" "${timep[@]}" socat -b 1048576 -u OPEN:"$src",rdonly TCP:127.0.0.1:"$t" ) \
          >"$LOGDIR/$label.client$i.out" 2>&1 </dev/null &
    fi
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; r=$?; [ "$r" != 0 ] && rc=$r; done
  for i in "${spids[@]}"; do bench_wait_pid "$i" 120 || rc=1; done   # socat receivers finish writing
  t1=$(bench_now); c1=$(bench_cg_ns "$CLI_CG")
  bench_stop_servers
  srv_ns=$(( ${BENCH_SRV_NS:-0} - ${BENCH_SRV_NS0:-0} ))
  bt_rss_stop "$BENCH_WORK/rss.$label"
  bench_finish
  bt_strict
  BENCH_LOG=$LOGDIR/harness.log
  if [ "$FSYNC" = 1 ]; then t=$(bench_now); sync "$dst"/c*.bin 2>/dev/null || true; fs_ns=$(( $(bench_now) - t )); fi
  for i in $(seq 1 "$n"); do cmp -s "$src" "$dst/c$i.bin" || ident=NO; done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\tclients=%s\n' "concurrent" 1 "$tool-x$n" "$(( n * $(stat -c %s "$src") ))" \
    "$((t1 - t0))" "$fs_ns" "$((c1 - c0))" "$srv_ns" "$BT_CLI_KB" "$BT_SRV_KB" "$ident" "$rc" "$n" >>"$ROWS"
  printf 'bench: concurrent %-16s %7ss + sync %5ss  identical=%s rc=%s\n' "$tool x$n" "$(bt_s $((t1 - t0)))" "$(bt_s "$fs_ns")" "$ident" "$rc" >&2
  if [ "$tool" = bigtransfer ]; then check bigtransfer "$rc" "$ident" "$n concurrent clients"; else check "socat" "$rc" "$ident" "$n concurrent socat"; fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dst"
}

if part_on concurrent; then
  CSRC=$DATA/bench-$CONC_SIZE.bin; [ "$CONC_SIZE" = "$SIZE" ] && CSRC=$SRC
  bt_make_file "$CSRC" "$CONC_B"
  concurrent 1 bigtransfer "$CSRC"
  concurrent "$CLIENTS" bigtransfer "$CSRC"
  if have_peer socat_b1m; then concurrent 1 socat "$CSRC"; concurrent "$CLIENTS" socat "$CSRC"; fi
  say ""
  say "## $CLIENTS clients x $CONC_SIZE at once into one server vs one client"
  say ""
  say "| what | total MB | MB/s durable (copy+sync) aggregate | MB/s copy only | sync s | CPU s client+server | peak RSS client / server MiB | identical |"
  say "|---|---:|---:|---:|---:|---:|---:|---|"
  awk -F'\t' '$1 == "concurrent" { w = $5 + $6
    printf "| %s | %.0f | %.0f | %.0f | %.2f | %.2f + %.2f | %.1f / %.1f | %s |\n", $3, $4 / 1e6, $4 / (w / 1e9) / 1e6, $4 / ($5 / 1e9) / 1e6,
      $6 / 1e9, $7 / 1e9, $8 / 1e9, $9 / 1024, $10 / 1024, ($11 == "yes" && $12 == 0) ? "yes" : "NO (rc " $12 ")" }' "$ROWS" | tee -a "$SUMMARY"
fi

# resume_bt LABEL CLIENT_ARGS... : a bigtransfer client SIGKILLed at 50 %, then resumed
# (same checksum cache dir for both attempts, as on a real machine); appends a row
resume_bt() {
  local label=$1 dst partial=0 rrc=0 icg ipid end rident jout rfrom rsent rread rrecv rok rate
  shift
  dst=$BENCH_WORK/dst-resume-$label; rm -rf "$dst"; mkdir -p "$dst"
  rm -rf "$BENCH_WORK/sumcache"; export BIGTRANSFER_CACHE_DIR=$BENCH_WORK/sumcache
  prepare_cache "$SRC"
  BENCH_LOG=$LOGDIR/resume-$label.log; : >"$BENCH_LOG"
  port=$(bench_free_port $((port + 2)))
  rate=$(( SIZE_B / 4 )); [ "$rate" -lt 1048576 ] && rate=1048576
  RESUME_RATE=$rate
  bt_lenient
  bench_reset
  bench_server "$BIGTRANSFER" server --port "$port" --bind 127.0.0.1 --dir "$dst"
  bench_wait_port "$port" || rrc=1
  icg=$(bench_cg_new int)
  rm -f "$BENCH_WORK/known_hosts.resume"
  ( export BIGTRANSFER_KNOWN_HOSTS=$BENCH_WORK/known_hosts.resume
    bench_in_cg "$icg" "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" --quiet --limit-rate "$rate" "$@" "$SRC" ) \
    >>"$BENCH_LOG" 2>&1 </dev/null &
  ipid=$!
  end=$(( $(date +%s) + 60 + 8 * SIZE_B / rate ))
  while [ "$(date +%s)" -lt "$end" ] && kill -0 "$ipid" 2>/dev/null; do
    partial=$(find "$dst/.bigtransfer" -name '*.part' -printf '%s\n' 2>/dev/null | sort -n | tail -n 1)
    [ "${partial:-0}" -ge $((SIZE_B / 2)) ] && break
    sleep 0.02
  done
  # shellcheck disable=SC2046  # one PID per word
  if [ -n "$icg" ]; then kill -KILL $(cat "$icg/cgroup.procs") 2>/dev/null; else kill -KILL "$ipid"; fi
  wait "$ipid" 2>/dev/null
  [ -n "$icg" ] && bench_cg_kill_rm "$icg"
  bt_wait_log "$BENCH_LOG" 'held part kept' 30 || rrc=1   # the server checkpointed what it got
  BENCH_LOG=$LOGDIR/resume-$label.client.out bench_client "$BIGTRANSFER" client --host 127.0.0.1 --port "$port" \
    --json --quiet "$@" "$SRC"
  bench_stop_servers
  bench_finish
  bt_strict
  BENCH_LOG=$LOGDIR/harness.log
  [ "$BENCH_CLI_RC" != 0 ] && rrc=$BENCH_CLI_RC
  rident=NO; cmp -s "$SRC" "$dst/$(basename "$SRC")" && rident=yes
  jout=$LOGDIR/resume-$label.client.out
  rfrom=$(bt_json_field "$jout" resumed_from); rsent=$(bt_json_field "$jout" bytes_sent)
  rread=$(bt_json_field "$jout" bytes_read); [ -n "$rread" ] || rread=$(bt_json_field "$jout" bytes_hashed)
  # phases of the resumed attempt: the server's last "receiving" line, then CRC32_OK
  rrecv=$(bt_srv_stamp "$LOGDIR/resume-$label.log" ': receiving ' | tail -n 1)
  rok=$(bt_srv_stamp "$LOGDIR/resume-$label.log" 'CRC32_OK' | tail -n 1)
  printf 'resume\t1\t%s\t%s\t%s\t-\t%s\t%s\t-\t-\t%s\t%s\t%s\t%s\tkilled_at=%s resumed_from=%s bytes_sent=%s client_bytes_read=%s\n' \
    "$label" "$(( SIZE_B - ${rfrom:-0} ))" "$((BENCH_T1 - BENCH_T0))" "$BENCH_CLI_NS" "$(( ${BENCH_SRV_NS:-0} - ${BENCH_SRV_NS0:-0} ))" \
    "$rident" "$rrc" "$( [ -n "$rrecv" ] && echo $((rrecv - BENCH_T0)) || echo -)" \
    "$( [ -n "$rrecv" ] && [ -n "$rok" ] && echo $((rok - rrecv)) || echo -)" \
    "${partial:-0}" "${rfrom:-?}" "${rsent:-?}" "${rread:-?}" >>"$ROWS"
  printf 'bench: resume     %-22s rest %s B in %ss rc=%s identical=%s\n' "$label" "$(( SIZE_B - ${rfrom:-0} ))" \
    "$(bt_s $((BENCH_T1 - BENCH_T0)))" "$rrc" "$rident" >&2
  check bigtransfer "$rrc" "$rident" "resume after kill ($label)"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dst"
}

if part_on autocost; then
  say ""
  say "## Loopback cost of the defaults (bench/autocost.sh)"
  say ""
  AC_RC=0 AC_SIZE=${AUTOCOST_SIZE:-1G}
  bt_make_file "$DATA/bench-$AC_SIZE.bin" "$(bt_bytes "$AC_SIZE")"
  SIZE=$AC_SIZE ROUNDS=${AUTOCOST_ROUNDS:-9} BIGTRANSFER=$BIGTRANSFER AUTOCOST_SRC=$DATA/bench-$AC_SIZE.bin \
    BENCH_HOME=$BENCH_WORK/autocost bash "$ROOT/bench/autocost.sh" >"$OUT/autocost.md" 2>>"$LOGDIR/autocost.log" || AC_RC=$?
  tee -a "$SUMMARY" <"$OUT/autocost.md"
  [ "$AC_RC" = 0 ] || { FAILS=$((FAILS + 1)); warn "FAIL: autocost (rc=$AC_RC, log: $LOGDIR/autocost.log)"; }
fi

if part_on resume; then
  one_copy resume 1 bigtransfer "$SRC"   # a fresh copy in the same conditions, for comparison
  resume_bt resumed
  if "$BIGTRANSFER" client --help 2>/dev/null | grep -q -- --no-cache; then resume_bt resumed_no_cache --no-cache; fi
  if "$BIGTRANSFER" client --help 2>/dev/null | grep -q -- --legacy; then resume_bt resumed_legacy --legacy; fi
  # rsync --append-verify through the shared resume.sh, as the reference
  RSYNC_LINE=""
  if have_peer rsyncd; then
    bt_lenient
    RUNS=1 BENCH_WORK=$BENCH_WORK/shared-resume BENCH_LOG=$LOGDIR/resume-rsync.log RESULTS=$OUT/resume-rsync.tsv \
      BASE_PORT=$((port + 10)) timeout -k 5 $((BENCH_TIMEOUT * 2)) bash "$SHARED_BENCH/resume.sh" "$SRC" rsync_append_verify \
      >"$LOGDIR/resume-rsync.out" 2>&1
    bt_strict
    RSYNC_LINE=$(awk -F'\t' 'NR > 1 && $2 == "rsync_append_verify" { print; exit }' "$OUT/resume-rsync.tsv" 2>/dev/null || true)
  fi
  say ""
  say "## Resume after a SIGKILL of the client at 50 % ($SIZE)"
  say ""
  say "| what | MB/s of the rest | rest MB | wall s | until the server got the header s | receive+fsync+verdict s | client read MB (hash + send) | CPU s client+server | identical |"
  say "|---|---:|---:|---:|---:|---:|---:|---:|---|"
  awk -F'\t' 'function f(x) { return (x == "-" || x == "") ? "-" : sprintf("%.2f", x / 1e9) }
    function kv(k,   a, n, i) { n = split($15, a, " "); for (i = 1; i <= n; i++) if (index(a[i], k "=") == 1) return substr(a[i], length(k) + 2); return "" }
    $1 == "resume" && $3 == "bigtransfer" { w = $5 + ($6 == "-" ? 0 : $6)
      printf "| fresh copy (for comparison) | %.0f | %.0f | %.2f | %s | %s | - | %.2f + %.2f | %s |\n", $4 / (w / 1e9) / 1e6, $4 / 1e6, w / 1e9,
        f($13), f($14), $7 / 1e9, $8 / 1e9, $11 }
    $1 == "resume" && $3 ~ /^resumed/ { r = kv("client_bytes_read")
      printf "| %s (killed at %.0f MB, resumed from %.0f MB) | %.0f | %.0f | %.2f | %s | %s | %s | %.2f + %.2f | %s |\n", $3, kv("killed_at") / 1e6,
        kv("resumed_from") / 1e6, $4 / ($5 / 1e9) / 1e6, $4 / 1e6, $5 / 1e9, f($13), f($14), (r ~ /^[0-9]+$/) ? sprintf("%.0f", r / 1e6) : "?",
        $7 / 1e9, $8 / 1e9, $11 }' "$ROWS" | tee -a "$SUMMARY"
  if [ -n "$RSYNC_LINE" ]; then
    awk -F'\t' '{ printf "| rsync --partial --append-verify (shared resume.sh; killed after %s s) | %s | %s | %s | - | - | - | %s + %s | %s |\n", $3, $8, $6, $5, $9, $10, $11 }' \
      <<<"$RSYNC_LINE" | tee -a "$SUMMARY"
  fi
  say ""
  say "(resumed*: the first attempt was rate-limited to $(( ${RESUME_RATE:-0} >> 20 )) MiB/s and SIGKILLed once the server's part file held >= 50 %; the rest is timed from the second client's start to its exit, including whatever it re-reads of the source. resumed_no_cache: --no-cache; resumed_legacy: --legacy, protocol 1.)"
fi

say ""
say "- disk write at end of run: $(disk_speed); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
say "- raw rows: $ROWS; logs: $LOGDIR"
if [ "$FAILS" -gt 0 ]; then
  echo "bench: $FAILS failure(s), see above" >&2
  exit 1
fi
echo "bench: OK ($SUMMARY)" >&2
