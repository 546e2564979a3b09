"""server.py and client.py tested against each other, pure Python on both sides.

Every server runs as a subprocess on 127.0.0.1 with a free port, is read for
its ``listening on`` line with a deadline, and is stopped by its PID; it must
exit 0. Waiting is always polling with a deadline. Set BIGTRANSFER_TEST_PYTHON
to run the scripts with another interpreter (e.g. a Python 3.9).
"""

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
SERVER = PYTHON_DIR / "server.py"
CLIENT = PYTHON_DIR / "client.py"
PYTHON = os.environ.get("BIGTRANSFER_TEST_PYTHON", sys.executable)
HOST = "127.0.0.1"
MiB = 1024 * 1024
OK_LINE = re.compile(r"CRC32_OK: (.+), (\d+) bytes, resumed from (\d+), sent (\d+) bytes")


def script_env(lang="C.UTF-8", **extra):
    env = dict(os.environ)
    for var in ("LC_ALL", "LC_MESSAGES", "LANGUAGE", "BIGTRANSFER_ENGINE"):
        env.pop(var, None)
    env.update(LANG=lang, BIGTRANSFER_PURE="1", PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` until it returns something true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.02)


def held_offset(meta_path):
    """The offset of the newest checkpoint in a held part's record (0 if none)."""
    try:
        data = meta_path.read_bytes()
    except OSError:
        return 0
    rec = load_server_module().decode_meta(data)
    return rec[4] if rec else 0


def load_server_module():
    spec = importlib.util.spec_from_file_location("bt_server_script", SERVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_line(pipe, timeout):
    """One line from a subprocess pipe, or AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise AssertionError("no line within %.0f s (got %r)" % (timeout, data))
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                raise AssertionError("pipe closed before a full line (got %r)" % data)
            data += chunk
    return data.decode("utf-8")


class RunningServer:
    def __init__(self, proc, port, directory, log_path):
        self.proc = proc
        self.port = port
        self.dir = directory
        self.log_path = log_path

    def log(self):
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def held_paths(self, name):
        key = hashlib.sha256(name.encode("utf-8")).hexdigest()
        state = self.dir / ".bigtransfer"
        return state / (key + ".part"), state / (key + ".meta")


@contextlib.contextmanager
def running_server(directory, log_path, env=None):
    """Run server.py on a free port of 127.0.0.1; on exit stop it and check it exited 0."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [PYTHON, str(SERVER), "--port", "0", "--bind", HOST, "--dir", str(directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            env=env or script_env())
    try:
        line = read_line(proc.stdout, 20)
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, "unexpected first line %r" % line
        yield RunningServer(proc, int(match.group(1)), directory, log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
            raise AssertionError("server did not stop within 20 s of SIGTERM")
        finally:
            proc.stdout.close()
    assert code == 0, "server exited with %r:\n%s" % (code, log_path.read_text())


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "received", tmp_path / "server.log") as srv:
        yield srv


def make_file(directory, name, size):
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def run_client(args, stdin_text=None, env=None, timeout=120):
    stdin = {"input": stdin_text} if stdin_text is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([PYTHON, str(CLIENT)] + [str(a) for a in args],
                          capture_output=True, text=True, encoding="utf-8",
                          env=env or script_env(), timeout=timeout, **stdin)


def upload(server, path, *extra, env=None):
    return run_client(["--host", HOST, "--port", server.port] + list(extra) + [path], env=env)


def ok_result(proc):
    assert proc.returncode == 0, "client failed (%d):\n%s\n%s" % (
        proc.returncode, proc.stdout, proc.stderr)
    match = OK_LINE.search(proc.stdout)
    assert match, proc.stdout
    name, size, offset, sent = match.groups()
    return {"name": name, "size": int(size), "offset": int(offset), "sent": int(sent)}


def assert_stored(server, source):
    stored = server.dir / source.name
    data = source.read_bytes()
    assert stored.read_bytes() == data
    assert zlib.crc32(stored.read_bytes()) == zlib.crc32(data)
    part, sidecar = server.held_paths(source.name)
    assert not part.exists() and not sidecar.exists()


def start_paced_client(server, path, rate="1M"):
    return subprocess.Popen(
        [PYTHON, str(CLIENT), "--host", HOST, "--port", str(server.port),
         "--limit-rate", rate, "--retries", "0", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=script_env())


def kill_midway(server, path, at_least=MiB):
    """Start a paced upload of ``path``, kill the client once the server holds
    ``at_least`` bytes, and wait until the server has checkpointed the part."""
    part, sidecar = server.held_paths(path.name)
    client = start_paced_client(server, path)
    try:
        wait_for(lambda: part.exists() and part.stat().st_size >= at_least, 30,
                 "the part file to grow")
    finally:
        client.kill()
        client.wait(timeout=20)
    held = wait_for(lambda: held_offset(sidecar) >= at_least and held_offset(sidecar), 30,
                    "the checkpoint after the client was killed")
    assert at_least <= held < path.stat().st_size
    return held


def raw_upload(port, header_bytes, body=b"", half_close=False):
    """Speak the protocol by hand. Returns (offset, result) or None if the server
    closed the connection without announcing an offset."""
    with socket.create_connection((HOST, port), timeout=20) as sock:
        sock.sendall(header_bytes)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while len(data) < 8:
                chunk = sock.recv(8 - len(data))
                if not chunk:
                    return None
                data += chunk
        except ConnectionResetError:
            return None
        (offset,) = struct.unpack("!Q", data)
        sock.sendall(body[offset:])
        result = b""
        while len(result) < 64:
            chunk = sock.recv(64)
            if not chunk:
                break
            result += chunk
        return offset, result


def header(filename, body=b"", **overrides):
    meta = {"filename": filename, "filesize": len(body), "crc32": zlib.crc32(body)}
    meta.update(overrides)
    data = json.dumps(meta).encode("utf-8")
    return struct.pack("!I", len(data)) + data


# --------------------------------------------------------------------------
# Uploads


@pytest.mark.parametrize("size", [0, 1, 20 * MiB])
def test_upload(server, tmp_path, size):
    source = make_file(tmp_path, "data-%d.bin" % size, size)
    result = ok_result(upload(server, source))
    assert result == {"name": source.name, "size": size, "offset": 0, "sent": size}
    assert_stored(server, source)


def test_upload_again_keeps_the_old_file_as_a_version(server, tmp_path):
    source = make_file(tmp_path, "same.bin", 1000)
    old = source.read_bytes()
    ok_result(upload(server, source))
    source.write_bytes(b"new content")
    assert ok_result(upload(server, source))["sent"] == len(b"new content")
    assert_stored(server, source)
    assert (server.dir / "same.bin.~1~").read_bytes() == old
    source.write_bytes(b"newer")
    ok_result(upload(server, source))
    assert_stored(server, source)
    assert (server.dir / "same.bin.~1~").read_bytes() == old
    assert (server.dir / "same.bin.~2~").read_bytes() == b"new content"


def test_concurrent_clients(server, tmp_path):
    sources = [make_file(tmp_path, "c%d.bin" % i, 3 * MiB + i) for i in range(4)]
    clients = [subprocess.Popen(
        [PYTHON, str(CLIENT), "--host", HOST, "--port", str(server.port), str(s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=script_env()) for s in sources]
    for proc in clients:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for source in sources:
        assert_stored(server, source)


# --------------------------------------------------------------------------
# Interactive use


def test_interactive_english(server, tmp_path):
    source = make_file(tmp_path, "answers.bin", 5000)
    proc = run_client([], stdin_text="%s\n%d\n%s\n" % (HOST, server.port, source))
    for prompt in ("Server IP address: ", "Server port: ", "Path to the file: "):
        assert prompt in proc.stdout
    assert ok_result(proc)["size"] == 5000
    assert_stored(server, source)


def test_interactive_russian(server, tmp_path):
    source = make_file(tmp_path, "otvet.bin", 5000)
    proc = run_client([], stdin_text="%s\n%d\n%s\n" % (HOST, server.port, source),
                      env=script_env(lang="ru_RU.UTF-8"))
    for prompt in ("Введите IP-адрес сервера: ", "Введите порт сервера: ",
                   "Введите путь к файлу: "):
        assert prompt in proc.stdout
    ok_result(proc)
    assert_stored(server, source)


def test_bad_answers_are_asked_again(server, tmp_path):
    source = make_file(tmp_path, "retry-answers.bin", 100)
    answers = ["", HOST, "99999", "abc", str(server.port), str(tmp_path / "missing"),
               str(tmp_path), str(source)]
    proc = run_client([], stdin_text="\n".join(answers) + "\n")
    assert proc.stdout.count("Server IP address: ") == 2
    assert proc.stdout.count("Server port: ") == 3
    assert proc.stdout.count("Path to the file: ") == 3
    assert "from 1 to 65535, not '99999'" in proc.stderr
    assert "No such file" in proc.stderr and "Not a regular file" in proc.stderr
    ok_result(proc)
    assert_stored(server, source)


def test_end_of_input_while_asking(tmp_path):
    proc = run_client([], stdin_text="%s\n" % HOST, timeout=30)
    assert proc.returncode == 2
    assert "input has ended" in proc.stderr


def test_bad_file_on_command_line(tmp_path):
    proc = run_client(["--host", HOST, "--port", "1", tmp_path / "missing"], timeout=30)
    assert proc.returncode == 2
    assert "No such file" in proc.stderr


# --------------------------------------------------------------------------
# Failures


def closed_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        return sock.getsockname()[1]


def test_unreachable_server(tmp_path):
    source = make_file(tmp_path, "nowhere.bin", 10)
    port = closed_port()
    start = time.monotonic()
    proc = run_client(["--host", HOST, "--port", port, "--retries", "1", "--timeout", "5",
                       source], timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "Cannot reach the server at 127.0.0.1:%d" % port in proc.stderr
    assert "retry 1 of 1" in proc.stderr
    assert time.monotonic() - start < 30


def test_unreachable_server_interactive(tmp_path):
    source = make_file(tmp_path, "nowhere.bin", 10)
    port = closed_port()
    proc = run_client([], stdin_text="%s\n%d\n%s\ny\nn\n" % (HOST, port, source),
                      env=script_env(lang="ru_RU.UTF-8"), timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.count("Попробовать снова? (y/n): ") == 2
    assert proc.stderr.count("Не удаётся подключиться к серверу") == 2


def test_resume_after_client_killed(server, tmp_path):
    source = make_file(tmp_path, "resume.bin", 8 * MiB)
    held = kill_midway(server, source)
    assert not (server.dir / source.name).exists()  # never visible before it is complete
    result = ok_result(upload(server, source))
    assert result["offset"] == held > 0
    assert result["sent"] == source.stat().st_size - held
    assert_stored(server, source)


def test_other_source_same_name_starts_over(server, tmp_path):
    source = make_file(tmp_path, "changed.bin", 8 * MiB)
    kill_midway(server, source)
    source.write_bytes(os.urandom(3 * MiB))
    result = ok_result(upload(server, source))
    assert result["offset"] == 0 and result["sent"] == 3 * MiB
    assert_stored(server, source)


def pump(src, dst, limit=None):
    """Copy src -> dst (at most ``limit`` bytes), then cut both sockets."""
    total = 0
    try:
        while limit is None or total < limit:
            data = src.recv(65536 if limit is None else min(65536, limit - total))
            if not data:
                break
            dst.sendall(data)
            total += len(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class CuttingProxy:
    """Forwards ``connections`` connections to the server; cuts the first one after
    ``cut_after`` bytes from the client."""

    def __init__(self, target_port, cut_after, connections=2):
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.cut_after = cut_after
        self.thread = threading.Thread(target=self._serve, args=(connections,), daemon=True)
        self.thread.start()

    def _serve(self, connections):
        with self.listener:
            for n in range(connections):
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                upstream = socket.create_connection((HOST, self.target_port), timeout=30)
                client.settimeout(30)
                limit = self.cut_after if n == 0 else None
                pumps = [threading.Thread(target=pump, args=(client, upstream, limit)),
                         threading.Thread(target=pump, args=(upstream, client))]
                for t in pumps:
                    t.start()
                for t in pumps:
                    t.join(60)
                client.close()
                upstream.close()


def test_connection_lost_midway_resumes_in_same_run(server, tmp_path):
    source = make_file(tmp_path, "flaky.bin", 6 * MiB)
    proxy = CuttingProxy(server.port, cut_after=2 * MiB)
    proc = run_client(["--host", HOST, "--port", proxy.port, "--retries", "2", source])
    proxy.thread.join(30)
    result = ok_result(proc)
    assert "(2 attempts)" in proc.stdout
    assert "Connection lost" in proc.stderr and "resuming in" in proc.stderr
    resumed = [int(n) for n in re.findall(r"resuming at (\d+)", server.log())]
    assert resumed[0] == 0 and 0 < resumed[1] <= 2 * MiB
    assert result["offset"] == 0
    assert result["sent"] >= source.stat().st_size - resumed[1]
    assert_stored(server, source)


def test_tampered_part_fails_then_retry_succeeds(server, tmp_path):
    source = make_file(tmp_path, "tampered.bin", 8 * MiB)
    held = kill_midway(server, source)
    part, _ = server.held_paths(source.name)
    with open(part, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    proc = upload(server, source, "--retries", "2")
    assert "CRC32_ERROR" in proc.stderr
    result = ok_result(proc)
    assert "(2 attempts)" in proc.stdout
    assert result["offset"] == held
    assert result["sent"] == (source.stat().st_size - held) + source.stat().st_size
    assert_stored(server, source)
    assert "changed on disk" in server.log()
    assert "CRC-32 mismatch" in server.log()


def test_crc_error_without_retries_exits_5(server, tmp_path):
    source = make_file(tmp_path, "crc5.bin", 8 * MiB)
    kill_midway(server, source)
    part, sidecar = server.held_paths(source.name)
    with open(part, "r+b") as f:
        f.write(b"\x00" * 16 + b"\xff" * 16)  # differs from random data
    proc = upload(server, source, "--retries", "0")
    assert proc.returncode == 5, proc.stderr
    assert "CRC32_ERROR: crc5.bin" in proc.stdout
    assert not part.exists() and not sidecar.exists()  # the bad bytes are discarded
    assert not (server.dir / source.name).exists()


def test_connection_lost_without_retries_exits_4(server, tmp_path):
    source = make_file(tmp_path, "lost4.bin", 4 * MiB)
    proxy = CuttingProxy(server.port, cut_after=MiB, connections=1)
    proc = run_client(["--host", HOST, "--port", proxy.port, "--retries", "0", source])
    proxy.thread.join(30)
    assert proc.returncode == 4, proc.stderr
    assert "Connection to 127.0.0.1:%d lost" % proxy.port in proc.stderr
    result = ok_result(upload(server, source))  # what got through is kept and resumed
    assert 0 < result["offset"] <= MiB
    assert result["sent"] == source.stat().st_size - result["offset"]
    assert_stored(server, source)


def test_server_stop_keeps_part_and_restart_resumes(tmp_path):
    directory, log = tmp_path / "received", tmp_path / "server.log"
    source = make_file(tmp_path, "restart.bin", 8 * MiB)
    with running_server(directory, log) as srv:
        part, sidecar = srv.held_paths(source.name)
        client = start_paced_client(srv, source)
        try:
            wait_for(lambda: part.exists() and part.stat().st_size >= MiB, 30, "the part")
            srv.proc.send_signal(signal.SIGINT)
            assert srv.proc.wait(timeout=20) == 0
        finally:
            client.kill()
            client.wait(timeout=20)
        held = held_offset(sidecar)
        assert held >= MiB and part.stat().st_size == held
    with running_server(directory, log) as srv:
        result = ok_result(upload(srv, source))
        assert result["offset"] == held
        assert_stored(srv, source)


# --------------------------------------------------------------------------
# Hostile peers


REFUSED = [
    ("NUL in name", header("a\x00b", b"x")),
    ("300-byte name", header("a" * 300, b"x")),
    ("control char", header("bell\x07", b"x")),
    ("dot-dot", header("..", b"x")),
    ("only dots", header("a/...", b"x")),
    ("empty last component", header("dir/", b"x")),
    ("reserved", header(".BigTransfer", b"x")),
    ("own state dir", header(".bigtransfer", b"x")),
    ("old state dir", header(".bigtransfer-py", b"x")),
    ("filesize bool", header("f", b"x", filesize=True)),
    ("filesize negative", header("f", b"x", filesize=-1)),
    ("filesize string", header("f", b"x", filesize="1")),
    ("crc too big", header("f", b"x", crc32=2 ** 32)),
    ("crc missing", header("f", b"x", crc32=None)),
    ("not an object", struct.pack("!I", 2) + b"[]"),
    ("not json", struct.pack("!I", 5) + b"hello"),
    ("not utf-8", struct.pack("!I", 2) + b"\xff\xfe"),
    ("length 0", struct.pack("!I", 0)),
    ("length over 64 KiB", struct.pack("!I", 65537)),
]


def test_hostile_headers_are_refused(server, tmp_path):
    for what, raw in REFUSED:
        assert raw_upload(server.port, raw) is None, what
    assert raw_upload(server.port, b"\x00\x00", half_close=True) is None  # EOF mid-length
    assert sorted(p.name for p in server.dir.iterdir()) == [".bigtransfer"]
    assert [p.name for p in (server.dir / ".bigtransfer").iterdir()] == ["lock"]
    log = server.log()
    assert log.count("refused:") == len(REFUSED)
    assert "contains a control character" in log and "300 bytes long" in log
    # ... and the server goes on serving.
    source = make_file(tmp_path, "after.bin", 1234)
    ok_result(upload(server, source))
    assert_stored(server, source)


def test_path_components_are_stripped(server, tmp_path):
    for name, body in (("../x", b"hello"), ("..\\..\\y", b"world"), ("/etc/z", b"!")):
        assert raw_upload(server.port, header(name, body), body) == (0, b"CRC32_OK")
    assert (server.dir / "x").read_bytes() == b"hello"
    assert (server.dir / "y").read_bytes() == b"world"
    assert (server.dir / "z").read_bytes() == b"!"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_wrong_crc_is_discarded(server):
    body = b"some bytes"
    reply = raw_upload(server.port, header("bad.bin", body, crc32=zlib.crc32(body) ^ 1), body)
    assert reply == (0, b"CRC32_ERROR")
    assert sorted(p.name for p in server.dir.iterdir()) == [".bigtransfer"]
    assert [p.name for p in (server.dir / ".bigtransfer").iterdir()] == ["lock"]


# --------------------------------------------------------------------------
# Engine switch, with a stand-in for the Rust module


FAKE_MODULE = textwrap.dedent('''
    """Stand-in for the bigtransfer extension: records which pieces were used."""
    import os, zlib

    class BigTransferError(Exception): pass
    class UnreachableError(BigTransferError, ConnectionError): pass
    class ConnectionLostError(BigTransferError, ConnectionError): pass
    class CrcMismatchError(BigTransferError): pass
    class TimedOutError(BigTransferError, TimeoutError): pass
    class RefusedError(BigTransferError): pass
    class SourceFileError(BigTransferError, OSError): pass
    class SourceFileNotFoundError(SourceFileError, FileNotFoundError): pass
    class Result:
        filename, filesize, crc32, resumed_from, bytes_sent, attempts = "f", 10, 1, 4, 6, 1

    def _mark(piece):
        with open(os.environ["FAKE_BT_MARKS"], "a") as f:
            f.write(piece + "\\n")

    def crc32_file(path):
        _mark("crc")
        with open(path, "rb") as f:
            return zlib.crc32(f.read())

    if os.environ.get("FAKE_BT_SEND"):
        def send_file(host, port, path, *, retries=5, timeout=60.0, progress=None):
            _mark("send")
            mode = os.environ["FAKE_BT_SEND"]
            if mode == "ok":
                return Result()
            raise {"unreachable": UnreachableError, "lost": ConnectionLostError,
                   "timeout": TimedOutError, "crc": CrcMismatchError,
                   "refused": RefusedError, "missing": SourceFileNotFoundError}[mode]("fake")
''')


@pytest.fixture
def fake_module(tmp_path):
    lib = tmp_path / "fakelib"
    lib.mkdir()
    (lib / "bigtransfer.py").write_text(FAKE_MODULE)
    marks = tmp_path / "marks.txt"

    def env(**extra):
        e = script_env(PYTHONPATH=str(lib), FAKE_BT_MARKS=str(marks))
        del e["BIGTRANSFER_PURE"]
        e.update(extra)
        return e

    def used():
        return marks.read_text().split() if marks.exists() else []
    return env, used


def test_engine_pieces_are_used_when_present(server, tmp_path, fake_module):
    env, used = fake_module
    source = make_file(tmp_path, "engine.bin", 4096)
    ok_result(upload(server, source, env=env()))  # no send_file: the send piece stays pure
    assert used() == ["crc"]
    ok_result(upload(server, source, env=env(BIGTRANSFER_PURE="1")))
    ok_result(upload(server, source, "--pure", env=env()))
    ok_result(upload(server, source, env=env(BIGTRANSFER_ENGINE="send,serve")))
    assert used() == ["crc"]
    assert_stored(server, source)


@pytest.mark.parametrize("mode, code", [("ok", 0), ("unreachable", 3), ("lost", 4),
                                        ("timeout", 4), ("crc", 5), ("refused", 1),
                                        ("missing", 2)])
def test_engine_errors_map_to_exit_codes(tmp_path, fake_module, mode, code):
    env, used = fake_module
    source = make_file(tmp_path, "engine.bin", 10)
    proc = run_client(["--host", HOST, "--port", "9", source], env=env(FAKE_BT_SEND=mode),
                      timeout=30)
    assert proc.returncode == code, proc.stderr
    assert used() == ["send"]
    if code == 0:
        assert "CRC32_OK: f, 10 bytes, resumed from 4, sent 6 bytes" in proc.stdout


# --------------------------------------------------------------------------
# Name rules, checked in-process


def load_server_module():
    spec = importlib.util.spec_from_file_location("legacy_server", str(SERVER))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sanitize_name():
    srv = load_server_module()
    assert srv.sanitize_name("../../etc/passwd") == "passwd"
    assert srv.sanitize_name("C:\\Users\\me\\file.txt") == "file.txt"
    assert srv.sanitize_name("é" * 127) == "é" * 127  # 254 bytes
    assert srv.sanitize_name(".hidden") == ".hidden"
    for bad in ("", ".", "..", "....", "a/", "x\x00", "x\x7f", "x\u0085", "é" * 128,
                ".bigtransfer", ".BIGTRANSFER", "\ud800"):
        with pytest.raises(srv.Refused):
            srv.sanitize_name(bad)


def load_client_module():
    spec = importlib.util.spec_from_file_location("legacy_client", str(CLIENT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proc_int(path, field):
    try:
        with open(path) as f:
            return int(f.read().split()[field])
    except (OSError, ValueError, IndexError):
        return None


def test_send_buffer_is_widened_only_past_autotuning():
    cli = load_client_module()
    core_max = proc_int("/proc/sys/net/core/wmem_max", 0)
    auto_max = proc_int("/proc/sys/net/ipv4/tcp_wmem", 2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        before = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        got = cli.widen_send_buffer(s)
        after = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if core_max is None or auto_max is None or min(core_max, 32 << 20) * 2 <= auto_max:
        # Autotuning reaches at least as far: the buffer is left alone.
        assert got is None
        assert after == before
    else:
        assert got == min(core_max, 32 << 20)
        assert after == 2 * got  # Linux doubles the request for its bookkeeping
