"""Tests of the ``bigtransfer`` extension module (the Rust engine from Python).

Covers send_file / Server / crc32_file end to end on 127.0.0.1, progress and
cancellation, resume, the exception classes, that the GIL is released, that
serve_forever stops from another thread and on Ctrl-C, and interoperation
with the ``bigtransfer`` binary in both directions. Not for the stdlib
scripts server.py / client.py (test_scripts.py covers those).

Run through tests/python/run.sh, which builds the module into .venv first.
Every wait has a deadline; processes are stopped by PID.
"""

import gc
import os
import random
import selectors
import signal
import socket
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

bigtransfer = pytest.importorskip(
    "bigtransfer",
    reason="the bigtransfer extension module is not installed "
    "(build it with tests/python/run.sh or `maturin develop -m python/Cargo.toml`)",
)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEADLINE = 30.0  # seconds: the longest any single wait in these tests may take
BIG = 30 * 1024 * 1024 + 12345


# ---------------------------------------------------------------------------
# Helpers and fixtures


def make_file(path, size, seed=0):
    """Write ``size`` pseudo-random bytes (deterministic per seed); return them."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


class Watchdog:
    """Calls ``action`` if not cancelled within ``seconds``; records it fired."""

    def __init__(self, seconds, action):
        self.fired = False

        def fire():
            self.fired = True
            action()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self):
        self._timer.cancel()


def free_port():
    """The port of a socket that was just bound on 127.0.0.1 and closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A bigtransfer.Server on 127.0.0.1, serving in the background."""
    store = tmp_path / "received"
    with bigtransfer.Server(store, port=0, bind=HOST) as srv:
        yield srv
    assert not srv.running


@pytest.fixture(scope="module")
def big_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "big.bin"
    return path, make_file(path, BIG, seed=1)


def stored(srv, name):
    return Path(os.fspath(srv.dir)) / name


def find_cli():
    env = os.environ.get("BIGTRANSFER_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = [REPO / "target" / p / "bigtransfer" for p in ("release", "debug")]
    found = [p for p in found if p.is_file() and os.access(p, os.X_OK)]
    # The most recently built one is the one that matches the sources.
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


@pytest.fixture(scope="module")
def cli():
    path = find_cli()
    if path is None:
        pytest.skip("no bigtransfer binary: build it with `cargo build -p bigtransfer-cli` "
                    "or set BIGTRANSFER_BIN")
    return path


def stop_process(proc):
    """Stop ``proc`` by its PID: SIGTERM, then SIGKILL after a deadline."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def read_line(stream, timeout):
    """One line from a pipe, or fail after ``timeout`` seconds."""
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail("no line within %ss (got %r)" % (timeout, buf))
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                pytest.fail("stream closed before a full line (got %r)" % buf)
            buf += chunk
    return buf.decode()


