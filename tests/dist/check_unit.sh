#!/usr/bin/env bash
# tests/dist/check_unit.sh: checks dist/bigtransfer.service, the systemd unit
# of the server: `systemd-analyze verify` must accept it without a single
# warning, it must keep its hardening (a service user, a read-only system
# but for the storage directory, no new privileges, restart on failure,
# SIGTERM to stop), and the ExecStart command line must be one the
# `bigtransfer` binary accepts (its flags are parsed with a dry run).
# Skips (exit 0, saying so) where systemd-analyze is not installed.
# Usage: bash tests/dist/check_unit.sh [PATH-TO-bigtransfer]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
UNIT="$ROOT/dist/bigtransfer.service"
BIN="$(realpath -m -- "${1:-${BIGTRANSFER_BIN:-$ROOT/target/release/bigtransfer}}")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bt-unit.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT
fail() { echo "FAIL $*"; exit 1; }

for want in '^DynamicUser=yes$' '^ProtectSystem=strict$' '^ReadWritePaths=/var/lib/bigtransfer$' \
    '^NoNewPrivileges=yes$' '^Restart=on-failure$' '^KillSignal=SIGTERM$' '^StateDirectory=bigtransfer$' \
    '^ExecStart=/usr/local/bin/bigtransfer server .*--dir /var/lib/bigtransfer'; do
    grep -qE -- "$want" "$UNIT" || fail "dist/bigtransfer.service lacks a line matching $want"
done
echo "ok   the unit keeps its hardening directives"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd)"
    exit 0
fi
# verify checks that ExecStart's program exists: point it at the built
# binary (or /bin/true when there is none yet).
exe="$BIN"
[[ -x "$exe" ]] || exe=/bin/true
sed "s#/usr/local/bin/bigtransfer#$exe#g" "$UNIT" >"$WORK/bigtransfer.service"
out="$(cd "$WORK" && timeout 60 systemd-analyze verify "$WORK/bigtransfer.service" 2>&1)" ||
    fail "systemd-analyze verify exited non-zero: $out"
# verify exits 0 on unknown keys and bad values, only warning: any line
# that names the unit is a finding.
if grep -q 'bigtransfer.service' <<<"$out"; then
    fail "systemd-analyze verify warns: $out"
fi
echo "ok   systemd-analyze verify accepts dist/bigtransfer.service"
# The check can fail: a misspelt directive in a copy must be reported.
sed 's/^NoNewPrivileges=yes$/NoNewPrivilegez=yes/' "$WORK/bigtransfer.service" >"$WORK/broken.service"
out="$(cd "$WORK" && timeout 60 systemd-analyze verify "$WORK/broken.service" 2>&1)" || true
grep -q "Unknown key 'NoNewPrivilegez'" <<<"$out" || fail "a misspelt directive went unreported: $out"
echo "ok   a misspelt directive is reported (the check can fail)"

if [[ -x "$BIN" ]]; then
    # The flags of ExecStart, checked by the binary itself (--check-config
    # parses everything and exits without binding).
    line="$(grep -m1 '^ExecStart=' "$UNIT" | sed 's/^ExecStart=[^ ]* server //')"
    mkdir -p "$WORK/etc"
    cp "$ROOT/dist/server.toml" "$WORK/etc/server.toml"
    line="${line//\/etc\/bigtransfer\/server.toml/$WORK/etc/server.toml}"
    line="${line//\/var\/lib\/bigtransfer/$WORK/store}"
    # shellcheck disable=SC2086 # the unit's words, split as systemd splits them
    out="$(timeout 30 "$BIN" server $line --check-config 2>&1)" || fail "bigtransfer rejects ExecStart's flags: $out"
    grep -q "configuration OK" <<<"$out" || fail "--check-config did not say 'configuration OK': $out"
    echo "ok   bigtransfer accepts the unit's ExecStart flags and dist/server.toml"
else
    echo "SKIP ExecStart flags: $BIN is not built"
fi
