#!/usr/bin/env python3
"""Receive files over TCP with the bigtransfer legacy protocol (version 1).

    python3 server.py [--port P] [--bind ADDR] [--dir DIR] [--timeout SECONDS]
                      [--max-connections N] [--pure]

One upload is one TCP connection (see LEGACY-PROTOCOL.md):

    client -> u32 header length ("!I"), then that many bytes of UTF-8 JSON
              {"filename": str, "filesize": int, "crc32": int}
    server -> u64 offset ("!Q"): how many bytes of this file it already holds
    client -> the file's bytes [offset, filesize)
    server -> b"CRC32_OK" or b"CRC32_ERROR", then closes

Before accepting, the server prints exactly one line ``listening on HOST:PORT``
to stdout (IPv6 as ``[HOST]:PORT``); everything else (one line per event, with
the peer's address) goes to stderr. It serves connections concurrently, one
thread each, at most --max-connections at a time (more are closed at once and
logged), and runs until SIGINT or SIGTERM, then exits 0.

On-disk layout, under --dir (default ./received): exactly the Rust server's
(core/src/store.rs, docs/PROTOCOL.md), so either server resumes what the
other holds:

    NAME                       a completed upload, renamed into place only
                               after its CRC-32 matched
    .bigtransfer/lock          flock()ed by the one server using the directory
    .bigtransfer/KEY.part      the bytes held of an unfinished upload
    .bigtransfer/KEY.meta      its checkpoint record ("BTHELD01"): a head
                               naming the upload (size, CRC-32, name) and two
                               slots (sequence, offset, CRC-32 of the bytes up
                               to it, the part's inode and ctime), each with
                               its own CRC-32, written alternately

KEY is the SHA-256 of the UTF-8 name in hex, so that any allowed name fits.
Parts an older server.py held in .bigtransfer-py/ (JSON sidecars) are moved
into this layout at start. A checkpoint is taken every 32 MiB and whenever a connection ends early: the
part is fsynced, then the next slot is written and fsynced. A new upload of
the same name resumes from the newest valid slot only when the head's size
and CRC-32 equal its header's (the same source file); otherwise the held
part is discarded. On resume the held bytes are read back to seed the
CRC-32, so a part changed on disk since its checkpoint yields CRC32_ERROR,
never a bad file. Log lines are ``[RFC 3339 UTC time] message`` (or JSON
with --log-format json), as the Rust server writes them.

When the Rust extension module ``bigtransfer`` is importable, the "serve"
piece runs ``bigtransfer.Server`` instead and the "crc" piece uses
``bigtransfer.crc32_file``. ``--pure`` or ``BIGTRANSFER_PURE=1`` forces pure
Python everywhere; ``BIGTRANSFER_ENGINE=crc,serve`` lists the pieces that may
use the module (default: all that it provides).
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import unicodedata
import zlib
from typing import Dict, List, Optional, Tuple

try:
    import bigtransfer
except ImportError:
    bigtransfer = None

MAX_HEADER_LEN = 64 * 1024
MAX_NAME_BYTES = 255
MAX_FILESIZE = 2 ** 63 - 1  # what a file offset can address
MAX_CRC32 = 0xFFFFFFFF
CHECKPOINT_BYTES = 32 * 1024 * 1024
IO_BLOCK = 1024 * 1024
STATE_DIR_NAME = ".bigtransfer"
# Names that would collide with the state directory (and the one used
# before the two servers shared a layout).
OLD_STATE_DIR_NAME = ".bigtransfer-py"
RESERVED_NAMES = (STATE_DIR_NAME, OLD_STATE_DIR_NAME)
META_MAGIC = b"BTHELD01"
# The Rust server's record of a block-verified (protocol 2) upload: same
# layout, but its crc32 field holds the block size's log2.
META_MAGIC_V2 = b"BTHELD02"
META_HEAD = struct.Struct(">8sQIH255s")   # magic, filesize, crc32, name length, name
META_HEAD_LEN = META_HEAD.size + 4        # + CRC-32 of the above
SLOT = struct.Struct(">QQIQqI")           # seq, offset, crc32, inode, ctime s, ctime ns
SLOT_LEN = SLOT.size + 4                  # + CRC-32 of the above
META_LEN = META_HEAD_LEN + 2 * SLOT_LEN
RESULT_OK = b"CRC32_OK"
RESULT_ERROR = b"CRC32_ERROR"
STOP_GRACE_SECONDS = 5.0

ENGINE_PIECES = {"crc": "crc32_file", "serve": "Server"}

log = logging.getLogger("bigtransfer.server")


# --------------------------------------------------------------------------
# Engine selection: the Rust module, piece by piece, when present and allowed


def engine(piece, pure=False):
    """Return the ``bigtransfer`` module if ``piece`` should use it, else None."""
    if bigtransfer is None or pure:
        return None
    if os.environ.get("BIGTRANSFER_PURE", "").strip() not in ("", "0"):
        return None
    selection = os.environ.get("BIGTRANSFER_ENGINE")
    if selection is not None:
        pieces = {p.strip().lower() for p in selection.split(",")}
        if piece not in pieces and "all" not in pieces:
            return None
    if not hasattr(bigtransfer, ENGINE_PIECES[piece]):
        return None
    return bigtransfer


def file_crc32(path, pure=False):
    """CRC-32 (zlib) of a whole file."""
    mod = engine("crc", pure)
    if mod is not None:
        return mod.crc32_file(path) & MAX_CRC32
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(IO_BLOCK), b""):
            crc = zlib.crc32(block, crc)
    return crc & MAX_CRC32


# --------------------------------------------------------------------------
# Header validation


class Refused(Exception):
    """A request the server will not serve; the message says why."""


def sanitize_name(filename):
    """Return the storable base name of ``filename`` or raise Refused."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise Refused("empty file name")
    if set(name) == {"."}:
        raise Refused("file name %r is only dots" % name)
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise Refused("file name %r contains a control character" % name)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("file name %r is not valid Unicode" % name) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise Refused("file name is %d bytes long (at most %d)" % (len(encoded), MAX_NAME_BYTES))
    if name.lower() in RESERVED_NAMES:
        raise Refused("file name %r is reserved" % name)
    return name