@pytest.fixture
def cli_server(cli, tmp_path):
    """``bigtransfer server`` on 127.0.0.1 with a free port: (port, store dir)."""
    store = tmp_path / "cli-received"
    log = open(tmp_path / "cli-server.log", "wb")
    proc = subprocess.Popen(
        [cli, "server", "--port", "0", "--bind", HOST, "--dir", str(store)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
    )
    try:
        line = read_line(proc.stdout, DEADLINE)
        assert line.startswith("listening on "), line
        port = int(line.strip().rsplit(":", 1)[1])
        yield port, store
    finally:
        stop_process(proc)
        proc.stdout.close()
        log.close()


# ---------------------------------------------------------------------------
# The module itself


def test_module_surface():
    assert isinstance(bigtransfer.__version__, str) and bigtransfer.__version__
    for name in bigtransfer.__all__:
        assert getattr(bigtransfer, name).__doc__ or name == "__version__", name
    base = bigtransfer.BigTransferError
    assert issubclass(base, Exception)
    assert issubclass(bigtransfer.UnreachableError, ConnectionError)
    assert issubclass(bigtransfer.ConnectionLostError, ConnectionError)
    assert issubclass(bigtransfer.TimedOutError, TimeoutError)
    assert issubclass(bigtransfer.StorageError, OSError)
    assert issubclass(bigtransfer.SourceFileError, OSError)
    assert issubclass(bigtransfer.SourceFileNotFoundError, FileNotFoundError)
    assert issubclass(bigtransfer.InvalidInputError, ValueError)
    for name in ("CrcMismatchError", "ProtocolError", "RefusedError", "CancelledError"):
        assert issubclass(getattr(bigtransfer, name), base)
    assert bigtransfer.CancelledError.__module__ == "bigtransfer"
    assert issubclass(bigtransfer.HostKeyError, ConnectionError)
    assert issubclass(bigtransfer.HostKeyError, base)
    stubs = REPO / "python" / "bigtransfer.pyi"
    assert stubs.is_file()
    for name in bigtransfer.__all__:
        assert name in stubs.read_text(), "%s is missing from the stubs" % name


def test_send_file_over_parallel_streams(server, big_data):
    path, data = big_data
    result = bigtransfer.send_file(HOST, server.address[1], path, streams=3)
    assert result.crc32 == zlib.crc32(data)
    assert result.bytes_sent == len(data)
    result = bigtransfer.send_file(HOST, server.address[1], path, streams="auto")
    assert result.crc32 == zlib.crc32(data)
    for bad in (0, 9, "many"):
        with pytest.raises(bigtransfer.InvalidInputError, match="streams"):
            bigtransfer.send_file(HOST, server.address[1], path, streams=bad)


def test_crc32_file_matches_zlib(tmp_path, big_data):
    path, data = big_data
    assert bigtransfer.crc32_file(path) == zlib.crc32(data)
    assert bigtransfer.crc32_file(str(path)) == zlib.crc32(data)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert bigtransfer.crc32_file(empty) == 0
    small = tmp_path / "small"
    small.write_bytes(b"123456789")
    assert bigtransfer.crc32_file(small) == 0xCBF43926


def test_send_file_roundtrip(server, big_data):
    path, data = big_data
    calls = []
    result = bigtransfer.send_file(HOST, server.address[1], path,
                                   progress=lambda done, total: calls.append((done, total)))
    assert isinstance(result, bigtransfer.Result)
    assert result.filename == "big.bin"
    assert result.filesize == len(data)
    assert result.crc32 == zlib.crc32(data)
    assert result.resumed_from == 0
    assert result.bytes_sent == len(data)
    # Protocol 2 between new peers: no hashing pass before the first byte.
    assert result.protocol == 2
    assert result.bytes_hashed == 0
    assert result.bytes_read == len(data)
    assert result.attempts == 1
    assert result.seconds > 0
    assert "Result(filename='big.bin'" in repr(result)
    with pytest.raises(AttributeError):
        result.filesize = 1  # frozen

    assert calls, "progress was never called"
    assert calls[-1] == (len(data), len(data))
    dones = [d for d, _ in calls]
    assert dones == sorted(dones), "progress went backwards: %r" % calls
    assert all(t == len(data) for _, t in calls)

    dest = stored(server, "big.bin")
    assert dest.read_bytes() == data
    assert bigtransfer.crc32_file(dest) == zlib.crc32(data)
    stats = server.stats
    assert stats["completed"] == 1 and stats["bytes_received"] == len(data)


def test_tls_pins_the_key_and_a_changed_key_raises_host_key_error(tmp_path):
    src = tmp_path / "pinned.bin"
    data = make_file(src, 300_000, seed=7)
    known = tmp_path / "known_hosts"
    with bigtransfer.Server(tmp_path / "a", port=0, bind=HOST) as a:
        fp_a = a.fingerprint
        assert fp_a.startswith("SHA256:") and len(fp_a) == 50
        result = bigtransfer.send_file(HOST, a.address[1], src, known_hosts=known)
        assert result.encrypted and result.protocol == 2
        assert stored(a, "pinned.bin").read_bytes() == data
        # First contact: the key is reported as new, with its fingerprint.
        assert result.new_host_key == fp_a and result.server_fingerprint == fp_a
        # The second send finds it pinned: nothing new to report.
        again = bigtransfer.send_file(HOST, a.address[1], src, known_hosts=known)
        assert again.new_host_key is None and again.server_fingerprint == fp_a
        port = a.address[1]
    del a  # its listening socket closes with the object
    gc.collect()
    assert known.read_text() == "%s:%d %s\n" % (HOST, port, fp_a)
    # Another server (its own key) on the same address: refused, nothing sent.
    with bigtransfer.Server(tmp_path / "b", port=port, bind=HOST) as b:
        assert b.fingerprint != fp_a
        with pytest.raises(bigtransfer.HostKeyError) as info:
            bigtransfer.send_file(HOST, port, src, known_hosts=known, retries=3)
        assert isinstance(info.value, ConnectionError)
        assert info.value.kind == "host-key"
        assert fp_a in str(info.value) and b.fingerprint in str(info.value)
        assert not stored(b, "pinned.bin").exists()
        # The right fingerprint given out of band, no known-hosts file.
        result = bigtransfer.send_file(HOST, port, src, known_hosts=None,
                                       fingerprint=b.fingerprint)
        assert result.encrypted
        with pytest.raises(bigtransfer.HostKeyError):
            bigtransfer.send_file(HOST, port, src, known_hosts=None, fingerprint=fp_a)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.send_file(HOST, port, src, fingerprint="MD5:00")


def test_a_plaintext_server_is_refused_with_require_tls(tmp_path):
    src = tmp_path / "plain.bin"
    data = make_file(src, 100_000, seed=8)
    with bigtransfer.Server(tmp_path / "p", port=0, bind=HOST, tls="off") as p:
        assert p.fingerprint is None
        with pytest.raises(bigtransfer.HostKeyError):
            bigtransfer.send_file(HOST, p.address[1], src, require_tls=True, retries=0)
        result = bigtransfer.send_file(HOST, p.address[1], src)
        assert not result.encrypted
        assert result.server_fingerprint is None and result.new_host_key is None
        assert stored(p, "plain.bin").read_bytes() == data
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.Server(tmp_path / "q", port=0, bind=HOST, tls="sometimes")


def test_send_file_name_and_pathlike(server, tmp_path):
    src = tmp_path / "local.bin"
    data = make_file(src, 100_000, seed=2)
    result = bigtransfer.send_file(HOST, server.address[1], src, name="remote.bin")
    assert result.filename == "remote.bin"
    assert stored(server, "remote.bin").read_bytes() == data


def test_compress_modes_store_the_same_bytes(server, tmp_path):
    src = tmp_path / "log.txt"
    lines = "".join(f"GET /item/{i * 7919 % 100000} status={200 + i % 3}\n" for i in range(200_000))
    src.write_text(lines)
    for mode in ("auto", "zstd:3", "off"):
        result = bigtransfer.send_file(
            HOST, server.address[1], src, name=f"log-{mode}.txt", compress=mode, cache_dir=None
        )
        assert result.filesize == len(lines)
        assert stored(server, f"log-{mode}.txt").read_text() == lines


def test_same_name_again_keeps_the_old_file_and_list_remote_shows_it(tmp_path):
    store = tmp_path / "received"
    kh = tmp_path / "kh"
    with bigtransfer.Server(store, port=0, bind=HOST) as srv:
        port = srv.address[1]
        src = tmp_path / "k.bin"
        first = make_file(src, 200_000, seed=5)
        r = bigtransfer.send_file(HOST, port, src, known_hosts=kh)
        assert (r.stored, r.kept_as) == ("new", None)
        again = bigtransfer.send_file(HOST, port, src, known_hosts=kh)
        assert (again.stored, again.kept_as, again.bytes_sent) == ("unchanged", None, 0)
        second = make_file(src, 1000, seed=6)
        r = bigtransfer.send_file(HOST, port, src, known_hosts=kh)
        assert (r.stored, r.kept_as) == ("kept", "k.bin.~1~")
        assert (store / "k.bin").read_bytes() == second
        assert (store / "k.bin.~1~").read_bytes() == first
        listed = bigtransfer.list_remote(HOST, port, known_hosts=kh)
        assert [(e["kind"], e["name"], e["size"], e["crc32"]) for e in listed] == [
            ("file", "k.bin", 1000, zlib.crc32(second)),
            ("file", "k.bin.~1~", 200_000, zlib.crc32(first)),
        ]
        assert bigtransfer.list_remote(HOST, port, "nothing", known_hosts=kh) == []
        (store / "t" / "a").mkdir(parents=True)
        (store / "t" / "a" / "x").write_bytes(b"12345")
        (store / "t" / "y").write_bytes(b"12")
        with_dirs = bigtransfer.list_remote(HOST, port, known_hosts=kh, dirs=True)
        dirs = [e for e in with_dirs if e["kind"] == "dir"]
        assert [(e["name"], e["files"], e["size"]) for e in dirs] == [("t", 2, 7)]
        # Not asked for: no directory entries (as for an older client).
        assert all(e["kind"] == "file" for e in bigtransfer.list_remote(HOST, port, known_hosts=kh))
    other = tmp_path / "overwritten"
    with bigtransfer.Server(other, port=0, bind=HOST, overwrite=True) as srv:
        bigtransfer.send_file(HOST, srv.address[1], src, known_hosts=None)
        third = make_file(src, 999, seed=7)
        r = bigtransfer.send_file(HOST, srv.address[1], src, known_hosts=None)
        assert (r.stored, r.kept_as) == ("replaced", None)
        assert (other / "k.bin").read_bytes() == third
        assert not (other / "k.bin.~1~").exists()


def test_cancel_then_resume(server, tmp_path):
    src = tmp_path / "resume.bin"
    data = make_file(src, 8 * 1024 * 1024, seed=3)
    size = len(data)
    seen = []

    def cancel_midway(done, total):
        seen.append(done)
        return False if done >= size // 4 else None

    # 8 MiB at 8 MiB/s: about a second, so progress is reported many times.
    with pytest.raises(bigtransfer.CancelledError) as info:
        bigtransfer.send_file(HOST, server.address[1], src,
                              limit_rate=8 * 1024 * 1024, progress=cancel_midway)
    assert isinstance(info.value, bigtransfer.BigTransferError)
    assert info.value.kind == "cancelled"
    assert seen and max(seen) < size
    assert not stored(server, "resume.bin").exists()

    result = bigtransfer.send_file(HOST, server.address[1], src)
    assert 0 < result.resumed_from < size
    assert result.bytes_sent == size - result.resumed_from
    assert stored(server, "resume.bin").read_bytes() == data


def test_progress_exception_propagates_and_cancels(server, tmp_path):
    src = tmp_path / "raise.bin"
    data = make_file(src, 4 * 1024 * 1024, seed=4)

    class Boom(Exception):
        pass

    def boom(done, total):
        if done > 0:
            raise Boom("stop right there")

    with pytest.raises(Boom):
        bigtransfer.send_file(HOST, server.address[1], src, limit_rate=4 * 1024 * 1024,
                              progress=boom)
    assert not stored(server, "raise.bin").exists()
    result = bigtransfer.send_file(HOST, server.address[1], src)
    assert result.resumed_from + result.bytes_sent == len(data)
    assert stored(server, "raise.bin").read_bytes() == data


def test_unreachable_server(tmp_path):
    src = tmp_path / "u.bin"
    make_file(src, 1000)
    with pytest.raises(bigtransfer.UnreachableError) as info:
        bigtransfer.send_file(HOST, free_port(), src, retries=0, connect_timeout=5.0)
    e = info.value
    assert isinstance(e, ConnectionError)
    assert isinstance(e, bigtransfer.BigTransferError)
    assert e.kind == "unreachable"
    assert str(e)


def test_missing_file(tmp_path):
    missing = tmp_path / "no-such-file"
    with pytest.raises(FileNotFoundError) as info:
        bigtransfer.send_file(HOST, free_port(), missing, retries=0)
    e = info.value
    assert isinstance(e, bigtransfer.BigTransferError)
    assert isinstance(e, bigtransfer.SourceFileError)
    assert e.errno == 2 and e.filename == missing
    assert "no-such-file" in str(e)
    with pytest.raises(FileNotFoundError):
        bigtransfer.crc32_file(str(missing))


def test_invalid_arguments(tmp_path):
    src = tmp_path / "a.bin"
    make_file(src, 10)
    with pytest.raises(ValueError):
        bigtransfer.send_file(HOST, 70000, src)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.send_file(HOST, 1, src, retries=-1)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.send_file(HOST, 1, src, timeout=0)
    with pytest.raises(TypeError):
        bigtransfer.send_file(HOST, 1, src, progress=42)
    with pytest.raises(bigtransfer.InvalidInputError, match="expected auto, off, zstd"):
        bigtransfer.send_file(HOST, 1, src, compress="gzip")
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.Server(tmp_path / "d", port=-1)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.Server(tmp_path / "d", port=0, bind="not an address at all")


def test_gil_released_during_send(server, tmp_path):
    src = tmp_path / "slow.bin"
    make_file(src, 2 * 1024 * 1024, seed=5)
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=count, daemon=True)
    t.start()
    try:
        before = counter[0]
        started = time.monotonic()
        # 2 MiB at 2 MiB/s: about one second inside the engine.
        bigtransfer.send_file(HOST, server.address[1], src, limit_rate=2 * 1024 * 1024)
        elapsed = time.monotonic() - started
        during = counter[0] - before
    finally:
        stop.set()
        t.join(DEADLINE)
    assert elapsed >= 0.5
    # A Python loop counts millions per second with the GIL free; with the
    # GIL held by the send it would barely move.
    assert during > 100_000, "the other thread advanced only %d times in %.2fs" % (during, elapsed)


