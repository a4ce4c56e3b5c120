"""The control channel: one JSON request, one JSON response, per connection.

Theory of operation. A managed server or multiplexor listens on a Unix-domain
socket in its runtime folder (``iim.instancevardir``, see iim.runtime).
``iim.admin`` connects, writes one request line and reads one response line:

    -> {"op": "status"}
    <- {"ok": true, "component": "server", "pid": 4242, ...}
    -> {"op": "refresh"}
    <- {"ok": false, "error": "iim.conf:12: iim_server.port: expected ..."}

Requests are ``status``, ``refresh`` (re-read iim.conf and the certificates)
and ``stop``. A response always carries ``ok``; a refused request carries
``error``, one line for the operator. Lines are UTF-8 JSON ended by "\\n",
at most MAX_MESSAGE bytes.

Who may ask: the socket is created mode 0600 in a folder of mode 0700 (when
we create it), and every connection's peer credentials (SO_PEERCRED) must be
our own uid or root; anybody else is closed without an answer. Nothing
secret ever travels on it: status reports names, counts and certificate
dates, never keys or passwords.

Why a socket rather than signals alone: a signal cannot answer. ``refresh``
must say which changed parameters need a restart, and refuse a broken
iim.conf with its error; ``status`` needs numbers from inside the process.
Signals remain as a fallback (SIGTERM stops, SIGHUP reloads certificates).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Callable

__all__ = ["ControlFailed", "ControlThread", "ControlUnavailable", "MAX_MESSAGE", "ask",
           "bind", "certificate_info", "decode", "encode", "one_line", "peer_allowed"]

MAX_MESSAGE = 1 << 20
#: Seconds iim.admin waits for an answer (a refresh may re-read keystores).
TIMEOUT = 30.0
#: Seconds a component waits for a client's request line.
REQUEST_TIMEOUT = 5.0
OPS = ("status", "refresh", "stop")


class ControlUnavailable(Exception):
    """Nobody answers on the control socket (absent, refused)."""


class ControlFailed(Exception):
    """The component did not answer properly (timeout, garbage); one line."""


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(data: bytes) -> dict:
    """One message; ValueError when it is not a JSON object."""
    message = json.loads(data.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


def ask(path: Path, op: str, *, timeout: float = TIMEOUT) -> dict:
    """Send request ``op`` to the control socket at ``path``; the response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"{path}: {exc.strerror}") from None
        except OSError as exc:
            raise ControlUnavailable(f"{path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(encode({"op": op}))
            data = read_line(sock)
        except socket.timeout:
            raise ControlFailed(f"no answer to {op!r} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlFailed(f"{op!r}: {exc.strerror or exc}") from None
    try:
        return decode(data)
    except ValueError:
        raise ControlFailed(f"unreadable answer to {op!r}") from None


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to the first newline (or EOF); ControlFailed beyond MAX_MESSAGE."""
    chunks, size = [], 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
        if size > MAX_MESSAGE:
            raise ControlFailed("answer too long")
    return b"".join(chunks).split(b"\n", 1)[0]


def peer_allowed(sock: socket.socket) -> bool:
    """The connecting process runs as our uid, or as root (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from the start.

    The caller holds the component's pid file, so a socket file already at
    ``path`` is a leftover of a dead process and is removed first.
    """
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o077)
    try:
        sock.bind(os.fspath(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def bad_request(message: dict) -> str | None:
    """Why a request is refused, or None when ``op`` is one we answer."""
    op = message.get("op")
    return None if op in OPS else f"unknown request {op!r} (expected one of {', '.join(OPS)})"


Handler = Callable[[dict], "tuple[dict, Callable[[], None] | None]"]


class ControlThread(threading.Thread):
    """The control socket served by a thread (the multiplexor supervisor has no
    event loop). ``handler(request)`` returns the response and, optionally, what
    to do once it is sent (``stop`` answers first, then stops)."""

    def __init__(self, path: Path, handler: Handler, log) -> None:
        super().__init__(name="control", daemon=True)
        self.path = path
        self.handler = handler
        self.log = log
        self.sock = bind(path)
        self._closed = False

    def run(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                          # closed
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        if not peer_allowed(conn):
            self.log.warning("control: connection from another user refused")
            return
        conn.settimeout(REQUEST_TIMEOUT)
        after = None
        try:
            request = decode(read_line(conn))
            problem = bad_request(request)
            response, after = ({"ok": False, "error": problem}, None) if problem else \
                self.handler(request)
        except (ValueError, ControlFailed):
            response = {"ok": False, "error": "unreadable request"}
        except OSError:
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the control thread
            self.log.exception("control: request failed")
            response = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        try:
            conn.sendall(encode(response))
        except OSError:
            pass
        if after is not None:
            after()

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        unlink(self.path)


def certificate_info(cert) -> dict | None:
    """What status shows of a certificate: names, serial (hex), validity (ISO 8601)."""
    if cert is None:
        return None
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}


def one_line(err: Exception) -> str:
    """A configuration error as one line: the first finding, and how many more."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more)"
