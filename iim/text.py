"""Text for one log or status line: peer-supplied text made safe, addresses shown.

Shared by the server, the configuration reader and the multiplexor's
Python side; it imports nothing of iim, so anyone may import it.
"""

from __future__ import annotations


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` made safe for one log line: no control characters, no line or
    paragraph separators (U+2028, U+2029: no forged lines), each shown escaped
    (``\\x07``, ``\\u2028``), and at most ``limit`` characters (None: all)."""
    shown = text if limit is None else text[:limit]
    cleaned = "".join(c if c.isprintable() else _escaped(c) for c in shown)
    return cleaned + ("..." if limit is not None and len(text) > limit else "")


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:5222``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"
