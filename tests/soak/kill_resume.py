#!/usr/bin/env python3
"""Fault-injection soak: kill -9 the client or the server at a random point
of an upload, restart, resume, and check that every final file is
byte-identical and ends CRC32_OK. Reports the bytes re-sent per crash.

    python3 tests/soak/kill_resume.py [--trials 100] [--size 64M] [--bin target/release/bigtransfer]

Each trial: a fresh upload of a random file (protocol 2 and protocol 1 in
turn), one victim (client or server, in turn) killed with SIGKILL after a
random delay within the expected transfer time, the server restarted on the
same storage directory if it was the victim, then the upload resumed to the
end. "Re-sent" is what the server had received before the crash but got
again (received - resumed_from): 0 when the client dies (the server
checkpoints on disconnect), at most the 32 MiB checkpoint interval when the
server dies. Exits non-zero if any trial fails. Loopback only; every wait is
bounded; every process is stopped by its PID.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib

CHECKPOINT = 32 << 20


def parse_size(s):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    n = s.rstrip("KMG")
    return int(n) * units[s[len(n):]]


def wait_until(pred, limit, what):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.005)
    raise RuntimeError("timed out waiting for " + what)


class Server:
    def __init__(self, binary, store):
        self.proc = subprocess.Popen(
            [binary, "server", "--port", "0", "--bind", "127.0.0.1", "--dir", store],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError("server did not start: %r" % line)
        self.port = line.rsplit(":", 1)[1].strip()

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        return self.proc.returncode


def part_len(store):
    sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(store, ".bigtransfer", "*.part"))]
    return max(sizes) if sizes else 0


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--size", default="64M")
    ap.add_argument("--bin", default="target/release/bigtransfer")
    ap.add_argument("--rate", default="256M", help="client rate limit, so kills land mid-transfer")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    size = parse_size(a.size)
    seed = a.seed if a.seed is not None else int(time.time())
    rng = random.Random(seed)
    binary = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="bt-soak-")
    env = dict(os.environ, BIGTRANSFER_CACHE_DIR=os.path.join(work, "cache"))
    src = os.path.join(work, "soak.bin")
    with open(src, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n) if hasattr(rng, "randbytes") else os.urandom(n))
            left -= n
    rate = parse_size(a.rate)
    expected = size / rate
    results = []
    failures = 0
    try:
        for trial in range(a.trials):
            store = os.path.join(work, "store")
            shutil.rmtree(store, ignore_errors=True)
            legacy = trial % 2 == 1
            victim = "server" if (trial // 2) % 2 == 1 else "client"
            mode = ["--legacy"] if legacy else []
            srv = Server(binary, store)
            cli = subprocess.Popen(
                [binary, "client", "--host", "127.0.0.1", "--port", srv.port, "--quiet", "--retries", "0",
                 "--limit-rate", a.rate] + mode + [src],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            delay = rng.uniform(0.05, 0.95) * expected
            time.sleep(delay)  # the random fault point itself, not synchronisation
            if victim == "server":
                received = part_len(store)
                srv.kill()
                cli.wait(timeout=60)
                srv = Server(binary, store)
            else:
                os.kill(cli.pid, signal.SIGKILL)
                cli.wait(timeout=60)
                # The server checkpoints when it sees the disconnect.
                time.sleep(0)
                deadline = time.monotonic() + 30
                received = part_len(store)
                while time.monotonic() < deadline:
                    time.sleep(0.02)
                    now = part_len(store)
                    if now == received:
                        break
                    received = now
            out = subprocess.run(
                [binary, "client", "--host", "127.0.0.1", "--port", srv.port, "--quiet", "--json"] + mode + [src],
                capture_output=True, timeout=300, env=env)
            code = srv.stop()
            ok = out.returncode == 0 and b"CRC32_OK" in out.stdout
            dst = os.path.join(store, "soak.bin")
            identical = ok and same_file(src, dst)
            r = json.loads(out.stdout) if ok else {}
            resumed = r.get("resumed_from", 0)
            resent = max(0, min(received, size) - resumed) if ok else None
            results.append((victim, legacy, identical, resent, received, resumed))
            if not (identical and code == 0):
                failures += 1
                print("trial %d FAILED: victim=%s legacy=%s exit=%s server_exit=%s stderr=%s"
                      % (trial, victim, legacy, out.returncode, code, out.stderr.decode()[-300:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stats(rows):
        vals = [r[3] for r in rows if r[3] is not None]
        if not vals:
            return "n/a"
        return "mean %.1f MiB, max %.1f MiB" % (sum(vals) / len(vals) / 2**20, max(vals) / 2**20)

    print("seed %d, file %d bytes, %d trials" % (seed, size, len(results)))
    for victim in ("client", "server"):
        for legacy in (False, True):
            rows = [r for r in results if r[0] == victim and r[1] == legacy]
            if rows:
                print("  kill %-6s protocol %d: %3d trials, %3d identical, re-sent per crash: %s"
                      % (victim, 1 if legacy else 2, len(rows), sum(1 for r in rows if r[2]), stats(rows)))
    over = [r for r in results if r[3] is not None and r[3] > CHECKPOINT]
    if over:
        failures += len(over)
        print("re-sent more than the checkpoint interval in %d trial(s)" % len(over))
    passed = len(results) - failures
    print("%d passed, %d failed" % (max(passed, 0), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
