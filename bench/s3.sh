#!/usr/bin/env bash
# bench/s3.sh - upload throughput into a real S3 store (SeaweedFS on loopback):
# the `s3` module's multipart path (core/examples/s3_upload.rs: CRC-32 per
# part and FULL_OBJECT, checked by the store) against `aws s3 cp` (awscli
# from PyPI) with the same part size and concurrency, same store, same run.
# A third row: a `bigtransfer server --store s3://` fed by the bigtransfer
# client over loopback (the whole path: client, protocol, server, store).
# Prints MB/s and peak RSS of each. Not run in CI (minutes, and noisy on a
# shared machine); not a timed test.
#
#   SIZE=2G PART_MIB=16 THREADS=4 ROUNDS=1 bash bench/s3.sh
#
# BENCH_HOME (default /tmp/bt-bench-s3) holds the source file and the store;
# BT_S3_BASE (default 18340) the store's first port.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
size=${SIZE:-2G} part=${PART_MIB:-16} threads=${THREADS:-4} rounds=${ROUNDS:-1}
home=${BENCH_HOME:-/tmp/bt-bench-s3}
venv=${VENV:-$root/.venv}
mkdir -p "$home"

echo "== building the uploader (release)" >&2
cargo build -q --release -p bigtransfer-core --features s3 --example s3_upload
cargo build -q --release -p bigtransfer-cli
ours="$root/target/release/examples/s3_upload"
bt="$root/target/release/bigtransfer"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ ! -x "$venv/bin/aws" ]; then
    echo "== installing awscli into $venv" >&2
    "$venv/bin/python" -m pip install -q awscli >&2
fi

src="$home/src.bin"
want_bytes=$(numfmt --from=iec "$size")
if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" != "$want_bytes" ]; then
    echo "== writing $size of random bytes to $src" >&2
    head -c "$want_bytes" /dev/urandom >"$src"
fi
crc=$(python3 -c 'import sys,zlib
c=0
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<24), b""): c=zlib.crc32(b,c)
print("%08x" % c)' "$src")

export BT_S3_DIR="$home/store" BT_S3_BASE=${BT_S3_BASE:-18340}
trap 'bash tests/s3/stop.sh' EXIT
eval "$(bash tests/s3/start.sh)"
export AWS_DEFAULT_REGION=$BT_S3_REGION
export AWS_CONFIG_FILE="$home/aws-config"
cat >"$AWS_CONFIG_FILE" <<EOF
[default]
s3 =
  multipart_chunksize = ${part}MB
  multipart_threshold = ${part}MB
  max_concurrent_requests = $threads
  addressing_style = path
EOF

# run LABEL CMD... : time CMD, print MB/s and peak RSS (KiB from GNU time).
run() {
    local label=$1 t; shift
    t=$(mktemp)
    /usr/bin/time -f "%e %M" -o "$t" "$@" >/dev/null
    read -r secs rss <"$t"; rm -f "$t"
    awk -v l="$label" -v b="$want_bytes" -v s="$secs" -v r="$rss" \
        'BEGIN { printf "%-38s %8.1f MB/s  %6.2f s  peak RSS %6.1f MiB\n", l, b/1e6/s, s, r/1024 }'
}

# stored_crc KEY: the FULL_OBJECT CRC-32 the store keeps for KEY (hex).
stored_crc() {
    "$venv/bin/python" - "$venv/bin/aws" "$BT_S3_ENDPOINT" "$BT_S3_BUCKET" "$1" <<'EOF' || true
import sys, subprocess, json, base64
out = subprocess.run([sys.argv[1], "s3api", "head-object", "--endpoint-url", sys.argv[2], "--bucket", sys.argv[3],
                      "--key", sys.argv[4], "--checksum-mode", "ENABLED"], capture_output=True, text=True, check=True)
print("%08x" % int.from_bytes(base64.b64decode(json.loads(out.stdout)["ChecksumCRC32"]), "big"))
EOF
}
check_crc() { # KEY
    local got; got=$(stored_crc "$1")
    [ "$got" = "$crc" ] || { echo "bench/s3.sh: stored crc32 of $1 '$got' != source $crc" >&2; exit 1; }
}

# The third row: a bigtransfer server storing into the same bucket
# (--store s3://), fed by the bigtransfer client over loopback. Its part
# size is fixed (8 MiB, 4 in flight); its peak RSS is the server's.
rm -f "$home/srv.out" # (an old run's would pass the readiness check)
"$bt" server --port 0 --bind 127.0.0.1 --dir "$home/srv-dir" \
    --store "s3://$BT_S3_BUCKET/srv" --s3-endpoint "$BT_S3_ENDPOINT" \
    >"$home/srv.out" 2>"$home/srv.log" &
srv_pid=$!
trap 'kill "$srv_pid" 2>/dev/null; bash tests/s3/stop.sh' EXIT
deadline=$((SECONDS + 30))
until grep -q '^listening on' "$home/srv.out" 2>/dev/null; do
    kill -0 "$srv_pid" 2>/dev/null || { cat "$home/srv.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "bench/s3.sh: server not ready" >&2; exit 1; }
    sleep 0.1
done
srv_port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$home/srv.out" | head -1)

echo "== $size, parts of $part MiB, $threads at a time, $rounds round(s); source crc32 $crc"
for r in $(seq 1 "$rounds"); do
    cat "$src" >/dev/null # all start from a warm page cache
    order="ours aws server"; [ $((r % 2)) = 0 ] && order="server aws ours"
    for who in $order; do
        case $who in
        ours)
            run "bigtransfer s3 module (round $r)" "$ours" "$src" "ours-$r.bin" "$part" "$threads"
            check_crc "ours-$r.bin" ;;
        aws)
            run "aws s3 cp (round $r)" "$venv/bin/aws" s3 cp --only-show-errors \
                --endpoint-url "$BT_S3_ENDPOINT" "$src" "s3://$BT_S3_BUCKET/aws-$r.bin" ;;
        server)
            run "bigtransfer server --store (round $r)" "$bt" client --host 127.0.0.1 \
                --port "$srv_port" --quiet --no-cache "$src"
            echo "   (server peak RSS $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$srv_pid/status"))"
            check_crc "srv/$(basename "$src")" ;;
        esac
    done
done
