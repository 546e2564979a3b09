#!/usr/bin/env bash
# bench/smoke.sh - the whole benchmark once on a 32 MiB file (RUNS=1, only the peers that
# are installed; missing ones are skipped with a message), in well under 2 minutes.
# Exits non-zero if bigtransfer fails or a copy is not identical to its source.
# Meant for CI; the real benchmark is bench/run.sh (see docs/BENCHMARKS.md).
set -euo pipefail
exec bash "$(dirname "$0")/run.sh" --smoke "$@"
