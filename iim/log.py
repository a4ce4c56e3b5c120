"""Logging for the server and the multiplexor, from ``iim.log.<component>.*``.

One line per event, in UTC, with the process that wrote it::

    2026-11-26T20:00:00.123Z INFO iim.mux[4242]: link 0.1 up to 127.0.0.1:45222

``severity`` is the least severe level written (the ``iim`` logger's level).
``url`` names the file; without it the log goes to standard error. The file
is rotated before a line would take it past ``maxlogfilesize`` bytes: FILE
becomes FILE.1, FILE.1 becomes FILE.2 and so on, and ``maxlogfiles`` rotated
files are kept (FILE.1 .. FILE.N; the oldest beyond that is deleted). A single
line longer than ``maxlogfilesize`` is still written whole.

Theory of operation: one writer per file
-----------------------------------------
``RotatingFileHandler`` is safe among the threads of one process (its lock
covers both the write and the rotation) but not among processes: when one
process renames FILE to FILE.1, the others keep writing through their open
descriptors into FILE.1, past its size, and their own rotations later rename
files under each other. The multiplexor runs several worker processes, so a
worker never opens the log file:

* the supervisor makes one pipe per worker (``forward_worker_log``) and
  passes the write end as ``--log-fd``;
* in the worker, ``setup(..., pipe_fd=N)`` gives the ``iim`` logger a
  ``PipeHandler`` (a ``QueueHandler`` whose queue is the pipe): ``prepare()``
  renders the record in the worker (arguments, traceback), the redaction
  filter runs, and the record crosses the pipe as one length-prefixed JSON
  frame. The handler's lock keeps the frames of a worker's threads whole; the
  pipe has one writer process, so frames of different workers never mix;
* in the supervisor, one reader thread per pipe turns frames back into
  ``LogRecord`` objects and hands them to the supervisor's own handlers.

So exactly one process writes and rotates the file, one whole record at a
time. Nothing is lost when a worker exits: its pipe is read to end of file,
and ``drain_worker_logs`` waits for that before the supervisor's last line.
A worker whose supervisor is gone (broken pipe) writes to standard error.

Redaction: a safety net, not the rule
-------------------------------------
iim never logs a secret on purpose: messages are built from names, addresses
and reasons, password objects hide their value from ``repr()``, and SASL
payloads and stanza contents are not logged. As defence in depth every
handler installed here carries a ``Redactor`` filter that renders the record
(message, traceback, stack) and masks what looks like a secret (see
``redact``): SASL payloads inside ``<auth/>``, ``<response/>``,
``<challenge/>``, ``<success/>``; ``password=...``, ``secret: ...`` and
similar key/value pairs (but not a parameter name given as the value, nor a
plain word after a phrase about a secret: "no shared secret: set
iim_server.muxlink_secretfile" is about a secret, not one); password-file lines (``Internal (Software)
Token:...``); HTTP ``Basic``/``Bearer`` credentials; SCRAM proofs and
signatures (``p=``, ``v=``); base64 blobs that decode to a SASL PLAIN or SCRAM
message, or long ones (keys, tickets); PEM private keys. It cannot recognise
a bare secret that looks like any other word, which is why the rule stays:
never pass one to the log.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import logging.handlers
import os
import re
import struct
import sys
import threading
import time

from .conf import ComponentLog

__all__ = ["FORMAT", "PipeHandler", "Redactor", "drain_worker_logs", "forward_worker_log",
           "redact", "setup"]

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s[%(process)d]: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
MASK = "[redacted]"
#: A record longer than this is cut before it crosses a worker's pipe.
MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
#: The LogRecord attributes a frame carries (the message already rendered).
_FRAME_FIELDS = ("name", "levelno", "levelname", "msg", "created", "msecs", "process",
                 "processName", "thread", "threadName")


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


def _formatter() -> logging.Formatter:
    return _UTCFormatter(FORMAT, datefmt=DATE_FORMAT)


def setup(component: str, settings: ComponentLog, *, pipe_fd: int | None = None) -> logging.Logger:
    """Configure the ``iim`` logger for ``component`` ("server" or "mux").

    With ``pipe_fd`` (a multiplexor worker) records go to the supervisor
    through that pipe instead of to the file or standard error.
    """
    root = logging.getLogger("iim")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = PipeHandler(pipe_fd) if pipe_fd is not None else _handler(settings)
    handler.addFilter(Redactor())
    root.addHandler(handler)
    root.setLevel(settings.severity.logging_level)
    root.propagate = False
    return logging.getLogger(f"iim.{component}")


def _handler(settings: ComponentLog) -> logging.Handler:
    if settings.url is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        settings.url.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.url, maxBytes=settings.maxlogfilesize,
            backupCount=settings.maxlogfiles, encoding="utf-8")
    handler.setFormatter(_formatter())
    return handler


# ---------------------------------------------------------------------------
# Workers -> supervisor


class PipeHandler(logging.handlers.QueueHandler):
    """A worker's handler: each record, rendered, as one frame down a pipe."""

    def __init__(self, fd: int) -> None:
        super().__init__(queue=None)
        self._fd = fd
        self._fallback: logging.Handler | None = None

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._fallback is None:
            try:
                _write_all(self._fd, encode_record(record))
                return
            except OSError:                   # the supervisor is gone
                self._fallback = logging.StreamHandler(sys.stderr)
                self._fallback.setFormatter(_formatter())
        self._fallback.emit(record)

    def close(self) -> None:
        super().close()
        try:
            os.close(self._fd)
        except OSError:
            pass


