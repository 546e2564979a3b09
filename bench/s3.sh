#!/usr/bin/env bash
# bench/s3.sh - upload throughput into a real S3 store (SeaweedFS on loopback):
# the `s3` module's multipart path (core/examples/s3_upload.rs: CRC-32 per
# part and FULL_OBJECT, checked by the store) against `aws s3 cp` (awscli
# from PyPI) with the same part size and concurrency, same store, same run.
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
ours="$root/target/release/examples/s3_upload"

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
        'BEGIN { printf "%-34s %8.1f MB/s  %6.2f s  peak RSS %6.1f MiB\n", l, b/1e6/s, s, r/1024 }'
}

echo "== $size, parts of $part MiB, $threads at a time, $rounds round(s); source crc32 $crc"
for r in $(seq 1 "$rounds"); do
    cat "$src" >/dev/null # both start from a warm page cache
    order="ours aws"; [ $((r % 2)) = 0 ] && order="aws ours"
    for who in $order; do
        if [ $who = ours ]; then
            run "bigtransfer s3 module (round $r)" "$ours" "$src" "ours-$r.bin" "$part" "$threads"
            got=$("$venv/bin/python" - "$venv/bin/aws" "$BT_S3_ENDPOINT" "$BT_S3_BUCKET" "ours-$r.bin" <<'EOF' || true
import sys, subprocess, json, base64
out = subprocess.run([sys.argv[1], "s3api", "head-object", "--endpoint-url", sys.argv[2], "--bucket", sys.argv[3],
                      "--key", sys.argv[4], "--checksum-mode", "ENABLED"], capture_output=True, text=True, check=True)
print("%08x" % int.from_bytes(base64.b64decode(json.loads(out.stdout)["ChecksumCRC32"]), "big"))
EOF
            )
            [ "$got" = "$crc" ] || { echo "bench/s3.sh: stored crc32 '$got' != source $crc" >&2; exit 1; }
        else
            run "aws s3 cp (round $r)" "$venv/bin/aws" s3 cp --only-show-errors \
                --endpoint-url "$BT_S3_ENDPOINT" "$src" "s3://$BT_S3_BUCKET/aws-$r.bin"
        fi
    done
done
