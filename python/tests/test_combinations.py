"""client.py x server.py, each side pure Python or running on the Rust engine.

The four combinations of ``python3 python/client.py`` and ``python3
python/server.py``, each either forced to pure Python (``BIGTRANSFER_PURE=1``)
or left to use the ``bigtransfer`` extension module for every piece it
provides (the "engine"). For each: a plain upload, and an upload killed
midway (SIGKILL) and resumed by a second run.

Each test also checks that the engine really was used, or not:

* server: both log ``[RFC 3339 time] message`` and keep unfinished uploads
  in the one shared layout (``.bigtransfer/``), so they are told apart by
  the engine's "with the bigtransfer module" line and by the audit hook
  below (only the pure server binds its listener from Python);
* client: every process of these tests runs with an audit hook
  (``sys.addaudithook`` from a ``sitecustomize`` on PYTHONPATH) that records
  the Python-level ``socket.connect`` and ``socket.bind`` events. The pure
  client connects through Python's ``socket`` module, the engine never does;
  likewise only the pure server binds its listener from Python. Against the
  engine server the protocol in its log tells the clients apart too (the
  engine client negotiates protocol 2, the pure one speaks version 1).

The engine combinations are skipped when ``import bigtransfer`` fails (build
it with tests/python/run.sh). Servers listen on 127.0.0.1 with a free port,
every wait is a poll with a deadline, processes are stopped by their PID.
Set BIGTRANSFER_TEST_PYTHON to run the scripts with another interpreter.
"""

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
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
DEADLINE = 30.0  # seconds: the longest any single wait may take

# Sizes that are not a multiple of any buffer, block or chunk (odd, not 4 KiB aligned).
UPLOAD_SIZE = 12 * MiB + 12345
RESUME_SIZE = 40 * MiB + 4321
KILL_AT = 4 * MiB
RATE = "4M"  # 40 MiB at 4 MiB/s: about 10 s, the kill comes after about 1 s

# "CRC32_OK: NAME, SIZE bytes, resumed from OFFSET, sent SENT bytes[ (N attempts)]",
# the one line client.py prints on success whichever sender it used.
OK_LINE = re.compile(r"^CRC32_OK: (.+), (\d+) bytes, resumed from (\d+), sent (\d+) bytes"
                     r"(?: \((\d+) attempts\))?$", re.MULTILINE)
# A log line of either server ("[2026-11-30T06:56:32.581Z] 127.0.0.1:55070: receiving ...").
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] ", re.MULTILINE)

AUDIT_HOOK = textwrap.dedent('''
    """Test hook: records Python-level socket.connect / socket.bind events."""
    import os
    import sys

    _LOG = os.environ.get("BT_TEST_AUDIT_LOG")

    def _hook(event, args):
        if event in ("socket.connect", "socket.bind"):
            try:
                with open(_LOG, "a", encoding="utf-8") as f:
                    f.write("%s %r\\n" % (event, args[1:]))
            except Exception:
                pass

    if _LOG:
        sys.addaudithook(_hook)
''')


def engine_unavailable():
    """Why the engine combinations cannot run here, or None if they can."""
    try:
        import bigtransfer  # noqa: F401
    except ImportError as exc:
        return ("the bigtransfer extension module cannot be imported (%s); "
                "build it with tests/python/run.sh" % exc)
    if os.path.realpath(PYTHON) != os.path.realpath(sys.executable):
        probe = subprocess.run([PYTHON, "-c", "import bigtransfer"], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=DEADLINE)
        if probe.returncode != 0:
            return "%s cannot import the bigtransfer extension module" % PYTHON
    return None


ENGINE_MISSING = engine_unavailable()
SIDES = ("pure", "engine")


def combinations():
    for client in SIDES:
        for server in SIDES:
            marks = []
            if "engine" in (client, server):
                marks.append(pytest.mark.skipif(ENGINE_MISSING is not None,
                                                reason=ENGINE_MISSING or ""))
            yield pytest.param((client, server), marks=marks,
                               id="%s-client-%s-server" % (client, server))


COMBINATIONS = list(combinations())


# --------------------------------------------------------------------------
# Helpers


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
            chunk = os.read(pipe.fileno(), 1)
            if not chunk:
                raise AssertionError("pipe closed before a full line (got %r)" % data)
            data += chunk
    return data.decode("utf-8")


def read_text(path):
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