def encode_record(record: logging.LogRecord) -> bytes:
    """A prepared record (message rendered, no arguments) as one frame."""
    fields = {name: getattr(record, name, None) for name in _FRAME_FIELDS}
    fields["msg"] = str(fields["msg"])
    body = json.dumps(fields, ensure_ascii=False).encode("utf-8", "replace")
    if len(body) > MAX_FRAME:
        fields["msg"] = fields["msg"][:MAX_FRAME // 4] + " [truncated]"
        body = json.dumps(fields, ensure_ascii=False).encode("utf-8", "replace")
    return _HEADER.pack(len(body)) + body


def decode_frames(buffer: bytearray) -> list[logging.LogRecord]:
    """Take every complete frame off the front of ``buffer`` (ValueError if damaged)."""
    records = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if size > 2 * MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes")
        if len(buffer) < _HEADER.size + size:
            break
        body = bytes(buffer[_HEADER.size:_HEADER.size + size])
        del buffer[:_HEADER.size + size]
        fields = json.loads(body.decode("utf-8"))
        if not isinstance(fields, dict) or set(fields) - set(_FRAME_FIELDS):
            raise ValueError("unexpected record fields")
        records.append(logging.makeLogRecord(fields))
    return records


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _PipeReader(threading.Thread):
    """Supervisor side: one worker's records, into this process's handlers."""

    def __init__(self, fd: int, label: str) -> None:
        super().__init__(name=f"log-{label}", daemon=True)
        self.fd = fd
        self.label = label

    def run(self) -> None:
        buffer = bytearray()
        with os.fdopen(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                try:
                    records = decode_frames(buffer)
                except ValueError as exc:
                    logging.getLogger("iim").error("%s: log pipe damaged (%s); its lines "
                                                   "are dropped", self.label, exc)
                    return
                for record in records:
                    _handle(record)


def _handle(record: logging.LogRecord) -> None:
    """Hand a worker's record to the logger it was made for, under ``iim``."""
    if record.name != "iim" and not str(record.name).startswith("iim."):
        record.name = "iim.mux"
    logging.getLogger(record.name).handle(record)


_readers: list[_PipeReader] = []
_readers_lock = threading.Lock()


def forward_worker_log(label: str) -> int:
    """A new pipe for a worker: start reading it here, return the write end
    (pass it to the worker as ``--log-fd``, then close it here)."""
    read_end, write_end = os.pipe()
    reader = _PipeReader(read_end, label)
    with _readers_lock:
        _readers[:] = [r for r in _readers if r.is_alive()]
        _readers.append(reader)
    reader.start()
    return write_end


def drain_worker_logs(timeout: float = 5.0) -> bool:
    """Wait until every worker pipe has been read to its end (the workers have
    exited); False if some were still open after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with _readers_lock:
        readers = list(_readers)
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    return not any(reader.is_alive() for reader in readers)


# ---------------------------------------------------------------------------
# Redaction


class Redactor(logging.Filter):
    """Render the record's text and mask what looks like a secret (see ``redact``).

    The record is changed in place (message rendered, arguments dropped,
    traceback rendered), so every handler that sees it after this one sees
    the masked text too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "iim_redacted", False):
            return True
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.iim_redacted = True
        return True


_PEM_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?"
                      r"-----END [A-Z0-9 ]*PRIVATE KEY-----", re.DOTALL)