def test_server_address_stats_and_idempotent_stop(tmp_path):
    srv = bigtransfer.Server(tmp_path / "s", port=0, bind=HOST)
    host, port = srv.address
    assert host == HOST and 0 < port < 65536
    assert not srv.running
    assert set(srv.stats) == {"connections", "completed", "crc_errors", "failed", "bytes_received"}
    srv.start()
    srv.start()  # already serving: nothing to do
    assert srv.running
    srv.stop()
    srv.stop()
    assert not srv.running
    with pytest.raises(RuntimeError):
        srv.serve_forever()


def test_stop_from_another_thread_ends_serve_forever(tmp_path):
    srv = bigtransfer.Server(tmp_path / "s", port=0, bind=HOST)
    src = tmp_path / "x.bin"
    data = make_file(src, 300_000, seed=6)
    results = []

    def client_then_stop():
        try:
            # Returns only once the server served it: serve_forever is running.
            results.append(bigtransfer.send_file(HOST, srv.address[1], src, connect_timeout=5.0))
        finally:
            srv.stop()

    t = threading.Thread(target=client_then_stop)
    dog = Watchdog(DEADLINE, srv.stop)
    t.start()
    try:
        srv.serve_forever()
    finally:
        dog.cancel()
        t.join(DEADLINE)
    assert not dog.fired, "serve_forever did not return after stop()"
    assert not t.is_alive()
    assert results and results[0].filesize == len(data)
    assert stored(srv, "x.bin").read_bytes() == data
    assert not srv.running


