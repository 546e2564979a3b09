#!/usr/bin/env bash
# Runs the S3 tests against a real store: starts SeaweedFS
# (tests/s3/start.sh, with a second gateway), runs the client's and the
# storage seam's integration tests
# (`cargo test -p bigtransfer-core --features s3,s3-https --test s3 --test s3_storage`)
# and the servers-over-S3 end-to-end tests (`--test e2e s3::`: two server
# processes over one bucket; one test starts a store of its own on ports
# from BT_S3_RESTART_BASE, default 18380, to stop and restart it under an
# upload), and stops the store by PID whatever happens (trap). Extra
# arguments go to the test binaries.
# If the store cannot start, it says why and fails, unless BT_S3_OPTIONAL=1
# (then it only says so and exits 0).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

trap 'bash tests/s3/stop.sh' EXIT
if ! env_lines="$(bash tests/s3/start.sh --second)"; then
    echo "s3/run.sh: the S3 store could not start (reason above); S3 tests not run" >&2
    [ "${BT_S3_OPTIONAL:-0}" = 1 ] && exit 0
    exit 1
fi
eval "$env_lines"
# The features the CLI builds the core with, so nothing is built twice.
cargo test -p bigtransfer-core --features s3,s3-https --test s3 --test s3_storage -- "$@"
cargo test -p bigtransfer-cli --test e2e s3:: -- "$@"
