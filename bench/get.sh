#!/usr/bin/env bash
# bench/get.sh - a download (`bigtransfer get`) against the upload of the same
# file, same server, alternated, over loopback; by default as a user runs them
# (TLS on, --compress auto, --streams auto: one stream on loopback).
#
# Each round: upload SIZE random bytes (the stored file replaced) and get it back
# (the previous copy replaced), in alternating order; the seconds of each come
# from --json. Prints every round and the medians with their ratio (get throughput / upload throughput).
#
# Environment:
#   SIZE=1G     file size (K/M/G binary units; 2G needs 6 GiB of /tmp for a moment)
#   ROUNDS=5    rounds
#   COMPRESS=auto   --compress of both commands (auto|off|zstd:L)
#   TLS=on      on: the default; off: the server runs --tls off (plaintext)
#   BIN=...     the binary [default: target/release/bigtransfer, built if missing]
#   VM_REPORTING=pause   in a VM with free page reporting: paused for the run (bench/vm.sh); keep: left on
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
ROUNDS=${ROUNDS:-5}
COMPRESS=${COMPRESS:-auto}
TLS=${TLS:-on}
BIN=${BIN:-target/release/bigtransfer}
[ -x "$BIN" ] || cargo build --release -p bigtransfer-cli >&2
work=$(mktemp -d /tmp/bt-bench-get.XXXXXX)
server_pid=
# shellcheck source=bench/vm.sh
. bench/vm.sh
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
    bt_vm_restore
}
trap cleanup EXIT
head -c "$SIZE" /dev/urandom > "$work/src.bin"
size_b=$(stat -c %s "$work/src.bin")
bt_vm_quiet
echo "# $BT_VM_NOTE"
mkdir "$work/store" "$work/out"
tls_opt=()
[ "$TLS" = off ] && tls_opt=(--tls off)
"$BIN" server --port 0 --bind 127.0.0.1 --dir "$work/store" "${tls_opt[@]}" > "$work/server.out" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$work/server.out" | head -1)
secs() { grep -o '"seconds": [0-9.]*' | cut -d' ' -f2; }
up() {
    rm -f "$work/store/src.bin"
    "$BIN" client --host 127.0.0.1 --port "$port" --known-hosts "$work/kh" --quiet --no-cache \
        --compress "$COMPRESS" --json "$work/src.bin" 2>/dev/null | secs
}
down() {
    rm -f "$work/out/src.bin"
    "$BIN" get --host 127.0.0.1 --port "$port" --known-hosts "$work/kh" --quiet --compress "$COMPRESS" --json \
        -o "$work/out" src.bin 2>/dev/null | secs
}
# Each copy follows the removal of its own previous target at once, and the
# order alternates: in this VM, page-cache pages freed a few seconds before
# were handed back to the host (free page reporting) and cost several times
# more to fill again (docs/BENCHMARKS.md, "Slow minutes"). Removing both
# targets at the start of a round gave the upload just-freed pages and the
# get, seconds later, reported ones: 2 GiB gets measured 0.45-0.52x the
# upload that way, with pwrite taking 6 of the get's 7.6 s under strace.
up > /dev/null
ups=() gets=()
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then u=$(up); g=$(down); else g=$(down); u=$(up); fi
    cmp -s "$work/src.bin" "$work/out/src.bin" || { echo "round $r: the download differs" >&2; exit 1; }
    echo "round $r ($SIZE, TLS $TLS, compress $COMPRESS): upload $u s, get $g s (load $(cut -d' ' -f1 /proc/loadavg))"
    ups+=("$u") gets+=("$g")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mu=$(median "${ups[@]}") mg=$(median "${gets[@]}")
awk -v u="$mu" -v g="$mg" 'BEGIN {printf "median: upload %.3f s, get %.3f s: get at %.2f x the upload throughput\n", u, g, u / g}'
