"""The two stand-ins for "the server" in bench/mux_side_by_side.py.

    python bench/mux_backends.py echo     --port P   # plain TCP echo, for the anchors
    python bench/mux_backends.py linkpeer --port P   # docs/muxlink.md server end, for iim mux
    python bench/mux_backends.py linkpeer --port P --tls CERT_AND_KEY.pem   # ... over TLS 1.3

Both are one asyncio process on the default event loop, so the anchors and
the multiplexor get a backend of the same kind and speed. The link peer does
the link set-up without a shared secret, echoes every DATA back as DATA
within the credit the mux granted, grants WINDOW for every byte it takes,
answers PING, and forgets sessions on CLOSE. It prints "LINK n" on stdout
each time a link becomes ready. With ``--tls`` the link runs over TLS 1.3
(asyncio's ssl, the certificate given; no secret, so no channel binding is
needed), for the cost of an encrypted link at the mux.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import sys

HEADER = struct.Struct("!BBHII")
HELLO, CHALLENGE, AUTH, READY, LINKCLOSE, PING, PONG = range(1, 8)
OPEN, DATA, CLOSE, WINDOW = 0x10, 0x11, 0x12, 0x13
WINDOW_SIZE = 65536
MAX_PAYLOAD = 65536


def frame(ftype: int, sid: int = 0, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, 0, 0, sid, len(payload)) + payload


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.t = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.t.write(data)


class LinkPeer(asyncio.Protocol):
    links = 0

    def connection_made(self, transport) -> None:
        self.t = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.stage = HELLO
        self.credit: dict[int, int] = {}
        self.pending: dict[int, bytearray] = {}

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        at = 0
        n = len(buf)
        unpack = HEADER.unpack_from
        credit = self.credit
        while n - at >= 12:
            ftype, _, _, sid, length = unpack(buf, at)
            if n - at - 12 < length:
                break
            payload = bytes(buf[at + 12:at + 12 + length])
            at += 12 + length
            if ftype == DATA:
                out.append(HEADER.pack(WINDOW, 0, 0, sid, 4) + struct.pack("!I", length))
                c = credit.get(sid)
                if c is None:
                    continue
                if c >= length and sid not in self.pending:
                    credit[sid] = c - length
                    out.append(HEADER.pack(DATA, 0, 0, sid, length) + payload)
                else:
                    self.pending.setdefault(sid, bytearray()).extend(payload)
                    self._pump(sid, out)
            elif ftype == OPEN:
                credit[sid] = WINDOW_SIZE
            elif ftype == WINDOW:
                if sid in credit:
                    credit[sid] += struct.unpack("!I", payload)[0]
                    self._pump(sid, out)
            elif ftype == CLOSE:
                credit.pop(sid, None)
                self.pending.pop(sid, None)
            elif ftype == PING:
                out.append(frame(PONG, 0, payload))
            elif ftype == HELLO:
                out.append(frame(CHALLENGE, 0, struct.pack("!HB", 2, 0) + os.urandom(32)))
            elif ftype == AUTH:
                out.append(frame(READY, 0, struct.pack("!I", WINDOW_SIZE)))
                LinkPeer.links += 1
                print(f"LINK {LinkPeer.links}", flush=True)
            elif ftype == LINKCLOSE:
                self.t.close()
                return
        del buf[:at]
        if out:
            self.t.write(b"".join(out))

    def _pump(self, sid: int, out: list) -> None:
        pending = self.pending.get(sid)
        if not pending:
            return
        n = min(self.credit.get(sid, 0), len(pending))
        for at in range(0, n, MAX_PAYLOAD):
            out.append(frame(DATA, sid, bytes(pending[at:min(at + MAX_PAYLOAD, n)])))
        del pending[:n]
        self.credit[sid] -= n
        if not pending:
            del self.pending[sid]


async def serve(kind: str, port: int, tls: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    proto = Echo if kind == "echo" else LinkPeer
    context = None
    if tls:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(tls)
    server = await loop.create_server(proto, "127.0.0.1", port, backlog=4096, reuse_address=True,
                                      ssl=context)
    print("LISTENING", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["echo", "linkpeer"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", help="PEM file with certificate and key: serve over TLS 1.3")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.kind, args.port, args.tls))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
