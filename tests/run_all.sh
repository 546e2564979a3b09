#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: Rust (unit, doc, property
# and end-to-end over loopback), the C API test (plus valgrind), and the Python
# tests (stdlib scripts, the pyo3 module, and every Rust/Python combination).
# Installs what it needs itself (Python venv with maturin and pytest in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Rust: unit, doc, property and end-to-end tests"
cargo build --release -p bigtransfer-cli
cargo test --workspace --exclude bigtransfer-python

echo "== systemd unit: dist/bigtransfer.service"
bash tests/dist/check_unit.sh target/release/bigtransfer

echo "== C: the C API test"
bash tests/c/run.sh

echo "== Python: stdlib scripts, pyo3 module, cross-implementation tests"
bash tests/python/run.sh

echo "== Fault injection (CI size): kill -9 at random points, then a 1000-connection flood"
python3 tests/soak/kill_resume.py --trials "${SOAK_TRIALS:-12}" --size 32M
python3 tests/soak/flood.py --conns 1000