class Side:
    """How one script runs: pure Python or on the engine, with the audit hook."""

    def __init__(self, kind, tmp_path, role):
        self.kind = kind
        self.audit_log = tmp_path / ("%s-audit.log" % role)
        hook_dir = tmp_path / "audit-hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
        env = dict(os.environ)
        for var in ("LC_ALL", "LC_MESSAGES", "LANGUAGE", "BIGTRANSFER_ENGINE",
                    "BIGTRANSFER_PURE"):
            env.pop(var, None)
        env.update(LANG="C.UTF-8", PYTHONIOENCODING="utf-8", BT_TEST_AUDIT_LOG=str(self.audit_log),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(hook_dir),
                                                            env.get("PYTHONPATH")])),
                   # The engine client's checksum cache, kept out of $HOME.
                   BIGTRANSFER_CACHE_DIR=str(tmp_path / "sum-cache"))
        if kind == "pure":
            env["BIGTRANSFER_PURE"] = "1"
        self.env = env

    @property
    def engine(self):
        return self.kind == "engine"

    def python_sockets(self, event):
        """The audit log's lines for ``event`` (socket.connect or socket.bind)."""
        return [line for line in read_text(self.audit_log).splitlines()
                if line.startswith(event + " ")]


class RunningServer:
    def __init__(self, proc, port, directory, log_path, side):
        self.proc = proc
        self.port = port
        self.dir = directory
        self.log_path = log_path
        self.side = side

    def log(self):
        return read_text(self.log_path)

    @property
    def state_dir(self):
        """Where this server keeps unfinished uploads."""
        return self.dir / ".bigtransfer"

    def parts(self):
        """Sizes of the held parts (``*.part``) in this server's state directory."""
        sizes = []
        for p in self.state_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)
        return sizes


