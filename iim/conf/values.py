"""Typed values of iim.conf: each converter turns one raw string into one type.

A converter raises `Invalid` carrying what was expected ("expected a positive
integer"); the settings layer adds the line, the parameter and the value (or
not, for passwords).  Paths come back as they are written; the settings layer
resolves relative ones against the directory holding iim.conf.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .diagnostics import Severity

__all__ = [
    "HostPort", "Invalid", "MAX_INT", "format_value", "host_domain", "optional",
    "parse_bool", "parse_domain", "parse_nonempty", "parse_listen", "parse_log_url", "parse_names",
    "parse_origins",
    "parse_path", "parse_peer", "parse_severity", "parse_size", "parse_text_value",
    "positive", "at_least",
]

#: Largest integer any parameter accepts.
MAX_INT = 2**31 - 1
#: Port a coserver gets when only a host is given.
DEFAULT_S2S_PORT = 5269

_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})
_DIGITS = re.compile(r"[0-9]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_NAME = re.compile(r"[a-z0-9_-]+")
_SIZE = re.compile(r"([0-9]{1,15})\s*([kmg]?)b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_WRITE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Invalid(ValueError):
    """A raw value does not fit; the message says what was expected."""


@dataclass(frozen=True)
class HostPort:
    """An optional host and a port, written ``host:port`` or ``:port``.

    IPv6 hosts are kept without brackets and written with them.
    """

    host: str | None
    port: int

    @property
    def loopback_only(self) -> bool:
        """True when the host is a loopback address (127.0.0.0/8, ::1) or
        ``localhost``: nothing listening there is reachable from another machine."""
        if self.host is None:
            return False
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.host is None:
            return f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def optional(convert):
    """`convert`, except that an empty (or blank) value means "not set": None."""

    @functools.wraps(convert)
    def convert_or_none(text: str):
        return None if not text.strip() else convert(text)

    return convert_or_none


def parse_text_value(text: str) -> str:
    """Any string, as written."""
    return text


def parse_nonempty(text: str) -> str:
    """Any string but the empty one, as written."""
    if not text.strip():
        raise Invalid("expected a non-empty value")
    return text


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise Invalid("expected a boolean (true/false, on/off, yes/no)")


def positive(text: str) -> int:
    """An integer from 1 up to MAX_INT."""
    return _integer(text, 1, "expected a positive integer")


def at_least(minimum: int, expected: str):
    """A converter for integers from `minimum` up to MAX_INT."""
    return functools.partial(_integer, minimum=minimum, expected=expected)


def _integer(text: str, minimum: int, expected: str) -> int:
    digits = text.strip()
    if not _DIGITS.fullmatch(digits):
        raise Invalid(expected)
    significant = digits.lstrip("0") or "0"
    if len(significant) > 10 or int(significant) > MAX_INT:
        raise Invalid(f"{expected} up to {MAX_INT}")
    if int(significant) < minimum:
        raise Invalid(expected)
    return int(significant)


def parse_listen(text: str) -> HostPort:
    """Where to listen or connect: ``port``, ``:port``, ``host:port``, ``[v6]:port``."""
    expected = "expected a port (1-65535) or host:port"
    host, port = _split_host_port(text.strip(), expected)
    if port is None and host is not None and _DIGITS.fullmatch(host):
        host, port = None, host
    if port is None:
        raise Invalid(expected)
    return HostPort(host, _port(port, expected))


def parse_peer(text: str) -> HostPort:
    """A remote server: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (port 5269)."""
    expected = "expected a host or host:port (port 1-65535)"
    host, port = _split_host_port(text.strip(), expected)
    if host is None or _DIGITS.fullmatch(host):
        raise Invalid(expected)
    return HostPort(host, DEFAULT_S2S_PORT if port is None else _port(port, expected))


def _split_host_port(text: str, expected: str) -> tuple[str | None, str | None]:
    """(host or None, port text or None), checking the host's form."""
    if text.startswith("["):
        return _split_bracketed(text, expected)
    if text.count(":") > 1:
        raise Invalid(expected)
    host, colon, port = text.partition(":")
    if host and not _HOSTNAME.fullmatch(host):
        raise Invalid(expected)
    return host or None, port if colon else None


def _split_bracketed(text: str, expected: str) -> tuple[str, str | None]:
    host, bracket, rest = text[1:].partition("]")
    if not bracket or not _is_ipv6(host) or rest[:1] not in ("", ":"):
        raise Invalid(expected)
    return host, rest[1:] if rest else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str, expected: str) -> int:
    if not _DIGITS.fullmatch(text) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise Invalid(expected)
    return int(text)


def parse_domain(text: str) -> str:
    """A DNS domain name, lower-cased."""
    name = text.strip().lower()
    if not _HOSTNAME.fullmatch(name):
        raise Invalid("expected a domain name")
    return name


@functools.lru_cache(maxsize=1)
def host_domain() -> str:
    """This host's domain: the FQDN after its first dot, or the FQDN itself."""
    fqdn = socket.getfqdn().lower()
    _, dot, domain = fqdn.partition(".")
    return domain if dot and domain else fqdn


