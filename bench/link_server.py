"""Micro-bench of the server end of the mux link (iim.server.muxlink over
iim.linkconnection), in process, CPU time (the machine is shared):

    python bench/link_server.py            # ROOT=/other/checkout to measure another tree

200 sessions; each round the mux sends one 200-byte DATA and a WINDOW per
session, every session echoes 200 bytes back (DATA out) and the link grants
WINDOW. Reports µs per round trip (one DATA in + one DATA out + WINDOWs)."""
import asyncio
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.environ.get("ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import iim.server.muxlink as sm  # noqa: E402
from iim.muxlink import FrameType, Hello, SessionOpen, encode_frame, encode_window  # noqa: E402

class Stub:
    def __init__(self, ctx, carrier, secure_transport=False, loop=None):
        self.carrier = carrier
    def data_received(self, data):
        self.carrier.write(data)
    def close(self, *a): pass
    def connection_lost(self): pass

class Transport:
    def __init__(self): self.n = 0
    def get_extra_info(self, k): return ("127.0.0.1", 40000)
    def write(self, d): self.n += len(d)
    def is_closing(self): return False
    def can_write_eof(self): return True
    def write_eof(self): pass
    def close(self): pass
    def abort(self): pass

class Ctx:
    log = logging.getLogger("bench"); negotiating = (); connections = set(); limit_log = None

async def main(sessions=200, rounds=300, reps=5):
    sm.ClientSession = Stub
    link = sm.MuxLinkProtocol(Ctx(), sm.MuxLinkConfig(open_rate=100000))
    link.connection_made(Transport())
    link.data_received(encode_frame(FrameType.HELLO, 0, Hello(0, 1, bytes(32)).encode()))
    link.data_received(encode_frame(FrameType.AUTH, 0, b""))
    opened = SessionOpen("127.0.0.1", 40000, 5222).encode()
    link.data_received(b"".join(encode_frame(FrameType.OPEN, s, opened) for s in range(1, sessions + 1)))
    payload = b"x" * 200
    batch = b"".join(encode_frame(FrameType.DATA, s, payload) + encode_frame(FrameType.WINDOW, s, encode_window(200))
                     for s in range(1, sessions + 1))
    results = []
    for _ in range(reps):
        t0 = time.process_time()
        for _ in range(rounds):
            link.data_received(batch)
            await asyncio.sleep(0)
        results.append((time.process_time() - t0) / (rounds * sessions) * 1e6)
    print("µs per session round trip:", " ".join(f"{r:.2f}" for r in results),
          "median", f"{statistics.median(results):.2f}", "min", f"{min(results):.2f}")

asyncio.run(main())