def test_keyboard_interrupt_stops_serve_forever(tmp_path):
    srv = bigtransfer.Server(tmp_path / "s", port=0, bind=HOST)
    src = tmp_path / "k.bin"
    make_file(src, 1000, seed=7)

    def client_then_interrupt():
        bigtransfer.send_file(HOST, srv.address[1], src, connect_timeout=5.0)
        os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread

    t = threading.Thread(target=client_then_interrupt)
    dog = Watchdog(DEADLINE, srv.stop)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            srv.serve_forever()
    finally:
        dog.cancel()
        t.join(DEADLINE)
    assert not dog.fired, "serve_forever ignored Ctrl-C"
    assert not srv.running
    srv.stop()


def test_keyboard_interrupt_cancels_send(server, tmp_path):
    src = tmp_path / "ki.bin"
    data = make_file(src, 4 * 1024 * 1024, seed=8)
    underway = threading.Event()

    def interrupt_when_underway():
        if underway.wait(DEADLINE):
            os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt_when_underway)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bigtransfer.send_file(
                HOST, server.address[1], src, limit_rate=2 * 1024 * 1024,
                progress=lambda done, total: underway.set() if done > 0 else None)
    finally:
        underway.set()
        t.join(DEADLINE)
    result = bigtransfer.send_file(HOST, server.address[1], src)
    assert result.resumed_from > 0
    assert stored(server, "ki.bin").read_bytes() == data


