#!/usr/bin/env python3
"""Connection flood and slowloris against a real server, with a real client
uploading in the middle of it, from the same address (127.0.0.1).

    python3 tests/soak/flood.py [--conns 1000] [--bin target/release/bigtransfer]

Opens N idle connections at once (half of them silent, half sending one
header byte every second: slowloris), then uploads a file and reports how
long it took, while sampling the server's peak RSS (VmHWM) and thread count
from /proc. Prints "N passed, N failed"; fails if the upload does not end
CRC32_OK within 30 s or the copy differs. Loopback only; bounded; the server
is stopped by its PID.
"""

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--bin", default="target/release/bigtransfer")
    ap.add_argument("--size", type=int, default=64 << 20)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, a.conns + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    work = tempfile.mkdtemp(prefix="bt-flood-")
    store = os.path.join(work, "store")
    srv = subprocess.Popen([os.path.abspath(a.bin), "server", "--port", "0", "--bind", "127.0.0.1", "--dir", store],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    failed = 0
    try:
        line = srv.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1])
        peak = {"rss_kb": 0, "threads": 0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                st = proc_status(srv.pid)
                peak["rss_kb"] = max(peak["rss_kb"], int(st.get("VmHWM", "0 kB").split()[0]))
                peak["threads"] = max(peak["threads"], int(st.get("Threads", "0")))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        flood = []
        t0 = time.monotonic()
        for _ in range(a.conns):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        opened = len(flood)

        def slowloris():
            # One byte of a header length per second on every other socket.
            for _ in range(30):
                if stop.is_set():
                    return
                for s in flood[1::2]:
                    try:
                        s.send(b"\x00")
                    except OSError:
                        pass
                stop.wait(1.0)

        threading.Thread(target=slowloris, daemon=True).start()
        src = os.path.join(work, "real.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(a.size))
        t1 = time.monotonic()
        out = subprocess.run([os.path.abspath(a.bin), "client", "--host", "127.0.0.1", "--port", str(port),
                              "--json", "--quiet", "--retries", "3", "--no-cache", src],
                             capture_output=True, timeout=120)
        upload_s = time.monotonic() - t1
        ok = out.returncode == 0 and b"CRC32_OK" in out.stdout
        if ok:
            with open(src, "rb") as x, open(os.path.join(store, "real.bin"), "rb") as y:
                ok = x.read() == y.read()
        stop.set()
        for s in flood:
            s.close()
        print("opened %d idle/slowloris connections in %.2f s" % (opened, t1 - t0))
        print("real upload of %d MiB during the flood: %s in %.2f s (%s)" % (
            a.size >> 20, "CRC32_OK" if ok else "FAILED", upload_s,
            json.loads(out.stdout).get("attempts", "?") if ok else out.stderr.decode()[-200:]))
        print("server peak RSS %.1f MiB, peak threads %d" % (peak["rss_kb"] / 1024, peak["threads"]))
        if not ok or upload_s > 30:
            failed += 1
    finally:
        if srv.poll() is None:
            os.kill(srv.pid, signal.SIGTERM)
            try:
                code = srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(srv.pid, signal.SIGKILL)
                code = srv.wait()
            if code != 0:
                failed += 1
                print("server exited %s" % code)
        subprocess.run(["rm", "-rf", work])
    print("%d passed, %d failed" % (1 - min(failed, 1), min(failed, 1)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
