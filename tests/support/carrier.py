"""A client session's carrier in memory (``iim.server.c2s.Carrier``).

What the session writes piles up in ``out`` (``take()`` empties it); ``held``
plays the bytes a socket has taken from the session but not yet sent, which
``pending()`` reports, as the output backpressure and the in-flight ledger
read it. ``source`` is what per-source limits count the session under (None:
the peer address)."""

from __future__ import annotations


class MemoryCarrier:
    def __init__(self, peer: str = "memory", source: str | None = None) -> None:
        self.peer, self.source = peer, source
        self.out = bytearray()
        self.held = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def pending(self) -> int:
        return self.held

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data