@contextlib.contextmanager
def running_server(side, directory, log_path):
    """Run server.py on a free port of 127.0.0.1; on exit stop it by PID (SIGTERM)
    and check that it exited 0."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [PYTHON, str(SERVER), "--port", "0", "--bind", HOST, "--dir", str(directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=side.env)
    try:
        line = read_line(proc.stdout, DEADLINE)
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, "unexpected first line %r" % line
        yield RunningServer(proc, int(match.group(1)), directory, log_path, side)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=DEADLINE)
            raise AssertionError("server did not stop within %.0f s of SIGTERM:\n%s"
                                 % (DEADLINE, read_text(log_path)))
        finally:
            proc.stdout.close()
    assert code == 0, "server exited with %r:\n%s" % (code, read_text(log_path))


@pytest.fixture
def combo(request, tmp_path):
    """(client side, running server) for the parametrized combination."""
    client_kind, server_kind = request.param
    server_side = Side(server_kind, tmp_path, "server")
    client_side = Side(client_kind, tmp_path, "client")
    with running_server(server_side, tmp_path / "received", tmp_path / "server.log") as srv:
        yield client_side, srv


def make_file(directory, name, size):
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def client_command(server, path, *extra):
    return [PYTHON, str(CLIENT), "--host", HOST, "--port", str(server.port)] + \
        [str(a) for a in extra] + [str(path)]


def run_client(side, server, path, *extra):
    return subprocess.run(client_command(server, path, *extra), capture_output=True, text=True,
                          encoding="utf-8", stdin=subprocess.DEVNULL, env=side.env,
                          timeout=120)


def ok_result(proc):
    assert proc.returncode == 0, "client failed (%d):\nstdout: %s\nstderr: %s" % (
        proc.returncode, proc.stdout, proc.stderr)
    match = OK_LINE.search(proc.stdout)
    assert match, "no CRC32_OK line in %r" % proc.stdout
    name, size, offset, sent, attempts = match.groups()
    return {"name": name, "size": int(size), "offset": int(offset), "sent": int(sent),
            "attempts": int(attempts or 1)}


def assert_stored(server, source):
    stored = server.dir / source.name
    data = source.read_bytes()
    kept = stored.read_bytes()
    assert len(kept) == len(data)
    assert kept == data, "the stored file differs from the source"
    assert zlib.crc32(kept) == zlib.crc32(data)
    assert server.parts() == [], "held parts left behind in %s" % server.state_dir


# --------------------------------------------------------------------------
# Which engine did what


def check_server_engine(server):
    """The server ran on the engine if and only if it was meant to."""
    log = server.log()
    # The listener, bound to --bind 127.0.0.1 --port 0, from Python or from Rust.
    binds = [b for b in server.side.python_sockets("socket.bind") if "%r" % ((HOST, 0),) in b]
    # One log format and one layout for both servers.
    assert LOG_LINE.search(log), "no [RFC 3339 time] log line:\n" + log
    assert all(LOG_LINE.match(line) for line in log.splitlines() if line), log
    if server.side.engine:
        assert "with the bigtransfer module" in log, log
        assert binds == [], "the listener was bound from Python: %r" % binds
    else:
        assert "with the bigtransfer module" not in log, log
        assert binds, "the listener was not bound from Python: %r" % read_text(
            server.side.audit_log)
    assert (server.dir / ".bigtransfer").is_dir(), "no .bigtransfer in %s" % server.dir
    assert not (server.dir / ".bigtransfer-py").exists(), server.dir


def check_client_engine(side, server, source, upload_runs):
    """The client ran on the engine if and only if it was meant to.

    ``upload_runs`` is how many client runs uploaded ``source`` to ``server``."""
    connects = [c for c in side.python_sockets("socket.connect")
                if "%r" % ((HOST, server.port),) in c]
    receiving = [line for line in server.log().splitlines()
                 if "receiving %s (" % source.name in line]
    if side.engine:
        assert connects == [], "the engine client connected from Python: %r" % connects
    else:
        assert len(connects) >= upload_runs, \
            "the pure client did not connect from Python: %r" % side.python_sockets(
                "socket.connect")
    if server.side.engine:
        # The engine client negotiates protocol 2 with the engine's server; the
        # pure client speaks protocol 1, which the server logs without a version.
        assert len(receiving) >= upload_runs, server.log()
        for line in receiving:
            assert ("protocol 2" in line) == side.engine, line


# --------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("combo", COMBINATIONS, indirect=True)
def test_upload(combo, tmp_path):
    side, server = combo
    source = make_file(tmp_path, "upload.bin", UPLOAD_SIZE)
    proc = run_client(side, server, source)
    result = ok_result(proc)
    assert result["name"] == source.name
    assert result["size"] == UPLOAD_SIZE
    assert result["offset"] == 0
    assert result["sent"] == UPLOAD_SIZE
    assert_stored(server, source)
    check_server_engine(server)
    check_client_engine(side, server, source, 1)


def kept_after_kill(server, name):
    """What the server says it kept of an upload cut off after data arrived:
    (log line, bytes kept or None if the line does not say), or None."""
    if server.side.engine:
        # e.g. "resume.bin: client disconnected at byte 4259840 of 41947361; held part
        # kept for resume" (protocol 1), "... held part kept: 4194304 bytes for resume" (2)
        for line in server.log().splitlines():
            if re.search(r"\] \S+: %s: .*held part kept" % re.escape(name), line):
                held = re.search(r"at byte (\d+)|kept: (\d+) bytes", line)
                return line, int(next(g for g in held.groups() if g)) if held else None
        return None
    # "'resume.bin' interrupted at 4259840 of 41947361 bytes (closed by peer); part kept";
    # not "at 0": the engine client's protocol-2 probe of a version-1 server sends nothing.
    match = re.search(r"'%s' interrupted at ([1-9]\d*) of \d+ bytes .*; part kept$"
                      % re.escape(name), server.log(), re.MULTILINE)
    return (match.group(0), int(match.group(1))) if match else None


@pytest.mark.parametrize("combo", COMBINATIONS, indirect=True)
def test_killed_upload_resumes(combo, tmp_path):
    side, server = combo
    source = make_file(tmp_path, "resume.bin", RESUME_SIZE)
    out_path, err_path = tmp_path / "killed.out", tmp_path / "killed.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        client = subprocess.Popen(
            client_command(server, source, "--limit-rate", RATE, "--retries", "0"),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=side.env)

    def part_grown():
        if client.poll() is not None:
            raise AssertionError("the paced client exited (%r) before it was killed:\n%s\n%s"
                                 % (client.returncode, read_text(out_path), read_text(err_path)))
        return any(size >= KILL_AT for size in server.parts())

    try:
        wait_for(part_grown, DEADLINE, "%d bytes held in %s" % (KILL_AT, server.state_dir))
    except AssertionError as exc:
        raise AssertionError("%s; server log:\n%s" % (exc, server.log())) from None
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGKILL)
        client.wait(timeout=DEADLINE)
    assert client.returncode == -signal.SIGKILL
    assert "CRC32_OK" not in read_text(out_path)
    assert not (server.dir / source.name).exists()  # never visible before it is complete

    # The server notices the disconnect and keeps the part; wait until it says so,
    # so the resume does not race with the killed connection's end.
    try:
        line, held = wait_for(lambda: kept_after_kill(server, source.name), DEADLINE,
                              "the server to keep the killed upload's part")
    except AssertionError as exc:
        raise AssertionError("%s; server log:\n%s" % (exc, server.log())) from None

    proc = run_client(side, server, source)
    result = ok_result(proc)
    size = source.stat().st_size
    assert result["name"] == source.name and result["size"] == size
    assert 0 < result["offset"] < size, "not resumed: %r" % result
    assert result["sent"] == size - result["offset"], result
    if held is not None:
        assert result["offset"] == held, "resumed from %d, but the server said: %s" % (
            result["offset"], line)
    assert_stored(server, source)
    check_server_engine(server)
    check_client_engine(side, server, source, 2)