# ---------------------------------------------------------------------------
# Authentication, legacy clients, free-space reserve and the checksum cache

TOKEN = b"a shared secret of the python tests"
WRONG_TOKEN = b"not the shared secret, but long enough"


@pytest.fixture
def token_server(tmp_path):
    """A Server requiring TOKEN (legacy clients refused), in the background."""
    with bigtransfer.Server(tmp_path / "auth", port=0, bind=HOST, token=TOKEN) as srv:
        yield srv


def test_token_right_wrong_and_missing(token_server, tmp_path):
    port = token_server.address[1]
    src = tmp_path / "secret.bin"
    data = make_file(src, 500_000, seed=11)

    with pytest.raises(bigtransfer.RefusedError) as info:
        bigtransfer.send_file(HOST, port, src, name="no-token.bin", retries=0)
    assert info.value.kind == "refused"
    assert "token" in str(info.value)

    with pytest.raises(bigtransfer.RefusedError) as info:
        bigtransfer.send_file(HOST, port, src, name="wrong.bin", retries=0, token=WRONG_TOKEN)
    assert "authentication failed" in str(info.value)
    assert isinstance(info.value, bigtransfer.BigTransferError)

    result = bigtransfer.send_file(HOST, port, src, token=TOKEN)
    assert result.protocol == 2
    assert result.filesize == len(data) and result.crc32 == zlib.crc32(data)
    assert stored(token_server, "secret.bin").read_bytes() == data
    # The same secret given as str is sent as its UTF-8 bytes; bytearray works too.
    result = bigtransfer.send_file(HOST, port, src, name="as-str.bin", token=TOKEN.decode())
    assert result.protocol == 2 and stored(token_server, "as-str.bin").read_bytes() == data
    bigtransfer.send_file(HOST, port, src, name="as-bytearray.bin", token=bytearray(TOKEN))
    assert stored(token_server, "as-bytearray.bin").read_bytes() == data

    assert not stored(token_server, "no-token.bin").exists()
    assert not stored(token_server, "wrong.bin").exists()
    assert token_server.stats["completed"] == 3


def test_a_token_is_harmless_without_one_on_the_server(server, tmp_path):
    src = tmp_path / "extra.bin"
    data = make_file(src, 10_000, seed=12)
    result = bigtransfer.send_file(HOST, server.address[1], src, token=TOKEN)
    assert result.protocol == 2 and stored(server, "extra.bin").read_bytes() == data


