#!/usr/bin/env bash
# Stops what tests/s3/start.sh started, by the PIDs it wrote (the second
# gateway first), waiting with a deadline; then removes the store's data.
# Not for other processes: nothing is stopped by name.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${BT_S3_DIR:-$root/target/s3-store}"

stop_pid() { # pidfile
    [ -f "$1" ] || return 0
    local pid deadline
    pid="$(cat "$1")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        deadline=$((SECONDS + 15))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$1"
}

stop_pid "$dir/weed-s3b.pid"
stop_pid "$dir/weed.pid"
[ "${1:-}" = "--keep" ] || rm -rf "$dir/data"
echo "s3/stop.sh: stopped" >&2
