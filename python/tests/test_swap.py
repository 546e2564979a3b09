"""Swapping servers on one storage directory keeps the progress.

python/server.py and ``bigtransfer server`` share one on-disk layout
(``.bigtransfer/lock``, ``KEY.part``, ``KEY.meta``): an upload interrupted
while one server held it is resumed by the other, in both directions, from
the held offset, and ends with the exact bytes. Both servers also write the
same log line shape (``[RFC 3339 time] message``).

Needs the ``bigtransfer`` binary (target/{release,debug} or $BIGTRANSFER_BIN);
skipped without it. Loopback only, every wait bounded, processes stopped by PID.
"""

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import zlib

import pytest

from test_scripts import (HOST, MiB, PYTHON, CLIENT, held_offset, kill_midway, make_file,
                          ok_result, read_line, running_server, upload, wait_for)
REPO = CLIENT.parent.parent


def find_binary():
    env = os.environ.get("BIGTRANSFER_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = [REPO / "target" / p / "bigtransfer" for p in ("release", "debug")]
    found = [p for p in found if p.is_file() and os.access(p, os.X_OK)]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] \S")


@pytest.fixture
def rust_bin():
    path = find_binary()
    if path is None:
        pytest.skip("the bigtransfer binary is not built (cargo build --release -p bigtransfer-cli)")
    return path


class RustServer:
    def __init__(self, proc, port, directory):
        self.proc, self.port, self.dir = proc, port, directory

    def held_paths(self, name):
        key = hashlib.sha256(name.encode("utf-8")).hexdigest()
        state = self.dir / ".bigtransfer"
        return state / (key + ".part"), state / (key + ".meta")


@contextlib.contextmanager
def rust_server(binary, directory, log_path):
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary, "server", "--port", "0", "--bind", HOST, "--dir", str(directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        # The first line; the reachable-at lines may come in the same read.
        line = read_line(proc.stdout, 30).splitlines()[0]
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, "unexpected first line %r" % line
        yield RustServer(proc, int(match.group(1)), directory)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()


def rust_client(binary, port, path, cache, *extra):
    env = dict(os.environ, BIGTRANSFER_CACHE_DIR=str(cache))
    return subprocess.run(
        [binary, "client", "--host", HOST, "--port", str(port), "--json", "--quiet",
         "--retries", "0"] + list(extra) + [str(path)],
        capture_output=True, text=True, env=env, timeout=120)


def assert_same(stored, source):
    assert stored.read_bytes() == source.read_bytes()
    assert zlib.crc32(stored.read_bytes()) == zlib.crc32(source.read_bytes())


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-client", "protocol-2-client"])
def test_python_server_part_is_resumed_by_the_rust_server(tmp_path, rust_bin, legacy):
    directory, log = tmp_path / "received", tmp_path / "server.log"
    source = make_file(tmp_path, "swap.bin", 8 * MiB)
    with running_server(directory, log) as py:
        held = kill_midway(py, source)
    with rust_server(rust_bin, directory, tmp_path / "rust.log") as rs:
        proc = rust_client(rust_bin, rs.port, source, tmp_path / "cache",
                           *(["--legacy"] if legacy else []))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        if legacy:
            assert result["resumed_from"] == held
        else:
            # Protocol 2 resumes whole verified blocks of what was held.
            assert 0 < result["resumed_from"] <= held, (result, held)
        assert result["bytes_sent"] == source.stat().st_size - result["resumed_from"]
    assert_same(directory / source.name, source)
    for path in (log, tmp_path / "rust.log"):
        lines = path.read_text().splitlines()
        assert lines and all(LOG_LINE.match(l) for l in lines), lines


def test_rust_server_part_is_resumed_by_the_python_server(tmp_path, rust_bin):
    directory = tmp_path / "received"
    source = make_file(tmp_path, "back.bin", 8 * MiB)
    with rust_server(rust_bin, directory, tmp_path / "rust.log") as rs:
        part, meta = rs.held_paths(source.name)
        env = dict(os.environ, BIGTRANSFER_CACHE_DIR=str(tmp_path / "cache"))
        client = subprocess.Popen(
            [rust_bin, "client", "--host", HOST, "--port", str(rs.port), "--quiet",
             "--retries", "0", "--limit-rate", "1M", str(source)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env)
        try:
            # Two blocks written: the first block's checksum trailer has
            # surely arrived (it comes before the second block's bytes), so
            # the checkpoint taken at the disconnect holds at least it.
            # (Waiting for one block raced the trailer under load.)
            wait_for(lambda: part.exists() and part.stat().st_size >= 2 * MiB, 30, "the part")
        finally:
            client.kill()
            client.wait(timeout=20)
        held = wait_for(lambda: held_offset(meta) >= MiB and held_offset(meta), 30,
                        "the Rust server's checkpoint")
    assert held < source.stat().st_size
    with running_server(directory, tmp_path / "py.log") as py:
        result = ok_result(upload(py, source))
        assert result["offset"] == held
        assert result["sent"] == source.stat().st_size - held
    assert_same(directory / source.name, source)
    assert not part.exists() and not meta.exists()
    assert not (directory / ".bigtransfer-py").exists()


def test_the_two_servers_lock_each_other_out(tmp_path, rust_bin):
    directory = tmp_path / "received"
    with rust_server(rust_bin, directory, tmp_path / "rust.log"):
        proc = subprocess.run(
            [PYTHON, str(CLIENT.parent / "server.py"), "--port", "0", "--bind", HOST,
             "--dir", str(directory), "--pure"],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "is in use by another server" in proc.stderr, proc.stderr


def test_python_server_json_log_lines(tmp_path):
    """server.py --log-format json: one object per line, as the Rust server's."""
    directory = tmp_path / "received"
    log_path = tmp_path / "py.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [PYTHON, str(CLIENT.parent / "server.py"), "--port", "0", "--bind", HOST,
             "--dir", str(directory), "--pure", "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        assert read_line(proc.stdout, 30).startswith("listening on 127.0.0.1:")
        wait_for(lambda: log_path.read_text(), 30, "a log line")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
    lines = log_path.read_text().splitlines()
    assert len(lines) >= 2, lines
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["time", "msg"], line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"]), line
    assert any(json.loads(l)["msg"].startswith("serving ") for l in lines), lines


def test_parts_of_the_old_python_layout_are_kept(tmp_path):
    """A part held in .bigtransfer-py/ (JSON sidecar) by an older server.py is
    moved into the shared layout at start and resumed from its offset."""
    directory = tmp_path / "received"
    source = make_file(tmp_path, "old.bin", 3 * MiB)
    data = source.read_bytes()
    held = MiB + 123
    old = directory / ".bigtransfer-py"
    old.mkdir(parents=True)
    key = hashlib.sha256(source.name.encode("utf-8")).hexdigest()
    (old / (key + ".part")).write_bytes(data[:held] + b"unrecorded tail")
    (old / (key + ".json")).write_text(json.dumps({
        "version": 1, "filename": source.name, "filesize": len(data),
        "crc32": zlib.crc32(data), "offset": held, "offset_crc32": zlib.crc32(data[:held])}))
    (old / "junk.json.tmp").write_text("x")
    log_path = tmp_path / "py.log"
    with running_server(directory, log_path) as py:
        assert not old.exists()
        part, meta = py.held_paths(source.name)
        assert part.stat().st_size == held and held_offset(meta) == held
        result = ok_result(upload(py, source))
        assert result["offset"] == held
        assert result["sent"] == len(data) - held
    assert (directory / source.name).read_bytes() == data
    assert "kept 1 held part(s) from .bigtransfer-py/" in log_path.read_text()
