#!/usr/bin/env bash
# bench/smoke.sh - every benchmark script once, small, so that they keep working (CI):
#   bench/run.sh --smoke   the whole peer benchmark on 32 MiB (RUNS=1, only the peers that
#                          are installed; missing ones are skipped with a message)
#   bench/api.sh           CLI vs C API vs Python on 32 MiB, once each
#   bench/wan.sh           on 32 MiB over a 5 ms link, when this machine can run it (root,
#                          ip netns, iperf3); skipped with a message otherwise
# Exits non-zero if a bigtransfer copy fails or is not identical to its source.
# Well under 3 minutes. The real benchmarks are described in docs/BENCHMARKS.md.
set -euo pipefail
here=$(dirname "$0")
bash "$here/run.sh" --smoke "$@"
SIZE=32M RUNS=1 BENCH_HOME=${TMPDIR:-/tmp}/bt-smoke-api bash "$here/api.sh"
if [ "$(id -u)" = 0 ] && command -v iperf3 >/dev/null && ip netns add bt-smoke-probe 2>/dev/null; then
  ip netns del bt-smoke-probe
  SIZE=32M DELAY=5 RATE=0 IPERF_SECS=2 BENCH_HOME=${TMPDIR:-/tmp}/bt-smoke-wan bash "$here/wan.sh"
else
  echo "bench/smoke.sh: bench/wan.sh skipped (needs root, ip netns and iperf3)" >&2
fi
