"""Type stubs of the ``bigtransfer`` extension module (Rust, built by maturin).

Resumable, CRC-32-verified uploads of very large files over TCP.
"""

import os
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union, final

__version__: str
__all__ = [
    "__version__",
    "send_file",
    "crc32_file",
    "Server",
    "Result",
    "list_remote",
    "get_file",
    "GetResult",
    "send_tree",
    "get_tree",
    "TreeResult",
    "BigTransferError",
    "InvalidInputError",
    "SourceFileError",
    "SourceFileNotFoundError",
    "UnreachableError",
    "ConnectionLostError",
    "ProtocolError",
    "RefusedError",
    "CrcMismatchError",
    "StorageError",
    "CancelledError",
    "TimedOutError",
    "HostKeyError",
]

_Path = Union[str, "os.PathLike[str]"]
_Token = Union[bytes, bytearray, str]

def crc32_file(path: _Path) -> int:
    """Return the CRC-32 of the whole file at ``path``, as ``zlib.crc32``
    computes it. Releases the GIL; Ctrl-C interrupts it. Raises
    ``SourceFileError`` (``SourceFileNotFoundError`` for a missing file)."""
    ...

def send_file(
    host: str,
    port: int,
    path: _Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    limit_rate: Optional[int] = None,
    name: Optional[str] = None,
    progress: Optional[Callable[[int, int], object]] = None,
    token: Optional[_Token] = None,
    legacy: bool = False,
    cache_dir: Optional[_Path] = ...,
    compress: str = "auto",
    fingerprint: Optional[str] = None,
    known_hosts: Optional[_Path] = ...,
    require_tls: bool = False,
    streams: Union[int, str] = "auto",
) -> Result:
    """Upload ``path`` to the server at ``host:port``, resuming and
    retrying, and return once the server confirmed the CRC-32.

    ``progress(done, total)`` is called on this thread at most about 20
    times a second, plus once with ``(total, total)`` at the end; returning
    exactly ``False`` cancels with ``CancelledError``, raising cancels and
    propagates. The GIL is released during the upload; Ctrl-C cancels it.

    ``token`` (bytes, or str sent as UTF-8; at least 16 bytes, else
    ``InvalidInputError``) answers the challenge of a server that requires
    one; the token itself never crosses the wire. A server that requires a
    token refuses an upload without one, or with a wrong one
    ("authentication failed"), with ``RefusedError``.

    ``legacy=True`` speaks protocol 1 only, exactly as the original
    ``client.py`` did (no block-verified resume, no authentication);
    ``Result.protocol`` is then 1.

    ``cache_dir`` is where block checksums of sent files are kept so a
    resumed upload does not read them again. Not given: the engine's default
    (``$BIGTRANSFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/bigtransfer``, else
    ``~/.cache/bigtransfer``); ``None``: no cache at all.

    ``compress`` is ``"auto"`` (zstd only while it pays: the link, not the
    CPU, is the bottleneck and the data shrinks), ``"zstd"`` or
    ``"zstd:LEVEL"`` (1 to 19; every block) or ``"off"``; anything else is
    ``InvalidInputError``. It applies when the server accepts compression
    (protocol 2); CRC-32s are always of the file's bytes.

    The upload goes over TLS 1.3. ``known_hosts`` is the file of pinned
    server keys: not given, the engine's default (``$BIGTRANSFER_KNOWN_HOSTS``,
    else ``$XDG_CONFIG_HOME/bigtransfer/known_hosts``, else
    ``~/.config/bigtransfer/known_hosts``); ``None``: nothing pinned or stored.
    A server seen for the first time is pinned; a pinned server showing
    another key raises ``HostKeyError`` before anything is sent.
    ``fingerprint`` (``"SHA256:..."``, as the server prints it) demands that
    key even on first contact. A server without TLS is reached in plaintext
    only when nothing pins its key and ``require_tls`` is false
    (``Result.encrypted`` says which).
    """
    ...

