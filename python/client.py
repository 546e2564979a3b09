#!/usr/bin/env python3
"""Upload one file to server.py with the bigtransfer legacy protocol (version 1).

Interactive, like the original script: it asks in turn for the server's IP
address, its port and the path of the file (in Russian when LC_ALL,
LC_MESSAGES or LANG starts with "ru"). Answers may come from a pipe:

    printf '127.0.0.1\\n8080\\n/path/to/file\\n' | python3 client.py

or non-interactive:

    python3 client.py --host H --port P [--retries N] [--timeout S]
                      [--limit-rate BYTES_PER_SEC] [--pure] FILE

A value not given on the command line is asked for. A bad answer is explained
and asked again.

The upload: CRC-32 of the file, connect, send the header (u32 length + JSON
{"filename", "filesize", "crc32"}), read the u64 offset the server already
holds, send the file from there, read the result until EOF. A lost connection
is resumed after a backoff, CRC32_ERROR restarts the upload (the server has
discarded its part), both at most --retries times in all. An unreachable
server is retried the same way non-interactively; interactively the client
asks whether to try again. On success it prints one line:

    CRC32_OK: NAME, SIZE bytes, resumed from OFFSET, sent SENT bytes

(followed by " (N attempts)" when it took more than one connection).

Exit codes:
    0    CRC32_OK: the server stored the file
    1    anything else (protocol violation, unexpected error)
    2    bad usage or bad input file (also: input ended while asking)
    3    server unreachable
    4    connection lost and retries exhausted
    5    CRC32_ERROR after all retries
    130  interrupted (Ctrl-C)

When the Rust extension module ``bigtransfer`` is importable, the "crc" piece
uses ``bigtransfer.crc32_file`` and the "send" piece ``bigtransfer.send_file``
(--limit-rate is passed on to it as ``limit_rate``). ``--pure``
or ``BIGTRANSFER_PURE=1`` forces pure Python everywhere;
``BIGTRANSFER_ENGINE=crc,send`` lists the pieces that may use the module
(default: all that it provides).
"""

import argparse
import inspect
import json
import os
import socket
import stat
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Optional

try:
    import bigtransfer
except ImportError:
    bigtransfer = None

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CONNECTION_LOST = 4
EXIT_CRC_MISMATCH = 5
EXIT_INTERRUPTED = 130

RESULT_OK = b"CRC32_OK"
RESULT_ERROR = b"CRC32_ERROR"
MAX_RESULT_LEN = 64
IO_BLOCK = 1024 * 1024
SEND_CHUNK = 1024 * 1024
PACED_CHUNK_MAX = 64 * 1024
MAX_BACKOFF_SECONDS = 10.0

ENGINE_PIECES = {"crc": "crc32_file", "send": "send_file"}

MESSAGES = {
    "en": {
        "ask_host": "Server IP address: ",
        "ask_port": "Server port: ",
        "ask_file": "Path to the file: ",
        "ask_again": "Try again? [y/n]: ",
        "yes_no": "Please answer y or n.",
        "bad_host": "The server address must not be empty.",
        "bad_port": "The port must be a whole number from 1 to 65535, not {value!r}.",
        "no_file": "No such file: {path}",
        "not_file": "Not a regular file: {path}",
        "unreadable": "Cannot read {path}: {error}",
        "bad_name": "The file name {name!r} cannot be sent: it is not valid UTF-8.",
        "eof": "No answer: the input has ended. Giving up.",
        "unreachable": "Cannot reach the server at {address}: {error}",
        "retry_unreachable": "Server unreachable ({error}); retrying in {delay:.1f} s "
                             "(retry {n} of {total})",
        "retry_lost": "Connection lost ({error}); resuming in {delay:.1f} s "
                      "(retry {n} of {total})",
        "retry_crc": "The server answered CRC32_ERROR; sending {name} again from the start "
                     "(retry {n} of {total})",
        "lost": "Connection to {address} lost: {error}",
        "crc_failed": "The server's CRC-32 check of {name} failed: {error}",
        "failed": "Upload failed: {error}",
        "interrupted": "Interrupted.",
    },
    "ru": {
        "ask_host": "Введите IP-адрес сервера: ",
        "ask_port": "Введите порт сервера: ",
        "ask_file": "Введите путь к файлу: ",
        "ask_again": "Попробовать снова? (y/n): ",
        "yes_no": "Ответьте y или n.",
        "bad_host": "Адрес сервера не может быть пустым.",
        "bad_port": "Порт должен быть целым числом от 1 до 65535, а не {value!r}.",
        "no_file": "Файл не найден: {path}",
        "not_file": "Это не обычный файл: {path}",
        "unreadable": "Не удаётся прочитать {path}: {error}",
        "bad_name": "Имя файла {name!r} нельзя отправить: это не UTF-8.",
        "eof": "Нет ответа: ввод закончился. Выход.",
        "unreachable": "Не удаётся подключиться к серверу {address}: {error}",
        "retry_unreachable": "Сервер недоступен ({error}); повтор через {delay:.1f} с "
                             "(попытка {n} из {total})",
        "retry_lost": "Соединение потеряно ({error}); продолжение через {delay:.1f} с "
                      "(попытка {n} из {total})",
        "retry_crc": "Сервер ответил CRC32_ERROR; файл {name} отправляется заново "
                     "(попытка {n} из {total})",
        "lost": "Соединение с {address} потеряно: {error}",
        "crc_failed": "Контрольная сумма {name} на сервере не совпала: {error}",
        "failed": "Ошибка передачи: {error}",
        "interrupted": "Прервано.",
    },
}
YES_ANSWERS = ("y", "yes", "д", "да")
NO_ANSWERS = ("n", "no", "н", "нет")