def test_legacy_client_and_allow_legacy(tmp_path):
    src = tmp_path / "old.bin"
    data = make_file(src, 300_000, seed=13)
    with bigtransfer.Server(tmp_path / "legacy-ok", port=0, bind=HOST, token=TOKEN.decode(),
                            allow_legacy=True) as srv:
        result = bigtransfer.send_file(HOST, srv.address[1], src, legacy=True, retries=0)
        assert result.protocol == 1
        assert result.crc32 == zlib.crc32(data)
        assert stored(srv, "old.bin").read_bytes() == data
        # allow_legacy does not let protocol-2 clients skip the token.
        with pytest.raises(bigtransfer.RefusedError):
            bigtransfer.send_file(HOST, srv.address[1], src, name="new.bin", retries=0)
        assert bigtransfer.send_file(HOST, srv.address[1], src, name="new.bin",
                                     token=TOKEN).protocol == 2

    # Without allow_legacy, a server with a token turns legacy clients away
    # (protocol 1 has no words for it: the client sees the connection close).
    with bigtransfer.Server(tmp_path / "legacy-no", port=0, bind=HOST, token=TOKEN) as srv:
        with pytest.raises(bigtransfer.BigTransferError):
            bigtransfer.send_file(HOST, srv.address[1], src, legacy=True, retries=0,
                                  timeout=10.0)
        assert not stored(srv, "old.bin").exists()

    # Against a server without a token, legacy=True still speaks protocol 1.
    with bigtransfer.Server(tmp_path / "plain", port=0, bind=HOST) as srv:
        assert bigtransfer.send_file(HOST, srv.address[1], src, legacy=True).protocol == 1
        assert bigtransfer.send_file(HOST, srv.address[1], src, name="v2.bin").protocol == 2


def test_min_free_refuses_uploads(tmp_path):
    src = tmp_path / "m.bin"
    make_file(src, 1000, seed=14)
    with bigtransfer.Server(tmp_path / "full", port=0, bind=HOST, min_free=2**64 - 1) as srv:
        with pytest.raises(bigtransfer.RefusedError) as info:
            bigtransfer.send_file(HOST, srv.address[1], src, retries=0)
        assert "min-free" in str(info.value)
        assert not stored(srv, "m.bin").exists()


def test_auth_and_cache_arguments(tmp_path):
    src = tmp_path / "a.bin"
    make_file(src, 10)
    for short in (b"short", "fifteen chars!!", b"", bytearray(b"x" * 15)):
        with pytest.raises(bigtransfer.InvalidInputError) as info:
            bigtransfer.send_file(HOST, 1, src, token=short)
        assert isinstance(info.value, ValueError)
        assert "at least 16 bytes" in str(info.value)
        with pytest.raises(bigtransfer.InvalidInputError):
            bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, token=short)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.send_file(HOST, 1, src, token="\udc80" * 20)
    with pytest.raises(TypeError):
        bigtransfer.send_file(HOST, 1, src, token=42)
    with pytest.raises(TypeError):
        bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, token=["x" * 20])
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, min_free=-1)
    with pytest.raises(TypeError):
        bigtransfer.send_file(HOST, 1, src, cache_dir=42)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.send_file(HOST, 1, src, cache_dir="")
    assert "cache_dir=..." in bigtransfer.send_file.__text_signature__
    assert "token=None" in bigtransfer.Server.__text_signature__