def list_remote(
    host: str,
    port: int,
    name: Optional[str] = None,
    *,
    token: Optional[_Token] = None,
    timeout: float = 60.0,
    fingerprint: Optional[str] = None,
    known_hosts: Optional[_Path] = ...,
    require_tls: bool = False,
    dirs: bool = False,
) -> List[Dict[str, Any]]:
    """List what the server at ``host:port`` holds, sorted by name: dicts
    ``{"kind": "file", "name", "size", "mtime", "crc32"}`` (``crc32`` None
    when the server has no record of the file) and ``{"kind": "partial",
    "name", "size", "mtime", "held"}``. ``name`` limits it to that name, its
    numbered versions and its partial upload. A name that is not UTF-8 on
    the server comes as bytes. The connection is as for ``send_file``.

    With ``dirs=True`` the server is also asked for its directories,
    ``{"kind": "dir", "name", "size", "mtime", "files"}`` (``size`` and
    ``files`` None when it did not count them; ``mtime`` 0 from an object
    store), and the tree uploads in progress summed up per tree,
    ``{"kind": "tree_parts", "name", "size", "mtime", "files", "held"}``
    (``name`` the tree's root; "" for parts whose tree the server did not
    note, and from an older server one entry for all); a server too old
    to know them sends none.

    Raises ``RefusedError`` (e.g. a token is needed), ``ProtocolError`` (a
    server too old to list), ``UnreachableError``, ``ConnectionLostError``,
    ``HostKeyError``.
    """
    ...

def get_file(
    host: str,
    port: int,
    remote: str,
    dest: _Path,
    *,
    force: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    limit_rate: Optional[int] = None,
    progress: Optional[Callable[[int, int], object]] = None,
    token: Optional[_Token] = None,
    fingerprint: Optional[str] = None,
    known_hosts: Optional[_Path] = ...,
    require_tls: bool = False,
    streams: Union[int, str] = "auto",
    compress: str = "auto",
) -> GetResult:
    """Download the stored file ``remote`` from the server at ``host:port``
    to ``dest``, resuming a partial download of the same version of the
    file, every block verified against the server's CRC-32s; the file
    appears under ``dest`` only when complete. ``dest`` must not exist
    unless ``force``. ``compress`` as for ``send_file``, applied by the
    server to the blocks it sends (``"zstd:LEVEL"`` capped at 9 there; an
    older server sends raw blocks). Raises ``RefusedError`` for a file the
    server does not have, and the other errors as ``send_file``."""
    ...

