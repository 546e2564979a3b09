#!/usr/bin/env bash
# bench/tree.sh: a tree of many small files and a few large ones, sent on
# loopback (hot cache) by bigtransfer (TLS, and plaintext with the server at
# --tls off), by `tar c | socat` -> `socat | tar x` (the no-integrity
# ceiling), by `rsync -r` to an rsync daemon and by `scp -r` to a private
# sshd; then a re-send of the
# unchanged tree with bigtransfer. One line per run: tool, seconds, MB/s.
#
#   bash bench/tree.sh                       # 20000 x 4 KiB + 20 x 40 MB
#   SMALL=2000 LARGE=2 bash bench/tree.sh    # smaller
# Env: SMALL (20000), SMALL_SIZE (4096), LARGE (20), LARGE_MB (40: keeps the
# data under 1 GiB), WORK (/tmp/bt-tree-bench, deleted at the end), BIN
# (target/release/bigtransfer), PORT (47300), TOOLS (bt_tls bt_plain tar
# rsync scp: which rows, in order).
set -eu
BIN=$(realpath "${BIN:-target/release/bigtransfer}")
WORK=${WORK:-/tmp/bt-tree-bench}
SMALL=${SMALL:-20000} SMALL_SIZE=${SMALL_SIZE:-4096} LARGE=${LARGE:-20} LARGE_MB=${LARGE_MB:-40}
PORT=${PORT:-47300}
rm -rf "$WORK"; mkdir -p "$WORK/src" "$WORK/dst"
trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT
SERVER=

python3 - "$WORK/src/tree" "$SMALL" "$SMALL_SIZE" "$LARGE" "$LARGE_MB" <<'PY'
import os, sys
root, small, size, large, mb = sys.argv[1], *map(int, sys.argv[2:])
for i in range(small):
    d = os.path.join(root, "small", "%02d" % (i % 50), "%03d" % (i % 997 % 20))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(size))
for i in range(large):
    d = os.path.join(root, "large", "%d" % (i % 4))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "big%02d.bin" % i), "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1000000))
PY
BYTES=$(du -sb "$WORK/src/tree" | cut -f1)
tar c -C "$WORK/src" tree > /dev/null   # hot cache
echo "tree: $SMALL x $SMALL_SIZE B + $LARGE x $LARGE_MB MB = $BYTES bytes (du -sb)"

now() { date +%s.%N; }
line() { python3 -c "import sys; t=float(sys.argv[2]); print('%-28s %7.2f s %8.1f MB/s' % (sys.argv[1], t, int(sys.argv[3])/t/1e6))" "$1" "$2" "$BYTES"; }
fresh() { rm -rf "$WORK/dst"; mkdir -p "$WORK/dst"; }
check() { diff -rq "$WORK/src/tree" "$WORK/dst/tree" > /dev/null || echo "  (DIFFERS: $1)"; }
# Listening, seen without connecting (socat serves one connection only).
wait_port() { for _ in $(seq 200); do ss -ltnH "sport = :$1" | grep -q . && return 0; sleep 0.05; done; return 1; }

bt() {  # bt NAME TLS-MODE
  fresh; rm -f "$WORK/kh.$2"   # a fresh store makes a fresh server key
  "$BIN" server --dir "$WORK/dst" --bind 127.0.0.1 --port "$PORT" --tls "$2" > "$WORK/server.log" 2>&1 & SERVER=$!
  wait_port "$PORT"
  local t0; t0=$(now)
  "$BIN" client --host 127.0.0.1 --port "$PORT" --known-hosts "$WORK/kh.$2" --quiet "$WORK/src/tree" > "$WORK/client.out"
  line "$1" "$(python3 -c "print($(now)-$t0)")"; check "$1"
  t0=$(now)
  "$BIN" client --host 127.0.0.1 --port "$PORT" --known-hosts "$WORK/kh.$2" --quiet "$WORK/src/tree" > "$WORK/client2.out"
  line "$1 (re-send)" "$(python3 -c "print($(now)-$t0)")"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

tar_socat() {
  fresh
  (socat -u TCP-LISTEN:$PORT,reuseaddr,bind=127.0.0.1 - | tar x -C "$WORK/dst") & local rx=$!
  wait_port "$PORT" || true
  local t0; t0=$(now)
  tar c -C "$WORK/src" tree | socat -u - TCP:127.0.0.1:$PORT
  wait "$rx"
  line "tar c | socat -> tar x" "$(python3 -c "print($(now)-$t0)")"; check tar
}

rsyncd() {
  fresh
  cat > "$WORK/rsyncd.conf" <<CONF
use chroot = no
lock file = $WORK/rsyncd.lock
log file = $WORK/rsyncd.log
[dst]
path = $WORK/dst
read only = no
uid = $(id -un)
gid = $(id -gn)
CONF
  rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address=127.0.0.1 --port="$PORT" & SERVER=$!
  wait_port "$PORT"
  local t0; t0=$(now)
  rsync -r -t -p "$WORK/src/tree" "rsync://127.0.0.1:$PORT/dst/"
  line "rsync -r -> rsyncd" "$(python3 -c "print($(now)-$t0)")"; check rsync
  t0=$(now)
  rsync -r -t -p "$WORK/src/tree" "rsync://127.0.0.1:$PORT/dst/"
  line "rsync -r (re-send)" "$(python3 -c "print($(now)-$t0)")"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

scp_r() {  # scp -r to a private sshd on loopback (key login, this user)
  fresh
  local d=$WORK/ssh; mkdir -p "$d"; chmod 700 "$d"
  [ -f "$d/host" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/host"
  [ -f "$d/id" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/id"
  cp "$d/id.pub" "$d/authorized_keys"; mkdir -p /run/sshd
  printf '%s\n' "Port $PORT" "ListenAddress 127.0.0.1" "HostKey $d/host" "PidFile none" \
    "AuthorizedKeysFile $d/authorized_keys" "PasswordAuthentication no" "StrictModes no" \
    "UsePAM no" "PermitRootLogin prohibit-password" "Subsystem sftp internal-sftp" > "$d/sshd_config"
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2> "$WORK/sshd.log" & SERVER=$!
  wait_port "$PORT"
  local t0; t0=$(now)
  scp -q -r -p -P "$PORT" -i "$d/id" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o UserKnownHostsFile="$d/known_hosts" -o StrictHostKeyChecking=accept-new \
    "$WORK/src/tree" "$(id -un)@127.0.0.1:$WORK/dst/"
  line "scp -r -p (sshd)" "$(python3 -c "print($(now)-$t0)")"; check scp
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

for t in ${TOOLS:-bt_tls bt_plain tar rsync scp}; do
  case $t in
    bt_tls) bt "bigtransfer (TLS)" auto ;;
    bt_plain) bt "bigtransfer (plaintext)" off ;;
    tar) tar_socat ;;
    rsync) command -v rsync > /dev/null && rsyncd ;;
    scp) [ -x /usr/sbin/sshd ] && scp_r ;;
  esac
done