def _cancel_then_resume(port, src, **kwargs):
    """Cancel an upload of ``src`` a quarter in, then finish it; the Result."""
    with pytest.raises(bigtransfer.CancelledError):
        bigtransfer.send_file(HOST, port, src, limit_rate=8 * 1024 * 1024,
                              progress=lambda d, t: False if d >= t // 4 else None, **kwargs)
    return bigtransfer.send_file(HOST, port, src, **kwargs)


def test_cache_dir(server, tmp_path, monkeypatch):
    port = server.address[1]
    size = 8 * 1024 * 1024

    # A directory: the resume takes the held part's checksums from it.
    cache = tmp_path / "cache"
    src = tmp_path / "cached.bin"
    data = make_file(src, size, seed=15)
    result = _cancel_then_resume(port, src, cache_dir=cache)
    assert result.resumed_from > 0 and result.bytes_hashed == 0
    assert any(cache.iterdir()), "nothing written to cache_dir"
    assert stored(server, "cached.bin").read_bytes() == data

    # None: no cache, so the resume reads the held part again to compare it.
    src = tmp_path / "uncached.bin"
    data = make_file(src, size, seed=16)
    before = sorted(cache.iterdir())
    result = _cancel_then_resume(port, src, cache_dir=None)
    assert result.resumed_from > 0 and result.bytes_hashed >= result.resumed_from
    assert sorted(cache.iterdir()) == before
    assert stored(server, "uncached.bin").read_bytes() == data

    # Not given (or ...): the engine's default, here $BIGTRANSFER_CACHE_DIR.
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("BIGTRANSFER_CACHE_DIR", str(env_cache))
    src = tmp_path / "default.bin"
    make_file(src, size, seed=17)
    result = _cancel_then_resume(port, src)
    assert result.bytes_hashed == 0 and any(env_cache.iterdir())
    src = tmp_path / "ellipsis.bin"
    make_file(src, size, seed=18)
    result = _cancel_then_resume(port, src, cache_dir=...)
    assert result.bytes_hashed == 0 and len(list(env_cache.iterdir())) == 2


# ---------------------------------------------------------------------------
# Interoperation with the bigtransfer binary


def test_cli_client_to_module_server(cli, server, tmp_path):
    src = tmp_path / "from-cli.bin"
    data = make_file(src, 3 * 1024 * 1024, seed=9)
    proc = subprocess.run(
        [cli, "client", "--host", HOST, "--port", str(server.address[1]), "--quiet", str(src)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert stored(server, "from-cli.bin").read_bytes() == data
    assert server.stats["completed"] == 1


def test_module_client_to_cli_server(cli_server, big_data):
    port, store = cli_server
    path, data = big_data
    calls = []
    result = bigtransfer.send_file(HOST, port, path, progress=lambda d, t: calls.append(d))
    assert result.crc32 == zlib.crc32(data) and result.resumed_from == 0
    assert calls[-1] == len(data)
    assert (store / "big.bin").read_bytes() == data


def test_module_client_resumes_on_cli_server(cli_server, tmp_path):
    port, store = cli_server
    src = tmp_path / "cli-resume.bin"
    data = make_file(src, 4 * 1024 * 1024, seed=10)
    with pytest.raises(bigtransfer.CancelledError):
        bigtransfer.send_file(HOST, port, src, limit_rate=4 * 1024 * 1024,
                              progress=lambda d, t: False if d >= t // 4 else None)
    result = bigtransfer.send_file(HOST, port, src)
    assert result.resumed_from > 0
    assert result.bytes_sent == len(data) - result.resumed_from
    assert (store / "cli-resume.bin").read_bytes() == data


def test_store_url_is_checked_at_once(tmp_path, monkeypatch):
    with pytest.raises(bigtransfer.InvalidInputError) as info:
        bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, store="/srv/not-a-url")
    assert "s3://" in str(info.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(bigtransfer.InvalidInputError) as info:
        bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, store="s3://bucket/p")
    assert "AWS_ACCESS_KEY_ID" in str(info.value)
    # Credentials the store refuses stop the server before it serves
    # (only with a store, from tests/s3/run.sh).
    endpoint = os.environ.get("BT_S3_ENDPOINT")
    if endpoint:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "btaccesskey")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(bigtransfer.RefusedError) as info:
            bigtransfer.Server(tmp_path / "d", port=0, bind=HOST, store="s3://bt-test/py",
                               s3_endpoint=endpoint)
        assert "refused the credentials" in str(info.value)


def test_get_file_roundtrip_cancel_resume_and_refusals(server, tmp_path, big_data):
    path, data = big_data
    port = server.address[1]
    bigtransfer.send_file(HOST, port, path)
    dest = tmp_path / "back.bin"
    # Cancelled part-way: nothing under the final name, the part kept.
    with pytest.raises(bigtransfer.CancelledError):
        bigtransfer.get_file(HOST, port, "big.bin", dest, limit_rate=4 << 20,
                             progress=lambda done, total: done < total // 3 or False)
    assert not dest.exists()
    assert (tmp_path / ".back.bin.bigtransfer-part").exists()
    calls = []
    r = bigtransfer.get_file(HOST, port, "big.bin", dest,
                             progress=lambda done, total: calls.append((done, total)))
    assert isinstance(r, bigtransfer.GetResult)
    assert dest.read_bytes() == data
    assert r.crc32 == zlib.crc32(data) and r.filesize == len(data)
    assert r.resumed_from > 0 and r.bytes_received == len(data) - r.resumed_from
    assert r.encrypted and not r.restarted
    assert calls and calls[-1][0] == len(data)
    with pytest.raises(bigtransfer.InvalidInputError):
        bigtransfer.get_file(HOST, port, "big.bin", dest)
    with pytest.raises(bigtransfer.RefusedError, match="no file"):
        bigtransfer.get_file(HOST, port, "missing.bin", tmp_path / "m")
    with pytest.raises(bigtransfer.RefusedError, match="not a file name"):
        bigtransfer.get_file(HOST, port, "../big.bin", tmp_path / "x")


def test_get_file_compress_modes_give_the_same_bytes(server, tmp_path, big_data):
    port = server.address[1]
    text = "".join(f"GET /item/{i * 7919 % 100000} status={200 + i % 3}\n" for i in range(300_000))
    stored(server, "log.txt").parent.mkdir(parents=True, exist_ok=True)
    stored(server, "log.txt").write_text(text)
    for mode in ("zstd:3", "auto", "off"):
        dest = tmp_path / f"log-{mode}.txt"
        r = bigtransfer.get_file(HOST, port, "log.txt", dest, compress=mode, streams=1)
        assert dest.read_text() == text
        assert r.bytes_received == len(text)
        if mode == "zstd:3":
            assert r.compress_agreed
            assert r.compressed_blocks == -(-len(text) // (1 << 20))
            assert r.wire_bytes * 3 < len(text)
        if mode == "off":
            assert not r.compress_agreed and r.compressed_blocks == 0
            assert r.wire_bytes == len(text)
    with pytest.raises(bigtransfer.InvalidInputError, match="expected auto, off, zstd"):
        bigtransfer.get_file(HOST, port, "log.txt", tmp_path / "x", compress="gzip")


def test_get_file_over_parallel_streams(server, tmp_path, big_data):
    path, data = big_data
    port = server.address[1]
    bigtransfer.send_file(HOST, port, path, streams=1)
    dest = tmp_path / "streamed.bin"
    r = bigtransfer.get_file(HOST, port, "big.bin", dest, streams=3)
    assert dest.read_bytes() == data
    assert r.crc32 == zlib.crc32(data) and r.filesize == len(data)
    for bad in (0, 9, "many"):
        with pytest.raises(bigtransfer.InvalidInputError, match="streams"):
            bigtransfer.get_file(HOST, port, "big.bin", tmp_path / "x", streams=bad)


def test_send_tree_and_get_tree_roundtrip_with_progress(server, tmp_path):
    port = server.address[1]
    src = tmp_path / "src" / "tree"
    (src / "sub dir").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "sub dir" / "ünï.txt").write_bytes(b"hello\n" * 1000)
    big = os.urandom(1500007)
    (src / "big.bin").write_bytes(big)
    os.chmod(src / "big.bin", 0o640)
    os.utime(src / "big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.symlink("big.bin", src / "link")
    sent = []
    r = bigtransfer.send_tree(HOST, port, [src], progress=lambda *a: sent.append(a))
    assert isinstance(r, bigtransfer.TreeResult)
    assert (r.files, r.dirs, r.symlinks, r.moved) == (2, 3, 1, 2)
    assert stored(server, "tree/big.bin").read_bytes() == big
    assert sent and sent[-1][1] == 2 and sent[-1][2] == 2
    got = tmp_path / "got"
    calls = []
    r = bigtransfer.get_tree(HOST, port, "tree", got,
                             progress=lambda *a: calls.append(a))
    assert (r.files, r.moved, r.held) == (2, 2, 0)
    assert (got / "tree" / "big.bin").read_bytes() == big
    assert (got / "tree" / "sub dir" / "ünï.txt").read_bytes() == b"hello\n" * 1000
    assert os.readlink(got / "tree" / "link") == "big.bin"
    assert (got / "tree" / "empty").is_dir()
    st = os.stat(got / "tree" / "big.bin")
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1_600_000_000_123_456_789
    # The callback names files and ends with both counts whole.
    assert any(c[0].startswith("tree/") for c in calls)
    assert calls[-1][1:] == (2, 2, len(big) + 6000, len(big) + 6000)
    again = bigtransfer.get_tree(HOST, port, ["tree"], got)
    assert again.moved == 0 and again.bytes_moved == 0 and again.held == 3
    with pytest.raises(bigtransfer.RefusedError, match="no \"nothing\" on the server"):
        bigtransfer.get_tree(HOST, port, "nothing", got)
    with pytest.raises(bigtransfer.RefusedError, match=r"\.\."):
        bigtransfer.get_tree(HOST, port, "tree/../..", got)
    with pytest.raises(bigtransfer.CancelledError):
        bigtransfer.get_tree(HOST, port, "tree", tmp_path / "cancelled", limit_rate=1 << 20,
                             progress=lambda *a: False)


def test_send_tree_counts_content_changed_under_the_same_size_and_mtime(server, tmp_path):
    port = server.address[1]
    src = tmp_path / "quiet"
    src.mkdir()
    (src / "a.txt").write_bytes(b"old content!")
    (src / "b.txt").write_bytes(b"unchanged")
    r = bigtransfer.send_tree(HOST, port, [src])
    assert (r.moved, r.held, r.changed_same_mtime) == (2, 0, 0)
    mtime = os.stat(src / "a.txt").st_mtime_ns
    (src / "a.txt").write_bytes(b"NEW content!")
    os.utime(src / "a.txt", ns=(mtime, mtime))
    r = bigtransfer.send_tree(HOST, port, [src])
    assert (r.moved, r.held, r.changed_same_mtime, r.bytes_moved) == (1, 1, 1, 12)
    assert "changed_same_mtime=1" in repr(r)
    assert stored(server, "quiet/a.txt").read_bytes() == b"NEW content!"
    again = bigtransfer.send_tree(HOST, port, [src])
    assert (again.moved, again.held, again.changed_same_mtime) == (0, 2, 0)