@final
class GetResult:
    """The result of a successful ``get_file`` (frozen)."""

    @property
    def path(self) -> str: ...
    @property
    def filesize(self) -> int: ...
    @property
    def crc32(self) -> int: ...
    @property
    def resumed_from(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def blocks_repaired(self) -> int: ...
    @property
    def restarted(self) -> bool: ...
    @property
    def attempts(self) -> int: ...
    @property
    def encrypted(self) -> bool: ...
    @property
    def compress_agreed(self) -> bool: ...
    @property
    def compressed_blocks(self) -> int: ...
    @property
    def wire_bytes(self) -> int: ...

_TreeProgress = Callable[[str, int, int, int, int], object]

def send_tree(
    host: str,
    port: int,
    paths: Union[_Path, List[_Path], Tuple[_Path, ...]],
    *,
    retries: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    limit_rate: Optional[int] = None,
    progress: Optional[_TreeProgress] = None,
    token: Optional[_Token] = None,
    fingerprint: Optional[str] = None,
    known_hosts: Optional[_Path] = ...,
    require_tls: bool = False,
) -> TreeResult:
    """Send ``paths`` (files and directories) to the server at
    ``host:port`` in one tree session: a directory is stored under its base
    name with everything in it (empty directories, relative symlinks inside
    it, modes without set-id bits, mtimes, holes). A file the server holds
    already costs nothing; a different one under the same name keeps the
    stored one as ``NAME.~N~`` unless the server runs with ``--overwrite``.
    ``progress(path, files_done, files_total, bytes_done, bytes_total)`` is
    called as files move (the totals grow as the manifest is listed);
    exactly ``False`` cancels (``CancelledError``)."""
    ...

def get_tree(
    host: str,
    port: int,
    remotes: Union[str, List[str], Tuple[str, ...]],
    dest: _Path,
    *,
    force: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
    limit_rate: Optional[int] = None,
    progress: Optional[_TreeProgress] = None,
    token: Optional[_Token] = None,
    fingerprint: Optional[str] = None,
    known_hosts: Optional[_Path] = ...,
    require_tls: bool = False,
) -> TreeResult:
    """Download ``remotes`` (directories or files of the server's storage
    directory) into the local directory ``dest``, each under its base name:
    entries checked as the server checks incoming trees, files verified
    against the server's CRC-32s and visible only when whole, modes and
    mtimes applied. A call after an interrupted one fetches only what is
    missing; a different file here is not replaced unless ``force``.
    Raises ``RefusedError`` for a remote the server does not have or a
    manifest refused (in words)."""
    ...

@final
class TreeResult:
    """The result of a successful ``send_tree`` or ``get_tree`` (frozen)."""

    @property
    def files(self) -> int: ...
    @property
    def dirs(self) -> int: ...
    @property
    def symlinks(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def moved(self) -> int:
        """Files stored (a send) or downloaded (a get) and verified."""
    @property
    def held(self) -> int:
        """Files already there: nothing moved."""
    @property
    def failed(self) -> int: ...
    @property
    def not_stored(self) -> int:
        """Entries not stored / not replaced (a different one holds the name)."""
    @property
    def bytes_moved(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def encrypted(self) -> bool: ...
    @property
    def changed_same_mtime(self) -> int:
        """Of a send: files sent although the server held one of the same
        size and mtime, their content being different (checked by CRC-32);
        0 for a get."""

@final
class Result:
    """The result of a successful ``send_file`` (frozen)."""

    @property
    def filename(self) -> str:
        """Name the file was stored under on the server."""
    @property
    def filesize(self) -> int:
        """File size in bytes."""
    @property
    def crc32(self) -> int:
        """CRC-32 (zlib) of the whole file, confirmed by the server."""
    @property
    def resumed_from(self) -> int:
        """Bytes the server already held when the upload started."""
    @property
    def bytes_sent(self) -> int:
        """File bytes sent over the network, all attempts together."""
    @property
    def bytes_hashed(self) -> int:
        """File bytes read only to compute checksums (not sent)."""
    @property
    def bytes_read(self) -> int:
        """File bytes read in all (for checksums and for sending)."""
    @property
    def blocks_resent(self) -> int:
        """Blocks sent again because the server's copy differed or arrived damaged."""
    @property
    def protocol(self) -> int:
        """The protocol version spoken: 1 (legacy) or 2."""
    @property
    def attempts(self) -> int:
        """Connections made (1 when nothing went wrong)."""
    @property
    def encrypted(self) -> bool:
        """Whether the last connection was TLS (the server's key checked)."""
    @property
    def server_fingerprint(self) -> Optional[str]:
        """The fingerprint of the server's key (``"SHA256:..."``), or None
        in plaintext."""
    @property
    def new_host_key(self) -> Optional[str]:
        """The server's fingerprint when this send met its key for the first
        time and accepted it (trust on first use; now pinned in the
        known-hosts file): show it to the user to compare with what the
        server printed (``bigtransfer fingerprint``). None when the key was
        already pinned, or in plaintext."""
    @property
    def seconds(self) -> float:
        """Wall time of the whole upload in seconds, hashing included."""
    @property
    def stored(self) -> str:
        """What storing did to the name: "new", "unchanged" (the same content
        was there: nothing sent or stored), "kept" (the old file kept as
        ``kept_as``) or "replaced" (a server run with overwrite)."""
    @property
    def kept_as(self) -> Optional[str]:
        """The numbered version (``NAME.~N~``) the server kept the previous
        file as, or None."""

@final
class Server:
    """A bigtransfer server receiving uploads into a storage directory.

    Binds in the constructor; ``serve_forever()`` blocks until ``stop()`` or
    Ctrl-C, ``start()`` serves in the background; as a context manager it
    starts on entry and stops on exit. A stopped server cannot serve again.
    """

    def __new__(
        cls,
        dir: _Path,
        port: int = 8080,
        bind: Optional[str] = None,
        max_connections: int = 64,
        timeout: float = 60.0,
        expire_partial: Optional[float] = 604800.0,
        max_file_size: Optional[int] = None,
        token: Optional[_Token] = None,
        allow_legacy: bool = False,
        min_free: int = 0,
        store: Optional[str] = None,
        s3_endpoint: Optional[str] = None,
        s3_region: Optional[str] = None,
        tls: str = "auto",
        key: Optional[_Path] = None,
        overwrite: bool = False,
    ) -> "Server":
        """Create ``dir`` if missing and bind at once (``port=0`` picks a free
        port, see ``address``).

        ``bind``: the address to listen on (default every interface).
        ``max_connections``: uploads served at once. ``timeout``: seconds a
        connection may stay idle. ``expire_partial``: seconds after which
        untouched partial uploads are deleted (None: never).
        ``max_file_size``: larger uploads are refused (None: no limit).
        ``min_free``: uploads that would leave fewer free bytes on the disk
        are refused (0: no reserve).

        ``token`` (bytes, or str taken as UTF-8; at least 16 bytes, else
        ``InvalidInputError``): only clients proving they know it may upload
        (challenge-response, the token never crosses the wire); the others
        are refused ("authentication failed"). Legacy (protocol 1) clients
        cannot prove it and are refused too unless ``allow_legacy`` is true.

        ``store="s3://BUCKET[/PREFIX]"``: keep uploads in an S3-compatible
        object store instead of ``dir`` (legacy clients too; several
        servers over one bucket resume each other's uploads).
        ``s3_endpoint``/``s3_region`` override the URL's (defaults: AWS S3,
        ``us-east-1``); credentials from ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``. Checked at once:
        a bad URL raises ``InvalidInputError``, refused credentials
        ``RefusedError``.

        ``tls``: ``"auto"`` (TLS 1.3 for new clients, plaintext for legacy
        ones on the same port), ``"required"`` (TLS only; plaintext clients
        refused unless ``allow_legacy``) or ``"off"`` (plaintext only).
        ``key``: the server's Ed25519 key file (made if missing; default
        ``dir/.bigtransfer/key``).

        ``overwrite``: a different file uploaded under a name already
        stored replaces it; by default the stored file is kept as a
        numbered version ``NAME.~N~`` beside the new one. Re-sending the
        same content stores nothing and sends no data either way.
        """
    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` actually listened on."""
    @property
    def fingerprint(self) -> Optional[str]:
        """The TLS key's fingerprint (``"SHA256:..."``) for clients to pin;
        None with ``tls="off"``."""
    @property
    def dir(self) -> _Path:
        """The storage directory, as given to the constructor."""
    @property
    def running(self) -> bool:
        """Whether the server is serving now."""
    @property
    def stats(self) -> Dict[str, int]:
        """Counters: connections, completed, crc_errors, failed, bytes_received."""
    def serve_forever(self) -> None:
        """Serve until ``stop()`` (from another thread) or Ctrl-C."""
    def start(self) -> None:
        """Serve on a background thread (no-op if already serving)."""
    def stop(self) -> None:
        """Stop serving and wait until stopped; idempotent, any thread."""
    def __enter__(self) -> "Server": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class BigTransferError(Exception):
    """Base class of every error the bigtransfer engine raises."""

    kind: Optional[str]
    """The engine's short error name (e.g. ``"unreachable"``), or None."""

class InvalidInputError(BigTransferError, ValueError):
    """An argument is invalid: a bad option value, port or address."""

class SourceFileError(BigTransferError, OSError):
    """The local file to send (or hash) cannot be opened or read."""

class SourceFileNotFoundError(SourceFileError, FileNotFoundError):
    """The local file to send (or hash) does not exist."""

class UnreachableError(BigTransferError, ConnectionError):
    """No connection to the server could be made (after all retries)."""

class ConnectionLostError(BigTransferError, ConnectionError):
    """A connection broke before the transfer finished (after all retries)."""

class ProtocolError(BigTransferError):
    """The peer broke the wire protocol."""

class RefusedError(BigTransferError):
    """The server refused the upload (bad name, too large, no space, a missing
    or wrong token, ...)."""

class CrcMismatchError(BigTransferError):
    """The server kept answering CRC32_ERROR (after all retries)."""

class StorageError(BigTransferError, OSError):
    """The server's storage directory, or a file in it, cannot be used."""

class CancelledError(BigTransferError):
    """The transfer was cancelled; what the server received stays resumable."""

class TimedOutError(BigTransferError, TimeoutError):
    """The peer sent nothing within the idle timeout."""

class HostKeyError(BigTransferError, ConnectionError):
    """The server's TLS key is not the pinned one (or not ``fingerprint``),
    or a pinned server (or with ``require_tls``) offered no TLS; nothing was
    sent."""