# --------------------------------------------------------------------------
# Errors and results


class UploadError(Exception):
    """An upload that did not end with CRC32_OK."""
    exit_code = EXIT_FAILURE


class InputError(UploadError):
    exit_code = EXIT_USAGE


class Unreachable(UploadError):
    exit_code = EXIT_UNREACHABLE


class ConnectionLost(UploadError):
    exit_code = EXIT_CONNECTION_LOST


class CrcMismatch(UploadError):
    exit_code = EXIT_CRC_MISMATCH


class ProtocolError(UploadError):
    exit_code = EXIT_FAILURE


@dataclass
class Outcome:
    """What one run achieved (the same attributes as bigtransfer's Result)."""
    filename: str
    filesize: int
    offset: Optional[int]  # what the server held when this run first connected
    sent: int              # file bytes this run sent, over all attempts (a send cut
                           # short by a lost connection counts as far as it is known)
    crc32: int
    attempts: int          # connections made


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
    """CRC-32 (zlib) of a whole file, read in 1 MiB blocks."""
    mod = engine("crc", pure)
    if mod is not None:
        return mod.crc32_file(path) & 0xFFFFFFFF
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(IO_BLOCK), b""):
            crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


# --------------------------------------------------------------------------
# The pure-Python "send" piece


def format_address(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def describe(exc):
    """A short text for a socket error."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def backoff(failures):
    return min(0.5 * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)


class Source:
    """The file to send: its header fields, recomputed when the file changes."""

    def __init__(self, path, pure=False):
        self.path = path
        self.name = os.path.basename(path)
        self.pure = pure
        self.size = 0
        self.crc = 0
        self._identity = None
        self.refresh()

    def refresh(self):
        try:
            st = os.stat(self.path)
            identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            if identity != self._identity:
                self.size = st.st_size
                self.crc = file_crc32(self.path, self.pure)
                self._identity = identity
        except OSError as exc:
            raise InputError("%s: %s" % (self.path, describe(exc))) from None

    def header(self):
        meta = json.dumps({"filename": self.name, "filesize": self.size, "crc32": self.crc})
        data = meta.encode("utf-8")
        return struct.pack("!I", len(data)) + data


def recv_exact(sock, n, what):
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError as exc:
            raise ConnectionLost("%s while waiting for %s" % (describe(exc), what)) from None
        if not chunk:
            raise ConnectionLost("the server closed the connection before sending %s "
                                 "(it may have refused the upload: see its log)" % what)
        data += chunk
    return data


def send_range(sock, f, start, end, outcome, limit_rate=None, progress=None):
    """Send bytes [start, end) of ``f``, paced to ``limit_rate`` bytes/s if given."""
    chunk = SEND_CHUNK if not limit_rate else max(1, min(PACED_CHUNK_MAX, limit_rate // 20))
    began = time.monotonic()
    pos = start
    while pos < end:
        try:
            n = sock.sendfile(f, offset=pos, count=min(chunk, end - pos))
        except OSError as exc:
            raise ConnectionLost("%s after %d of %d bytes" % (describe(exc), pos, end)) from None
        if n == 0:
            raise InputError("%s shrank while being sent" % f.name)
        pos += n
        outcome.sent += n
        if progress is not None:
            progress(pos, end)
        if limit_rate:
            ahead = (pos - start) / limit_rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)


def read_result(sock):
    data = b""
    try:
        while len(data) <= MAX_RESULT_LEN:
            chunk = sock.recv(MAX_RESULT_LEN)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ConnectionLost("%s while waiting for the result" % describe(exc)) from None
    if not data:
        raise ConnectionLost("the server closed the connection without a result")
    if data not in (RESULT_OK, RESULT_ERROR):
        raise ProtocolError("unexpected reply from the server: %r" % data[:MAX_RESULT_LEN])
    return data


def widen_send_buffer(sock):
    """Give ``sock`` the largest send buffer the host allows, when that beats
    the kernel's autotuning (Linux only; the Rust engine does the same).

    One TCP stream on a long link is capped by its send buffer: at most
    ``tcp_wmem``'s maximum under autotuning (4 MiB by default, ~40 MB/s at
    100 ms round trip). An explicit SO_SNDBUF may go to ``net.core.wmem_max``,
    which the kernel doubles. Setting it switches autotuning off, so it is
    only set when it is larger than autotuning could reach. Returns the size
    asked for, or None.
    """
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            core_max = int(f.read().split()[0])
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            auto_max = int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return None
    want = min(core_max, 32 << 20)
    if want * 2 <= auto_max:
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)
    except OSError:
        return None
    return want


def upload_once(host, port, source, outcome, timeout, limit_rate=None, progress=None):
    """One connection: header, offset, bytes, result. Returns the result bytes."""
    try:
        f = open(source.path, "rb")
    except OSError as exc:
        raise InputError("%s: %s" % (source.path, describe(exc))) from None
    with f:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unreachable(describe(exc)) from None
        with sock:
            widen_send_buffer(sock)
            try:
                sock.sendall(source.header())
            except OSError as exc:
                raise ConnectionLost("%s while sending the header" % describe(exc)) from None
            (offset,) = struct.unpack("!Q", recv_exact(sock, 8, "the offset"))
            if offset > source.size:
                raise ProtocolError("the server holds %d bytes of a %d-byte file"
                                    % (offset, source.size))
            if outcome.offset is None:
                outcome.offset = offset
            send_range(sock, f, offset, source.size, outcome, limit_rate, progress)
            return read_result(sock)


def send_pure(host, port, path, retries=5, timeout=60.0, limit_rate=None, pure=False,
              retry_unreachable=True, progress=None, on_retry=None):
    """Upload ``path``, resuming and retrying; returns an Outcome or raises UploadError.

    ``on_retry(kind, error, delay, n, total)`` is told about each retry, kind being
    "unreachable", "lost" or "crc".
    """
    source = Source(path, pure)
    outcome = Outcome(source.name, source.size, None, 0, source.crc, 0)
    failures = 0
    while True:
        outcome.attempts += 1
        try:
            result = upload_once(host, port, source, outcome, timeout, limit_rate, progress)
        except (Unreachable, ConnectionLost) as exc:
            if isinstance(exc, Unreachable) and not retry_unreachable:
                raise
            failures += 1
            if failures > retries:
                raise
            delay = backoff(failures)
            if on_retry is not None:
                kind = "unreachable" if isinstance(exc, Unreachable) else "lost"
                on_retry(kind, exc, delay, failures, retries)
            time.sleep(delay)
            continue
        if result == RESULT_OK:
            return outcome
        failures += 1
        if failures > retries:
            raise CrcMismatch("CRC32_ERROR on each of %d attempts" % outcome.attempts)
        if on_retry is not None:
            on_retry("crc", None, 0.0, failures, retries)
        source.refresh()  # a file that changed meanwhile gets a new CRC-32
        outcome.filesize, outcome.crc32 = source.size, source.crc


def accepts_keyword(func, name):
    """Whether ``func`` takes the keyword argument ``name`` (True when unknowable)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def send_with_module(mod, host, port, path, retries, timeout, progress=None,
                     limit_rate=None):
    """The "send" piece from the Rust module, its errors mapped to ours."""
    def error_class(name, fallback=None):
        return getattr(mod, name, None) or fallback or type("Never" + name, (Exception,), {})

    try:
        options = {"retries": retries, "timeout": timeout, "progress": progress}
        if limit_rate:
            options["limit_rate"] = limit_rate
        r = mod.send_file(host, port, path, **options)
    except error_class("CancelledError") as exc:  # Ctrl-C while the engine ran
        raise KeyboardInterrupt() from exc
    except error_class("UnreachableError") as exc:
        raise Unreachable(str(exc)) from None
    except (error_class("ConnectionLostError"), error_class("TimedOutError")) as exc:
        raise ConnectionLost(str(exc)) from None
    except error_class("CrcMismatchError") as exc:
        raise CrcMismatch(str(exc)) from None
    except (error_class("SourceFileError", OSError), error_class("InvalidInputError")) as exc:
        raise InputError(str(exc)) from None
    except error_class("BigTransferError") as exc:
        raise UploadError(str(exc)) from None
    except OSError as exc:  # the file itself
        raise InputError("%s: %s" % (path, describe(exc))) from None

    def field(*names):  # the Result's attribute names differ between module versions
        for name in names:
            if hasattr(r, name):
                return getattr(r, name)
        raise AttributeError(names[0])
    return Outcome(r.filename, r.filesize, field("resumed_from", "offset"),
                   field("bytes_sent", "sent"), r.crc32, r.attempts)


