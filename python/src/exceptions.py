# The exception classes of the `bigtransfer` module. Executed once, when the
# extension module is imported, in a namespace whose __name__ is
# "bigtransfer" (see errors.rs). Not a module of its own: it is not shipped.


class BigTransferError(Exception):
    """Base class of every error the bigtransfer engine raises.

    ``str(e)`` is the engine's message, written for the person who has to act
    on it. ``e.kind`` is the engine's short, stable error name (for example
    ``"unreachable"`` or ``"crc-mismatch"``), or None when Python code raised
    the exception itself.
    """

    kind = None

    def __str__(self):
        if len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class InvalidInputError(BigTransferError, ValueError):
    """An argument is invalid: a bad option value, port or address."""


class SourceFileError(BigTransferError, OSError):
    """The local file to send (or hash) cannot be opened or read.

    ``errno``, ``strerror`` and ``filename`` are set when an OS error is
    behind it.
    """


class SourceFileNotFoundError(SourceFileError, FileNotFoundError):
    """The local file to send (or hash) does not exist."""


class UnreachableError(BigTransferError, ConnectionError):
    """No connection to the server could be made (after all retries)."""


class ConnectionLostError(BigTransferError, ConnectionError):
    """A connection broke before the transfer finished (after all retries)."""


class ProtocolError(BigTransferError):
    """The peer broke the wire protocol (malformed reply, bad offset, ...)."""


class RefusedError(BigTransferError):
    """The server refused the upload (bad name, too large, no space, a missing
    or wrong token, ...)."""


class CrcMismatchError(BigTransferError):
    """The server kept answering CRC32_ERROR (after all retries)."""


class StorageError(BigTransferError, OSError):
    """The server's storage directory, or a file in it, cannot be used."""


class CancelledError(BigTransferError):
    """The transfer was cancelled: the progress callback returned False.

    What the server received so far stays resumable.
    """


class TimedOutError(BigTransferError, TimeoutError):
    """The peer sent nothing within the idle timeout."""


class HostKeyError(BigTransferError, ConnectionError):
    """The server's TLS key is not the pinned one (or not the ``fingerprint``
    given), or a server whose key is pinned (or with ``require_tls``)
    offered no TLS. Nothing was sent. The message shows both fingerprints
    and which known-hosts line to delete if the new key is right."""
