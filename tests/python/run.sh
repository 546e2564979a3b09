#!/usr/bin/env bash
# Builds the `bigtransfer` Python extension module into a virtualenv and runs
# the Python test suite (python/tests).
#
#   tests/python/run.sh [pytest args...]
#
# Works on a fresh clone and is idempotent: it creates .venv at the
# repository root if missing (python3 -m venv --system-site-packages, so a
# maturin and pytest installed system-wide are used without the network;
# only when they are missing are they installed into it from PyPI),
# installs the module with `maturin develop` (a debug build unless
# BT_PY_RELEASE=1: the test command builds everything once, in debug), and runs
# `python -m pytest -q python/tests`. The tests that run the
# `bigtransfer` binary use target/{debug,release}/bigtransfer (or
# $BIGTRANSFER_BIN); it is built here (release) when neither exists, and
# those tests are skipped if it cannot be.
# Environment: PYTHON (interpreter for the venv, default python3), VENV
# (default .venv), BT_PY_STEP (build: only the venv and the module; test:
# only pytest, the module already built; default: both).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
venv="${VENV:-$root/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    echo "run.sh: creating $venv" >&2
    "$python" -m venv --system-site-packages "$venv"
fi
vpy="$venv/bin/python"

# Install the tools only when missing, so reruns do not need the network.
if ! "$vpy" -c 'import maturin, pytest' >/dev/null 2>&1; then
    "$vpy" -m pip install --disable-pip-version-check -q "maturin>=1.5,<2" "pytest>=7"
fi

# The maturin command: the venv's own, else one on the PATH (a system-wide
# maturin's Python package, seen through --system-site-packages, cannot find
# its binary from inside the venv), else the module.
if [ -x "$venv/bin/maturin" ]; then
    maturin=("$venv/bin/maturin")
elif command -v maturin >/dev/null 2>&1 && maturin --version >/dev/null 2>&1; then
    maturin=("$(command -v maturin)")
else
    maturin=("$vpy" -m maturin)
fi

# maturin develop installs into the venv it finds in VIRTUAL_ENV.
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
unset CONDA_PREFIX
step="${BT_PY_STEP:-all}"
if [ "$step" != test ]; then
    release=()
    [ -n "${BT_PY_RELEASE:-}" ] && release=(--release)
    "${maturin[@]}" develop "${release[@]}" -m python/Cargo.toml
fi
[ "$step" = build ] && exit 0

if [ -z "${BIGTRANSFER_BIN:-}" ] && [ ! -x target/release/bigtransfer ] && [ ! -x target/debug/bigtransfer ]; then
    echo "run.sh: building the bigtransfer binary" >&2
    cargo build --release -p bigtransfer-cli --bin bigtransfer ||
        echo "run.sh: cannot build the bigtransfer binary; its tests will be skipped" >&2
fi

exec "$vpy" -m pytest -q python/tests "$@"
