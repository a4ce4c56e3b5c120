"""Load generator for bench/mux_side_by_side.py (a relay in front of an echo backend).

    python bench/mux_loadgen.py rr   --port P --sessions 1000 --seconds 10 [--tls] [--procs 2]
    python bench/mux_loadgen.py conn --port P --concurrency 64 --seconds 5 [--tls] [--procs 2]
    python bench/mux_loadgen.py idle --port P --sessions 1000 [--tls]

rr:   N connections (TLS handshaken first with --tls), all open before the clock
      starts; each then does request/response round trips of --size bytes
      (default 200, XMPP-like) back to back for --seconds. Prints round trips/s
      and latency p50/p99 (1 % log buckets, merged across processes).
conn: --concurrency loops, each: connect [+ full TLS handshake, no resumption],
      one round trip, close; prints completed connections/s (= handshakes/s with --tls).
idle: opens N connections, one round trip each so the session is set up end to
      end, prints "READY n" and keeps them open until stdin closes.

Each mode splits its work over --procs worker processes (asyncio, one loop each)
and prints one JSON line. The client TLS context verifies nothing (CERT_NONE)
to keep client CPU low; ALPN offers xmpp-client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import ssl
import subprocess
import sys
import time

BUCKET = math.log(1.01)


def bucket(us: float) -> int:
    return int(math.log(max(us, 1.0)) / BUCKET)


def percentile(hist: dict[int, int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    want = q * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= want:
            return math.exp((b + 0.5) * BUCKET)
    return float("nan")


def client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["xmpp-client"])
    return ctx


class Echoer(asyncio.Protocol):
    """One client connection doing round trips of `size` bytes."""

    def __init__(self, size: int, hist: dict, state: dict) -> None:
        self.msg = (b"<message to='u@example.com' type='chat'><body>"
                    + b"x" * size)[:size - 10] + b"</message>"
        self.size = size
        self.hist = hist
        self.state = state
        self.got = 0
        self.sent = 0.0
        self.waiter: asyncio.Future | None = None
        self.loop_rr = False
        self.count = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.t = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.t.write(self.msg)

    def once(self) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.send()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= self.size:
            self.got -= self.size
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
            if self.loop_rr and self.state["running"]:
                now = time.perf_counter()
                if self.state["measuring"]:
                    b = bucket((now - self.sent) * 1e6)
                    self.hist[b] = self.hist.get(b, 0) + 1
                    self.count += 1
                self.send()

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))
        if not self.lost.done():
            self.lost.set_result(None)
        if self.state.get("running") and self.loop_rr:
            self.state["lost"] = self.state.get("lost", 0) + 1


async def open_one(args, hist, state, ctx) -> Echoer:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: Echoer(args.size, hist, state), args.host, args.port,
        ssl=ctx, server_hostname="localhost" if ctx else None)
    await asyncio.wait_for(proto.once(), 30)
    return proto


async def open_many(args, n, hist, state, ctx) -> list[Echoer]:
    sem = asyncio.Semaphore(100)

    async def one():
        async with sem:
            return await open_one(args, hist, state, ctx)
    return await asyncio.gather(*(one() for _ in range(n)))


async def w_rr(args) -> dict:
    ctx = client_ctx() if args.tls else None
    hist: dict[int, int] = {}
    state = {"running": True, "measuring": False}
    conns = await open_many(args, args.sessions, hist, state, ctx)
    for c in conns:
        c.loop_rr = True
        c.send()
    await asyncio.sleep(min(1.0, args.seconds / 5))        # warm-up, not counted
    state["measuring"] = True
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.sleep(args.seconds)
    state["measuring"] = False
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    state["running"] = False
    for c in conns:
        c.t.close()
    await asyncio.sleep(0.2)
    return {"count": sum(c.count for c in conns), "wall": wall, "cpu": cpu,
            "hist": hist, "lost": state.get("lost", 0)}


async def w_conn(args) -> dict:
    ctx = client_ctx() if args.tls else None
    hist: dict[int, int] = {}
    state = {"running": True, "measuring": True}
    done = 0
    errors = 0
    deadline = time.perf_counter() + args.seconds

    async def loop_one():
        nonlocal done, errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                proto = await open_one(args, hist, state, ctx)
                proto.t.close()
                await asyncio.wait_for(proto.lost, 10)
            except (OSError, asyncio.TimeoutError, ConnectionError, ssl.SSLError):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            done += 1
            b = bucket((time.perf_counter() - t) * 1e6)
            hist[b] = hist.get(b, 0) + 1

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(loop_one() for _ in range(args.concurrency)))
    return {"count": done, "errors": errors, "wall": time.perf_counter() - t0,
            "cpu": time.process_time() - cpu0, "hist": hist}


async def w_idle(args) -> dict:
    ctx = client_ctx() if args.tls else None
    conns = await open_many(args, args.sessions, {}, {"running": False}, ctx)
    print(f"READY {len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for c in conns:
        c.t.close()
    await asyncio.sleep(0.2)
    return {"count": len(conns)}


def split(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["rr", "conn", "idle"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker or args.mode == "idle":
        fn = {"rr": w_rr, "conn": w_conn, "idle": w_idle}[args.mode]
        result = asyncio.run(fn(args))
        print(json.dumps(result), flush=True)
        return 0
    procs = []
    for i in range(args.procs):
        sub = ["--sessions", str(split(args.sessions, args.procs, i)),
               "--concurrency", str(split(args.concurrency, args.procs, i))]
        cmd = [sys.executable, __file__, args.mode, "--worker", "--host", args.host,
               "--port", str(args.port), "--seconds", str(args.seconds),
               "--size", str(args.size)] + sub + (["--tls"] if args.tls else [])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                      ))
    results = []
    for pr in procs:
        out, _ = pr.communicate()
        line = [ln for ln in out.splitlines() if ln.startswith("{")]
        if pr.returncode or not line:
            print(json.dumps({"error": f"worker exit {pr.returncode}"}), flush=True)
            return 1
        results.append(json.loads(line[-1]))
    hist: dict[int, int] = {}
    for r in results:
        for k, v in r.get("hist", {}).items():
            hist[int(k)] = hist.get(int(k), 0) + v
    count = sum(r["count"] for r in results)
    wall = max(r.get("wall", 0) for r in results) or 1.0
    out = {"mode": args.mode, "count": count,
           "rate": sum(r["count"] / r["wall"] for r in results if r.get("wall")),
           "p50_us": percentile(hist, 0.50), "p99_us": percentile(hist, 0.99),
           "client_cpu": sum(r.get("cpu", 0) for r in results), "wall": wall,
           "errors": sum(r.get("errors", 0) for r in results),
           "lost": sum(r.get("lost", 0) for r in results)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