def parse_header(raw):
    """Parse the JSON header; return (filename, filesize, crc32) or raise Refused."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused("header is not UTF-8") from None
    except (ValueError, RecursionError):
        raise Refused("header is not valid JSON") from None
    if not isinstance(meta, dict):
        raise Refused("header is not a JSON object")
    filename = meta.get("filename")
    filesize = meta.get("filesize")
    crc = meta.get("crc32")
    if not isinstance(filename, str):
        raise Refused("header: 'filename' missing or not a string")
    if not isinstance(filesize, int) or isinstance(filesize, bool) or filesize < 0:
        raise Refused("header: 'filesize' missing or not an integer >= 0")
    if filesize > MAX_FILESIZE:
        raise Refused("header: 'filesize' %d is too large" % filesize)
    if not isinstance(crc, int) or isinstance(crc, bool) or not 0 <= crc <= MAX_CRC32:
        raise Refused("header: 'crc32' missing or not an integer in 0..4294967295")
    return filename, filesize, crc


# --------------------------------------------------------------------------
# Storage


def fsync_dir(path):
    """Make a rename or unlink inside ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_if_present(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def encode_meta_head(name, filesize, crc32):
    """The head of a checkpoint record (core/src/store.rs: encode_meta_head)."""
    raw = name.encode("utf-8")
    head = META_HEAD.pack(META_MAGIC, filesize, crc32, len(raw), raw)
    return head + struct.pack(">I", zlib.crc32(head))


def encode_slot(seq, offset, crc32, stamp):
    """One checkpoint slot (core/src/store.rs: encode_slot)."""
    ino, ctime, ctime_nsec = stamp
    body = SLOT.pack(seq, offset, crc32, ino, ctime, ctime_nsec)
    return body + struct.pack(">I", zlib.crc32(body))


def part_stamp(fd):
    """(inode, ctime seconds, ctime nanoseconds) of an open part file."""
    st = os.fstat(fd)
    return st.st_ino, st.st_ctime_ns // 10 ** 9, st.st_ctime_ns % 10 ** 9


def decode_meta(data):
    """(name, filesize, crc32, seq, offset, offset_crc32, version) of a
    checkpoint record, or None if it is damaged. Version 2 is the Rust
    server's block-verified upload, whose crc32 is no file CRC-32."""
    if len(data) < META_LEN:
        return None
    head = data[:META_HEAD_LEN]
    if struct.unpack(">I", head[-4:])[0] != zlib.crc32(head[:-4]):
        return None
    magic, filesize, crc32, name_len, raw = META_HEAD.unpack(head[:-4])
    if magic not in (META_MAGIC, META_MAGIC_V2) or not 0 < name_len <= MAX_NAME_BYTES:
        return None
    try:
        name = raw[:name_len].decode("utf-8")
    except UnicodeDecodeError:
        return None
    best = None
    for i in range(2):
        slot = data[META_HEAD_LEN + i * SLOT_LEN:META_HEAD_LEN + (i + 1) * SLOT_LEN]
        if struct.unpack(">I", slot[-4:])[0] != zlib.crc32(slot[:-4]):
            continue
        seq, offset, offset_crc, _, _, _ = SLOT.unpack(slot[:-4])
        if offset <= filesize and (best is None or seq > best[0]):
            best = (seq, offset, offset_crc)
    if best is None:
        return None
    return (name, filesize, crc32) + best + (1 if magic == META_MAGIC else 2,)


class PartStore:
    """The storage directory: final files plus held parts under .bigtransfer/."""

    def __init__(self, root, pure=False, overwrite=False):
        self.root = os.path.abspath(root)
        self.overwrite = overwrite
        self.state_dir = os.path.join(self.root, STATE_DIR_NAME)
        self.pure = pure
        os.makedirs(self.state_dir, exist_ok=True)
        self._lock_file = lock_state_dir(self.state_dir, self.root)
        moved = migrate_old_parts(self)
        if moved:
            log.info("kept %d held part(s) from %s/ (now in %s/)",
                     moved, OLD_STATE_DIR_NAME, STATE_DIR_NAME)
        self._guard = threading.Lock()
        self._claims: Dict[str, List] = {}  # name -> [lock, number of users]

    def final_path(self, name):
        return os.path.join(self.root, name)

    def keep_version(self, name):
        """Before a new file is renamed over ``name``: keep the one there as
        ``NAME.~N~`` (a hard link, never over an existing version; N one more
        than the highest present), as the Rust server does. Returns the
        version's name, or None when nothing was there or with overwrite."""
        final = self.final_path(name)
        if self.overwrite or not os.path.lexists(final):
            return None
        prefix = name + ".~"
        highest = 0
        for entry in os.listdir(self.root):
            tail = entry[len(prefix):-1] if entry.startswith(prefix) and entry.endswith("~") else ""
            if tail.isdigit():
                highest = max(highest, int(tail))
        n = highest + 1
        while True:
            version = "%s.~%d~" % (name, n)
            try:
                os.link(final, self.final_path(version))
                return version
            except FileExistsError:
                n += 1

    def held_paths(self, name):
        """(part, checkpoint record) paths for ``name``."""
        key = hashlib.sha256(name.encode("utf-8")).hexdigest()
        base = os.path.join(self.state_dir, key)
        return base + ".part", base + ".meta"

    @contextlib.contextmanager
    def claim(self, name, timeout):
        """Hold ``name`` exclusively; yields False if it stayed busy for ``timeout``."""
        with self._guard:
            entry = self._claims.setdefault(name, [threading.Lock(), 0])
            entry[1] += 1
        acquired = entry[0].acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._claims[name]


def migrate_old_parts(store):
    """Move the parts an older server.py held in .bigtransfer-py/ (with JSON
    sidecars) into the shared layout, so that their progress is kept by
    either server. Returns how many were moved."""
    old = os.path.join(store.root, OLD_STATE_DIR_NAME)
    if not os.path.isdir(old):
        return 0
    moved = 0
    for entry in sorted(os.listdir(old)):
        if entry.endswith(".json") and migrate_one(store, old, entry[:-len(".json")]):
            moved += 1
    for leftover in os.listdir(old):  # stray temp files, parts without a sidecar
        remove_if_present(os.path.join(old, leftover))
    with contextlib.suppress(OSError):
        os.rmdir(old)
    fsync_dir(store.root)
    return moved


def migrate_one(store, old, key):
    """Move one old held part (KEY.part + KEY.json) if its sidecar is sound."""
    sidecar, part = os.path.join(old, key + ".json"), os.path.join(old, key + ".part")
    try:
        with open(sidecar, encoding="utf-8") as f:
            side = json.load(f)
        size = os.path.getsize(part)
    except (OSError, ValueError):
        return False
    ints = [side.get(k) for k in ("filesize", "crc32", "offset", "offset_crc32")] \
        if isinstance(side, dict) else [None]
    name = side.get("filename") if isinstance(side, dict) else None
    if (not isinstance(name, str) or not all(isinstance(v, int) for v in ints)
            or hashlib.sha256(name.encode("utf-8")).hexdigest() != key
            or not 0 <= ints[2] <= min(ints[0], size)):
        return False
    new_part, new_meta = store.held_paths(name)
    if os.path.exists(new_meta):
        return False  # the shared layout holds this name already: newer
    filesize, crc32, offset, offset_crc = ints
    os.replace(part, new_part)
    with open(new_part, "r+b", buffering=0) as f:
        f.truncate(offset)
        os.fsync(f.fileno())
        slot = encode_slot(1, offset, offset_crc, part_stamp(f.fileno()))
    with open(new_meta, "wb") as f:
        f.write(encode_meta_head(name, filesize, crc32) + slot + bytes(SLOT_LEN))
        f.flush()
        os.fsync(f.fileno())
    remove_if_present(sidecar)
    fsync_dir(store.state_dir)
    return True


def lock_state_dir(state_dir, root):
    """flock ``state_dir``/lock as the Rust server does: one server per directory."""
    f = open(os.path.join(state_dir, "lock"), "a+b")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise OSError("storage directory %s is in use by another server" % root) from None
    return f


class Upload:
    """One upload into a held part: resume point, incremental CRC-32, checkpoints."""

    def __init__(self, store, name, filesize, crc32):
        self.store = store
        self.name = name
        self.filesize = filesize
        self.expected_crc = crc32
        self.part_path, self.meta_path = store.held_paths(name)
        self.file = None
        self.size = 0      # bytes in the part now
        self.crc = 0       # CRC-32 of those bytes
        self.kept_as: Optional[str] = None  # the version the old file was kept as
        self.seq = 0       # sequence number of the newest slot written
        self.durable: Optional[Tuple[int, int]] = None  # (size, crc) recorded

    def open(self):
        """Open the part, resuming a matching held one; return the offset to announce."""
        held = self._matching_record()
        if held is None:
            self._discard()
            self.file = open(self.part_path, "w+b", buffering=0)
            self._write_record(0, 0, 0, fresh=True)
            return 0
        self.seq, offset, recorded_crc, version = held
        self.file = open(self.part_path, "r+b", buffering=0)
        self.file.truncate(offset)  # drop bytes written after the last checkpoint
        self.crc = file_crc32(self.part_path, self.store.pure)
        self.size = offset
        self.durable = (offset, recorded_crc)
        if version == 2:
            # Held by the Rust server for a protocol-2 upload: record it as
            # the legacy upload it now is (its block list no longer applies).
            remove_if_present(self.part_path[:-len(".part")] + ".blk")
            self.seq += 1
            self._write_record(self.seq, offset, self.crc, fresh=True)
        if self.crc != recorded_crc:
            log.warning("held part of %r changed on disk since its checkpoint "
                        "(CRC-32 %08x, recorded %08x); this upload will fail its check",
                        self.name, self.crc, recorded_crc)
        self.file.seek(offset)
        return offset

    def _matching_record(self):
        """(seq, offset, crc) of a held part of the same source file, or None."""
        try:
            with open(self.meta_path, "rb") as f:
                rec = decode_meta(f.read(META_LEN))
            part_size = os.path.getsize(self.part_path)
        except OSError:
            return None
        if rec is None:
            return None
        name, filesize, crc32, seq, offset, offset_crc, version = rec
        # A protocol-2 record names no file CRC-32: the same name and size
        # are taken as the same file, and the final CRC-32 check catches a
        # different one (the bytes are then discarded and sent again).
        same_crc = version == 2 or crc32 == self.expected_crc
        if name != self.name or filesize != self.filesize or not same_crc or offset > part_size:
            return None
        return seq, offset, offset_crc, version

    def _discard(self):
        remove_if_present(self.meta_path)  # first: a part without a record is never resumed
        remove_if_present(self.part_path)

    def _write_record(self, seq, offset, crc, fresh=False):
        """Write checkpoint ``seq`` into its slot (a whole new record if ``fresh``)."""
        slot = encode_slot(seq, offset, crc, part_stamp(self.file.fileno()))
        fd = os.open(self.meta_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fresh:
                os.ftruncate(fd, 0)
                head = encode_meta_head(self.name, self.filesize, self.expected_crc)
                os.pwrite(fd, head + slot + bytes(SLOT_LEN), 0)
            else:
                os.pwrite(fd, slot, META_HEAD_LEN + (seq % 2) * SLOT_LEN)
            os.fsync(fd)
        finally:
            os.close(fd)
        if fresh:
            fsync_dir(self.store.state_dir)

    def write(self, data):
        """Append ``data`` (a memoryview) to the part; checkpoint every 32 MiB."""
        view = data
        while view:
            written = self.file.write(view)
            view = view[written:]
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        durable_size = self.durable[0] if self.durable else 0
        if self.size - durable_size >= CHECKPOINT_BYTES:
            self.checkpoint()

    def checkpoint(self):
        """Make the bytes held so far durable, then record them in the next slot."""
        os.fsync(self.file.fileno())
        self.seq += 1
        self._write_record(self.seq, self.size, self.crc)
        self.durable = (self.size, self.crc)

    def suspend(self):
        """The connection ended early: keep what we hold, resumable."""
        try:
            if self.durable != (self.size, self.crc):
                self.checkpoint()
        finally:
            self.file.close()

    def finish(self):
        """All bytes are in: store the file if its CRC-32 matches. Returns the match."""
        matched = self.size == self.filesize and self.crc == self.expected_crc
        if not matched:
            self.file.close()
            self._discard()
            return False
        os.fsync(self.file.fileno())
        self.file.close()
        self.kept_as = self.store.keep_version(self.name)
        os.replace(self.part_path, self.store.final_path(self.name))
        fsync_dir(self.store.root)
        remove_if_present(self.meta_path)
        return True


# --------------------------------------------------------------------------
# Connections


class ConnectionLost(Exception):
    """The peer went away or stayed idle for too long."""


def recv_into(conn, view):
    """recv_into that turns EOF, timeouts and socket errors into ConnectionLost."""
    try:
        n = conn.recv_into(view)
    except socket.timeout:
        raise ConnectionLost("idle timeout") from None
    except OSError as exc:
        raise ConnectionLost(str(exc)) from None
    if n == 0:
        raise ConnectionLost("closed by peer")
    return n


def recv_exact(conn, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        got += recv_into(conn, view[got:])
    return bytes(buf)


def format_address(host, port):
    """``host:port``, IPv6 in brackets; IPv4-mapped IPv6 shown as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


class Server:
    """The pure-Python server: an accept loop and a thread per connection."""

    def __init__(self, directory, port=8080, bind=None, max_connections=64,
                 timeout=60.0, pure=False, overwrite=False):
        self.store = PartStore(directory, pure, overwrite)
        self.timeout = timeout
        self.max_connections = max_connections
        self.listener = make_listener(bind, port, backlog=max(128, max_connections))
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active: Dict[threading.Thread, socket.socket] = {}
        self._active_lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()

    @property
    def address(self):
        host, port = self.listener.getsockname()[:2]
        return host, port

    def stop(self):
        """Ask serve_forever to return. Safe to call from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve_forever(self):
        self.listener.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self.listener and not self._stopping:
                        self._accept()
        self.listener.close()
        self._finish_connections()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self):
        try:
            conn, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # e.g. EMFILE: log and keep serving
            log.error("accept failed: %s", exc)
            return
        peer = format_address(addr[0], addr[1])
        if not self._slots.acquire(blocking=False):
            log.warning("%s: refused: already %d connections", peer, self.max_connections)
            conn.close()
            return
        thread = threading.Thread(target=self._run_connection, args=(conn, peer),
                                  name="conn " + peer, daemon=True)
        with self._active_lock:
            self._active[thread] = conn
        thread.start()

    def _run_connection(self, conn, peer):
        try:
            with conn:
                self.handle(conn, peer)
        except Exception:  # one connection must never stop the server
            log.exception("%s: unexpected error", peer)
        finally:
            with self._active_lock:
                self._active.pop(threading.current_thread(), None)
            self._slots.release()

    def _finish_connections(self):
        """Stop reading from every connection (their parts are checkpointed), then wait a bit."""
        with self._active_lock:
            active = dict(self._active)
        for conn in active.values():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = [t.name for t in active if t.is_alive()]
        if still:
            log.warning("leaving %d connection(s) behind: %s", len(still), ", ".join(still))

    def handle(self, conn, peer):
        """Serve one upload on ``conn``."""
        conn.settimeout(self.timeout)
        log.info("%s: connected", peer)
        try:
            (length,) = struct.unpack("!I", recv_exact(conn, 4))
            if length == 0 or length > MAX_HEADER_LEN:
                raise Refused("header length %d not in 1..%d" % (length, MAX_HEADER_LEN))
            filename, filesize, crc = parse_header(recv_exact(conn, length))
            name = sanitize_name(filename)
            if os.path.isdir(self.store.final_path(name)):
                raise Refused("%r is a directory on the server" % name)
        except Refused as exc:
            log.warning("%s: refused: %s", peer, exc)
            return
        except ConnectionLost as exc:
            log.info("%s: no header: %s", peer, exc)
            return

        with self.store.claim(name, self.timeout) as claimed:
            if not claimed:
                log.warning("%s: refused: another upload of %r is still running", peer, name)
                return
            self._receive(conn, peer, Upload(self.store, name, filesize, crc))

    def _receive(self, conn, peer, upload):
        offset = upload.open()
        name, filesize = upload.name, upload.filesize
        log.info("%s: %r: %d bytes, crc32 %08x, resuming at %d",
                 peer, name, filesize, upload.expected_crc, offset)
        buf = bytearray(min(IO_BLOCK, max(1, filesize - offset)))
        view = memoryview(buf)
        try:
            try:
                conn.sendall(struct.pack("!Q", offset))
            except OSError as exc:
                raise ConnectionLost(str(exc)) from None
            while upload.size < filesize:
                n = recv_into(conn, view[:min(len(buf), filesize - upload.size)])
                upload.write(view[:n])
        except ConnectionLost as exc:
            reason = "server stopping" if self._stopping else str(exc)
            upload.suspend()
            log.warning("%s: %r interrupted at %d of %d bytes (%s); part kept",
                        peer, name, upload.size, filesize, reason)
            return
        except BaseException:
            upload.suspend()
            raise

        matched = upload.finish()
        result = RESULT_OK if matched else RESULT_ERROR
        if matched:
            log.info("%s: %r stored, %d bytes, received %d",
                     peer, name, filesize, filesize - offset)
            if upload.kept_as:
                log.info("%s: %r: a different file was stored under this name; kept it as %s",
                         peer, name, upload.kept_as)
        else:
            log.warning("%s: %r CRC-32 mismatch (got %08x, expected %08x); discarded",
                        peer, name, upload.crc, upload.expected_crc)
        try:
            conn.sendall(result)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.warning("%s: could not send %s: %s", peer, result.decode(), exc)


def make_listener(bind, port, backlog=128):
    """A listening TCP socket; ``bind`` None means all interfaces (dual-stack if possible)."""
    if bind is None or bind in ("", "::"):
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(("::", port), family=socket.AF_INET6,
                                            dualstack_ipv6=True, backlog=backlog)
            except OSError:
                if bind == "::":
                    raise
        if bind == "::":
            return socket.create_server(("::", port), family=socket.AF_INET6, backlog=backlog)
        return socket.create_server(("0.0.0.0", port), backlog=backlog)
    host = bind[1:-1] if bind.startswith("[") and bind.endswith("]") else bind
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return socket.create_server(sockaddr, family=family, backlog=backlog)


def default_bind():
    return "::" if socket.has_dualstack_ipv6() else "0.0.0.0"


# --------------------------------------------------------------------------
# Command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Receive files uploaded with client.py (bigtransfer legacy protocol).")
    parser.add_argument("--port", type=int, default=8080,
                        help="TCP port to listen on, 0 for any free port (default 8080)")
    parser.add_argument("--bind", default=None, metavar="ADDR",
                        help="address to listen on (default: all interfaces, "
                             "IPv4 and IPv6 when the system allows)")
    parser.add_argument("--dir", default="received",
                        help="where received files go (default ./received, created if missing)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="idle timeout per connection (default 60)")
    parser.add_argument("--max-connections", type=int, default=64, metavar="N",
                        help="connections served at once (default 64)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as '[RFC 3339 time] message' (default) or one "
                             "JSON object per line, as the Rust server writes them")
    parser.add_argument("--pure", action="store_true",
                        help="use pure Python even when the bigtransfer module is available")
    parser.add_argument("--overwrite", action="store_true",
                        help="a different file sent under a stored name replaces it "
                             "(default: the stored one is kept as NAME.~N~)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    if args.max_connections < 1:
        parser.error("--max-connections must be >= 1")
    return args


def rfc3339(created):
    """``2026-11-30T06:56:32.581Z``: the Rust server's timestamp (UTC, ms)."""
    millis = int(round(created * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        ".%03dZ" % (millis % 1000))


class LogFormatter(logging.Formatter):
    """The Rust server's two line shapes: ``[TIME] message`` or
    ``{"time": "TIME", "msg": "message"}``."""

    def __init__(self, kind="text"):
        super().__init__()
        self.kind = kind

    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += ": " + " ".join(self.formatException(record.exc_info).split())
        ts = rfc3339(record.created)
        if self.kind == "json":
            return '{"time": "%s", "msg": %s}' % (ts, json.dumps(msg, ensure_ascii=False))
        return "[%s] %s" % (ts, msg)


def announce(host, port):
    print("listening on " + format_address(host, port), flush=True)


def install_stop_handlers(stop):
    def handler(signum, frame):
        stop()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class StopSignal:
    """SIGINT/SIGTERM turned into something to block on (signal-handler safe)."""

    def __init__(self):
        self._wake_r, self._wake_w = socket.socketpair()
        install_stop_handlers(self.set)

    def set(self):
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def wait(self):
        self._wake_r.recv(1)
        self._wake_r.close()
        self._wake_w.close()


def serve_with_module(mod, args):
    """The "serve" piece from the Rust module; returns when a signal asks to stop."""
    stop = StopSignal()
    bind = args.bind if args.bind is not None else default_bind()
    with mod.Server(args.dir, port=args.port, bind=bind,
                    max_connections=args.max_connections, timeout=args.timeout,
                    overwrite=args.overwrite) as srv:
        host, port = srv.address
        announce(host, port)
        log.info("serving %s with the bigtransfer module", os.path.abspath(args.dir))
        srv.start()
        stop.wait()
        log.info("stopping")
        srv.stop()


def main(argv=None):
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(args.log_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        os.makedirs(args.dir, exist_ok=True)
        mod = engine("serve", args.pure)
        if mod is not None:
            try:
                serve_with_module(mod, args)
            except getattr(mod, "BigTransferError", OSError) as exc:
                print("server: %s" % exc, file=sys.stderr)
                return 1
            return 0
        server = Server(args.dir, port=args.port, bind=args.bind,
                        max_connections=args.max_connections, timeout=args.timeout,
                        pure=args.pure, overwrite=args.overwrite)
    except OSError as exc:
        print("server: %s" % exc, file=sys.stderr)
        return 1
    install_stop_handlers(server.stop)
    host, port = server.address
    announce(host, port)
    log.info("serving %s", server.store.root)
    server.serve_forever()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