#: SASL payloads (RFC 6120 §6.4): the element stays, its text goes.
_SASL_PAYLOAD = re.compile(r"(<(?:[\w.-]+:)?(?:auth|response|challenge|success)\b[^<>]*>)"
                           r"([^<]+)(?=</)")
#: A password-file line (sslpassword.conf): everything after the token name,
#: unless it is the placeholder PASSWORD that messages show as the format.
_TOKEN_LINE = re.compile(r"((?:Internal \(Software\) Token|NSS Certificate DB)\s*:)"
                         r"(?!PASSWORD\b).+")
_KEY_VALUE = re.compile(
    r"""\b(password|passwd|passphrase|pwd|secret|storepass|keypass|api[_-]?key|token)\b
        (["']?\s*[:=]\s*)
        (?!(?-i:PASSWORD)\b)                    # the placeholder of a format, not a value
        ("[^"]*"|'[^']*'|[^\s,;&"'<>]+)""", re.IGNORECASE | re.VERBOSE)
#: An iim parameter name: a value that names where a secret is, not the secret.
_PARAMETER = re.compile(r"iim(?:_\w+)?\.[\w.-]*\w")
#: A key preceded by another word ("a shared secret:"): a phrase about a secret.
_AFTER_A_WORD = re.compile(r"[A-Za-z]\s+$")
#: A plain word, possibly capitalised, possibly ending a clause.
_PROSE_WORD = re.compile(r"[A-Za-z][a-z]*[.:)]?")
_HTTP_CREDENTIALS = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]{8,}", re.IGNORECASE)
#: SCRAM's client proof and server signature (RFC 5802 §7).
_SCRAM_PROOF = re.compile(r"(?<![\w=])([pv]=)[A-Za-z0-9+/]{16,}={0,2}")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{8,}={0,2}(?![A-Za-z0-9+/=])")
#: A long base64 run: key material, tickets, whole SASL messages.
LONG_BLOB = 64
_SCRAM_MESSAGE = re.compile(rb"^(?:[nyp][,=]|[crvei]=)[\x20-\x7e]*$")


def redact(text: str) -> str:
    """``text`` with whatever looks like a secret replaced by ``[redacted]``."""
    text = _PEM_KEY.sub("[redacted private key]", text)
    text = _SASL_PAYLOAD.sub(rf"\1{MASK}", text)
    text = _TOKEN_LINE.sub(rf"\1{MASK}", text)
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _HTTP_CREDENTIALS.sub(rf"\1 {MASK}", text)
    text = _SCRAM_PROOF.sub(rf"\1{MASK}", text)
    return _BASE64.sub(_mask_blob, text)


def _mask_value(match: re.Match) -> str:
    """The value of a ``password=...``-like pair, masked unless it is plainly
    not a secret: an iim parameter name (``secret: iim_server.x``), or a plain
    word after a noun phrase *about* a secret (``a shared secret: set ...``:
    the key follows another word, a colon and no quotes separate it, and the
    value is a lower-case word, not a token with digits, capitals or signs)."""
    key, separator, value = match.groups()
    if _PARAMETER.fullmatch(value) or (_in_prose(match) and "=" not in separator
                                       and _PROSE_WORD.fullmatch(value)):
        return match.group(0)
    return f"{key}{separator}{MASK}"


def _in_prose(match: re.Match) -> bool:
    before = match.string[:match.start(1)]
    return bool(_AFTER_A_WORD.search(before)) and not match.group(2).startswith(("'", '"'))


def _mask_blob(match: re.Match) -> str:
    token = match.group(0)
    return MASK if _looks_secret(token) else token


def _looks_secret(token: str) -> bool:
    if len(token) >= LONG_BLOB and _mixed(token):
        return True
    if len(token) % 4:
        return False
    try:
        data = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return False
    if data.count(b"\0") == 2:                      # PLAIN: [authzid] NUL authcid NUL passwd
        try:
            data.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False
    return bool(_SCRAM_MESSAGE.match(data))


def _mixed(token: str) -> bool:
    """Base64 (mixed case, or + and /), not a hex digest or a word."""
    return ("+" in token or "/" in token) or (
        any(c.islower() for c in token) and any(c.isupper() for c in token)
        and any(c.isdigit() for c in token))
