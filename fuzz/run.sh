#!/usr/bin/env bash
# Fuzzes every parser of network and disk bytes, one target after another.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); all targets unless some are named. Needs
# only the stable Rust toolchain and crates.io: cargo-fuzz is installed if
# missing, and its nightly-only flags (-Zsanitizer=address, sanitizer
# coverage) are allowed on stable by RUSTC_BOOTSTRAP=1, set here for cargo
# only. Each target starts from its checked-in seeds (fuzz/corpus/<target>,
# never written to) plus what earlier runs on this machine found
# (fuzz/work/<target>, not checked in). Prints, per target, the executions
# (libFuzzer's stat::number_of_executed_units) and whether it crashed, then
# exits 1 if any target crashed (the input is under fuzz/artifacts/<target>/).
set -euo pipefail

cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-60}
shift || true
ALL_TARGETS=(legacy_header server_frames client_heads meta_record cache_entry verdict manifest_page zstd_block get_frames)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
case $SECONDS_PER_TARGET in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }

echo "== building the fuzz targets ($(cargo fuzz --version), $(rustc --version))"
start=$(date +%s)
mkdir -p work/logs
if ! fuzz build >work/logs/build.log 2>&1; then
    grep -E -A12 '^error' work/logs/build.log | head -60
    echo "build failed: full log in fuzz/work/logs/build.log" >&2
    exit 1
fi
echo "   built in $(( $(date +%s) - start )) s"

failed=0
summary=()
for t in "${TARGETS[@]}"; do
    [ -d "corpus/$t" ] || { echo "no seed corpus for target $t" >&2; exit 2; }
    mkdir -p "work/$t" "artifacts/$t"
    log="work/logs/$t.log"
    marker=$(mktemp)
    echo "== $t: ${SECONDS_PER_TARGET} s"
    set +e
    # New inputs go to the first directory (work/), never to the seeds.
    fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    found=$(find "artifacts/$t" -type f -newer "$marker" | head -1)
    rm -f "$marker"
    if [ "$rc" -eq 0 ] && [ -z "$found" ]; then
        result="ok"
    else
        failed=1
        result="CRASH (exit $rc)${found:+: $found}"
        grep -E "panicked at|^assertion|^ *(left|right):|ERROR: (libFuzzer|AddressSanitizer)|out-of-memory|SUMMARY" "$log" | head -12 | sed 's/^/   | /'
        if [ -n "$found" ]; then
            echo "   | input ($(wc -c <"$found") bytes): $(od -An -v -tx1 "$found" | tr -d ' \n' | head -c 400)"
        fi
        echo "   | full log: fuzz/$log"
    fi
    echo "   executions: ${execs:-?}  result: $result"
    summary+=("$(printf '%-15s %12s  %s' "$t" "${execs:-?}" "$result")")
done

echo
printf '%-15s %12s  %s\n' target executions result
printf '%s\n' "${summary[@]}"
exit "$failed"