# --------------------------------------------------------------------------
# Talking to the person


class EndOfInput(Exception):
    """Standard input ended while a question was open."""


def choose_language(stream):
    """"ru" when the locale is Russian and ``stream`` can show it, else "en"."""
    value = ""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            break
    if not value.lower().startswith("ru"):
        return "en"
    try:
        "Введите".encode(stream.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return "en"
    return "ru"


class Ui:
    """Prompts and messages in one language; answers from stdin, messages to stderr."""

    def __init__(self, lang):
        self.text = MESSAGES[lang]

    def say(self, key, **fields):
        return self.text[key].format(**fields)

    def tell(self, key, **fields):
        print(self.say(key, **fields), file=sys.stderr, flush=True)

    def _input(self, key):
        try:
            return input(self.say(key)).strip()
        except EOFError:
            print(flush=True)  # end the prompt's line
            raise EndOfInput() from None

    def ask(self, key, parse):
        """Ask until ``parse`` accepts the answer (it raises ValueError with the reason)."""
        while True:
            answer = self._input(key)
            try:
                return parse(answer)
            except ValueError as exc:
                print(exc, file=sys.stderr, flush=True)

    def confirm(self, key):
        """A yes/no question; the end of input means no."""
        while True:
            try:
                answer = self._input(key).lower()
            except EndOfInput:
                return False
            if answer in YES_ANSWERS:
                return True
            if answer in NO_ANSWERS:
                return False
            self.tell("yes_no")

    # Checks shared by answers and command-line values; they raise ValueError.

    def parse_host(self, value):
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        if not value:
            raise ValueError(self.say("bad_host"))
        return value

    def parse_port(self, value):
        value = value.strip()
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
            raise ValueError(self.say("bad_port", value=value))
        return int(value)

    def parse_file(self, value):
        path = value.strip()
        if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
            path = path[1:-1]  # as pasted or dropped into a terminal
        path = os.path.expanduser(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ValueError(self.say("no_file", path=path)) from None
        except OSError as exc:
            raise ValueError(self.say("unreadable", path=path, error=describe(exc))) from None
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(self.say("not_file", path=path))
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(self.say("unreadable", path=path, error=describe(exc))) from None
        name = os.path.basename(path)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(self.say("bad_name", name=name)) from None
        return path


class ProgressLine:
    """A progress line on stderr, only when stderr is a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False
        self._last = 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done < total):
            return
        self._last = now
        percent = 100.0 * done / total if total else 100.0
        self.stream.write("\r%5.1f%%  %d / %d bytes" % (percent, done, total))
        self.stream.flush()
        self.shown = True

    def end(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


# --------------------------------------------------------------------------
# Command line


def parse_rate(value):
    """BYTES_PER_SEC, optionally with a K, M or G suffix (powers of 1024)."""
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = value.strip().lower()
    factor = units.get(text[-1:], 1)
    if factor != 1:
        text = text[:-1]
    try:
        rate = int(text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError("not a rate: %r" % value) from None
    if rate <= 0:
        raise argparse.ArgumentTypeError("the rate must be > 0")
    return rate


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Upload a file to server.py (bigtransfer legacy protocol). "
                    "Values not given are asked for interactively.",
        epilog="Exit codes: 0 CRC32_OK, 1 other error, 2 bad usage or input file, "
               "3 server unreachable, 4 connection lost, 5 CRC mismatch, 130 interrupted.")
    parser.add_argument("file", nargs="?", metavar="FILE", help="the file to upload")
    parser.add_argument("--host", help="server address (IPv4, IPv6 or name)")
    parser.add_argument("--port", type=int, help="server port")
    parser.add_argument("--retries", type=int, default=5, metavar="N",
                        help="retries after a lost connection, an unreachable server "
                             "or CRC32_ERROR, in all (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="connect and idle timeout in seconds (default 60)")
    parser.add_argument("--limit-rate", type=parse_rate, metavar="BYTES_PER_SEC",
                        help="send at most this many bytes per second")
    parser.add_argument("--pure", action="store_true",
                        help="use pure Python even when the bigtransfer module is available")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error("--port must be in 1..65535")
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    return args


def transfer(args, host, port, path, interactive, ui):
    """Run the upload with the Rust sender when allowed, else the pure one."""
    progress = ProgressLine()
    mod = engine("send", args.pure)
    if mod is not None and args.limit_rate and not accepts_keyword(mod.send_file, "limit_rate"):
        mod = None  # a module too old to pace: the pure sender can

    def on_retry(kind, error, delay, n, total):
        progress.end()
        if kind == "crc":
            ui.tell("retry_crc", name=os.path.basename(path), n=n, total=total)
        else:
            ui.tell("retry_" + kind, error=error, delay=delay, n=n, total=total)

    try:
        if mod is not None:
            return send_with_module(mod, host, port, path, args.retries, args.timeout,
                                    progress if progress.enabled else None,
                                    limit_rate=args.limit_rate)
        return send_pure(host, port, path, retries=args.retries, timeout=args.timeout,
                         limit_rate=args.limit_rate, pure=args.pure,
                         retry_unreachable=not interactive,
                         progress=progress if progress.enabled else None,
                         on_retry=on_retry)
    finally:
        progress.end()


def run(args, ui):
    interactive = args.host is None or args.port is None or args.file is None
    try:
        host = ui.parse_host(args.host) if args.host is not None else None
        path = ui.parse_file(args.file) if args.file is not None else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        if host is None:
            host = ui.ask("ask_host", ui.parse_host)
        port = args.port if args.port is not None else ui.ask("ask_port", ui.parse_port)
        if path is None:
            path = ui.ask("ask_file", ui.parse_file)
    except EndOfInput:
        ui.tell("eof")
        return EXIT_USAGE

    address = format_address(host, port)
    while True:
        try:
            outcome = transfer(args, host, port, path, interactive, ui)
        except Unreachable as exc:
            ui.tell("unreachable", address=address, error=exc)
            if interactive and ui.confirm("ask_again"):
                continue
            return EXIT_UNREACHABLE
        except ConnectionLost as exc:
            ui.tell("lost", address=address, error=exc)
            return EXIT_CONNECTION_LOST
        except CrcMismatch as exc:
            print("CRC32_ERROR: %s" % os.path.basename(path), flush=True)
            ui.tell("crc_failed", name=os.path.basename(path), error=exc)
            return EXIT_CRC_MISMATCH
        except UploadError as exc:
            ui.tell("failed", error=exc)
            return exc.exit_code
        break

    line = "CRC32_OK: %s, %d bytes, resumed from %d, sent %d bytes" % (
        outcome.filename, outcome.filesize, outcome.offset or 0, outcome.sent)
    if outcome.attempts > 1:
        line += " (%d attempts)" % outcome.attempts
    print(line, flush=True)
    return EXIT_OK


def main(argv=None):
    args = parse_args(argv)
    ui = Ui(choose_language(sys.stdout))
    try:
        return run(args, ui)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        ui.tell("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