def parse_path(text: str) -> Path:
    """A file or directory path, as written (relative ones are resolved later)."""
    if not text.strip():
        raise Invalid("expected a path")
    return Path(text)


def split_nss_kind(path: Path) -> tuple[str, Path]:
    """("sql:", rest) for an NSS directory written with its database-type
    prefix (``sql:/etc/pki/nssdb``), else ("", path)."""
    text = str(path)
    for kind in ("sql:", "dbm:"):
        if text.startswith(kind):
            return kind, Path(text[len(kind):])
    return "", path


def parse_log_url(text: str) -> Path:
    """A log file, as a path or a ``file://`` URL."""
    match = _URL.fullmatch(text.strip())
    if match is None:
        return parse_path(text)
    expected = "expected a file path or a file:// URL"
    scheme, rest = match.groups()
    if scheme.lower() != "file":
        raise Invalid(expected)
    host, slash, path = rest.partition("/")
    if not slash or host.lower() not in ("", "localhost"):
        raise Invalid(expected)
    decoded = urllib.parse.unquote("/" + path)
    if "\0" in decoded:
        raise Invalid(expected)
    return Path(decoded)


def parse_size(text: str) -> int:
    """A size in bytes, optionally with a K, M or G (binary) suffix."""
    match = _SIZE.fullmatch(text.strip())
    size = int(match[1]) * _SIZE_UNITS[match[2].lower()] if match else 0
    if not 1 <= size <= 2**62:
        raise Invalid("expected a size in bytes, such as 10485760 or 10M")
    return size


def parse_severity(text: str) -> Severity:
    name = text.strip().upper()
    if name not in Severity.__members__:
        raise Invalid("expected FATAL, ERROR, WARNING, INFO or DEBUG")
    return Severity[name]


def parse_networks(text: str) -> tuple:
    """Comma-separated addresses or networks (``127.0.0.0/8, ::1, 10.1.2.3``)."""
    import ipaddress
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        networks = tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError:
        raise Invalid('expected comma-separated addresses or networks, such as '
                      '"127.0.0.0/8, ::1"') from None
    if not networks:
        raise Invalid('expected at least one address or network, such as "127.0.0.0/8, ::1"')
    return networks


def parse_host_overrides(text: str) -> tuple[tuple[str, HostPort], ...]:
    """``domain=host[:port], ...``: where to reach a domain instead of DNS."""
    expected = 'expected "domain=host[:port], ..." such as "example.org=10.0.0.5:5269"'
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        domain, equals, where = item.partition("=")
        if not equals:
            raise Invalid(expected)
        try:
            pairs.append((parse_domain(domain.strip()), parse_peer(where.strip())))
        except Invalid:
            raise Invalid(expected) from None
    return tuple(pairs)


def parse_nameservers(text: str) -> tuple[HostPort, ...]:
    """DNS servers as ``address[:port], ...`` (port 53 unless given)."""
    expected = "expected DNS server addresses, such as \"127.0.0.1:5353, [::1]\""
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            host, port = _split_host_port(item, expected)
            if host is None:
                raise Invalid(expected)
            servers.append(HostPort(host, 53 if port is None else _port(port, expected)))
    return tuple(servers)


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, lower-cased, without repeats."""
    names = [name.strip().lower() for name in text.split(",")]
    names = [name for name in names if name]
    if not all(_NAME.fullmatch(name) for name in names):
        raise Invalid('expected comma-separated names, such as "coserver1,coserver2"')
    return tuple(dict.fromkeys(names))


_ORIGIN = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)"
                     r"(?::([0-9]{1,5}))?/?", re.IGNORECASE)


def parse_origins(text: str) -> tuple[str, ...]:
    """Web origins (RFC 6454) allowed to use the HTTP gateway: ``*``, or
    comma-separated ``scheme://host[:port]``, kept lower-case and without a
    default port, as browsers send them in ``Origin``."""
    expected = 'expected "*" or comma-separated origins such as "https://chat.example.com"'
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if parts == ["*"]:
        return ("*",)
    origins = []
    for part in parts:
        match = _ORIGIN.fullmatch(part)
        if match is None:
            raise Invalid(expected)
        scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if port is not None and not 0 < int(port) < 65536:
            raise Invalid(expected)
        if port is not None and int(port) != {"http": 80, "https": 443}[scheme]:
            host = f"{host}:{int(port)}"
        origins.append(f"{scheme}://{host}")
    return tuple(dict.fromkeys(origins))


def format_value(value: str) -> str:
    """`value` written for iim.conf: double-quoted, so it reads back unchanged.

    Raises ValueError for what iim.conf cannot hold (NUL, lone surrogates).
    """
    if "\0" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("iim.conf cannot hold NUL characters or lone surrogates")
    return '"' + "".join(_WRITE_ESCAPES.get(c, c) for c in value) + '"'
