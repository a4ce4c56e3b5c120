"""Messages sent and delivered while client connections are cut (issue 14, item 3a).

    python bench/faults.py                       # 1,000 users, both modes, 4 cuts x 60 s
    python bench/faults.py --users 100 --seconds 20 --modes sm     # a small run

Theory of operation
-------------------
One run per *mode*: ``sm`` (every client enables XEP-0198 with resumption)
and ``plain`` (no stream management). Each mode gets a fresh system:

* **the server**: ``python -m iim.server`` on 127.0.0.1, STARTTLS offered
  (the dev-setup keystore), a multiplexor-link listener, every limit at its
  default, ``sm_resume_timeout`` 300 s (the default);
* **the multiplexor**: ``python -m iim.mux --instances 2`` (two worker
  processes, two relay threads each), limits at their defaults;
* **a proxy** in this process, between the clients and the multiplexor: it
  relays bytes and can *black-hole* one connection (stop reading and
  writing both ways, send nothing, close nothing), which is how a half-open
  connection looks from the multiplexor and the server. Its upstream
  connections come from 250 loopback addresses 127.1.0.1-127.1.0.250 in
  turn, so that the per-source limits of the mux and the server (defaults,
  unchanged) see many sources, as they would in production;
* **the users**: ``--users`` slixmpp clients (an independent XMPP library,
  with its own XEP-0198 plugin ``xep_0198`` in mode ``sm``), STARTTLS, SCRAM,
  resource ``r``, initial presence. Each online user sends a chat message to
  a random other user (bare JID) ``--rate`` times a second on average. A
  message's id is ``sender:seq`` and its body ``sender/seq``. A user whose
  connection is gone reconnects after 0.3-1.5 s; with SM, slixmpp resumes
  (``<resume previd h/>``) and sends again what the server had not
  acknowledged. Reconnections back off (0.3-1.5 s, then twice as long each
  time until a session is up again, at most 30-150 s), so that 1,000 clients
  cut at once do not all negotiate at once, as real clients do. When the
  server refuses the resumption (after its restart), slixmpp binds afresh
  and drops its unacknowledged queue; the bench then sends those messages
  again itself, with the same ids, as a careful client does (XEP-0198 §5
  leaves it to the client).

Phases, in order, each ``--seconds`` of traffic and cuts and then a *settle*
(no cuts, no new messages, until every user is online, every delivery has
arrived and, with SM, every message is acknowledged, at most ``--settle``
seconds; the SM clients are asked for and ask for an ``<a/>`` then):

* ``rst``: ``--cut-rate`` times a second a random online user's socket is
  closed with SO_LINGER 0 (a RST); the proxy passes the RST on upstream;
* ``half-open``: as often, a random online user's connection is
  black-holed at the proxy; the client gives up on it ``--detect`` seconds
  later (as a client whose ``<r/>`` or ping went unanswered would; slixmpp
  has no such timer, so the bench plays it) and reconnects, while the
  multiplexor and the server still hold the old connection, open and silent;
* ``mux-kill``: every ``--kill-every`` seconds, one multiplexor worker
  process gets SIGKILL (the supervisor starts another; every client of that
  worker is cut);
* ``server-kill``: once, a third into the phase, the server gets SIGKILL
  and is started again at once on the same database (every client is cut;
  the multiplexor's links come back by themselves).

Counting is by message id. *sent*: handed to slixmpp while the sender was
online (a message the bench sends again counts once); *acked*: the server's
``<a h/>`` covered it (slixmpp's ``stanza_acked``; SM only); *delivered*: the
recipient got it at least once, online or from offline storage after a
login; *duplicates*: copies beyond the first; *bounced*: came back to its
sender as an error. **lost** is acked and never delivered (SM), or sent and
never delivered (plain, where nothing is acknowledged); *unacked lost* (SM)
is sent, never acknowledged and never delivered. A message is counted in
the phase in which it was first sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import slixmpp                                         # noqa: E402

from attacks import _die_with_parent, cpu_seconds, rss_kb, stop_process   # noqa: E402
from load import _revision, free_port, same_iim_env   # noqa: E402
from iim.limits import raise_nofile                    # noqa: E402
from iim.server.storage import Storage                 # noqa: E402

DOMAIN = "localhost"
SOURCES = [f"127.1.0.{i}" for i in range(1, 251)]
PHASES = ("rst", "half-open", "mux-kill", "server-kill")


def password_of(i: int) -> str:
    return f"faultpw{i}"


# ---------------------------------------------------------------------------
# The server and the multiplexor


class System:
    """The server and the multiplexor of one mode, in ``folder``."""

    def __init__(self, folder: Path, args) -> None:
        self.folder, self.args = folder, args
        self.port, self.link_port, self.mux_port = free_port(), free_port(), free_port()
        self.server: subprocess.Popen | None = None
        self.mux: subprocess.Popen | None = None
        self.starts = 0
        (folder / "iim.conf").write_text("\n".join([
            f'iim_server.domainname = "{DOMAIN}"',
            f'iim_server.port = "127.0.0.1:{self.port}"',
            'iim_server.usemuxport = "true"',
            'iim_server.database = "iim.db"',
            'iim_server.sslkeystore = "dev/server-keystore.p12"',
            'iim_server.keystorepasswordfile = "dev/sslpassword.conf"',
            f'iim_server.sm_resume_timeout = "{args.resume_timeout}"',
            'iim.log.iim_server.url = "server.log"',
            'iim.log.iim_server.severity = "INFO"',
            f'iim_mux.listenport = "127.0.0.1:{self.mux_port}"',
            f'iim_mux.serverport = "127.0.0.1:{self.link_port}"',
            'iim_mux.maxthreads = "2"',
            'iim.log.iim_mux.url = "mux.log"',
            'iim.log.iim_mux.severity = "INFO"']) + "\n")

    def setup(self, users: int) -> Path:
        subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                        str(self.folder / "dev")], check=True, capture_output=True,
                       timeout=120, cwd=self.folder, env=same_iim_env())
        with Storage.open(self.folder / "iim.db") as storage:
            for i in range(users):
                storage.add_user(f"u{i}", password_of(i))
        return self.folder / "dev" / "ca.pem"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.folder / f"{name}.stderr", "ab") as err:
            return subprocess.Popen([sys.executable, "-m", *argv, "-c",
                                     str(self.folder / "iim.conf")],
                                    stdout=subprocess.DEVNULL, stderr=err, cwd=self.folder,
                                    env=same_iim_env(), start_new_session=True,
                                    preexec_fn=_die_with_parent)

    def start_server(self) -> float:
        """Start (or restart) the server; seconds until it logged 'serving'."""
        began = time.monotonic()
        seen = self.log("server.log").count(" serving")
        self.server = self._spawn("server", ["iim.server"])
        self.starts += 1
        while time.monotonic() - began < 60:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited at startup: {self.tail('server.stderr')}")
            if self.log("server.log").count(" serving") > seen:
                return time.monotonic() - began
            time.sleep(0.05)
        raise RuntimeError("server did not start in 60 s")

    def start_mux(self) -> None:
        self.mux = self._spawn("mux", ["iim.mux", "--instances", "2"])
        deadline = time.monotonic() + 60
        while self.log("mux.log").count(" up to 127.0.0.1:") < 4:
            if self.mux.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mux links not up: {self.tail('mux.log')}")
            time.sleep(0.05)

    def kill_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(10)

    def workers(self) -> list[int]:
        pid = self.mux.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return []
        found = []
        for child in map(int, children):
            try:
                if b"--worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except FileNotFoundError:
                pass
        return found

    def processes(self) -> dict[str, list[int]]:
        return {"server": [self.server.pid] if self.server else [],
                "mux": ([self.mux.pid] + self.workers()) if self.mux else []}

    def log(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str) -> str:
        return self.log(name).strip()[-1500:]

    def stop(self) -> dict[str, int | None]:
        return {"mux": stop_process(self.mux), "server": stop_process(self.server)}


# ---------------------------------------------------------------------------
# The proxy between clients and multiplexor


class Pipe:
    """One client connection through the proxy: ``down`` to the client, ``up``
    to the multiplexor."""

    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.down: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.black = False
        self.key: int | None = None

    async def connect_up(self) -> None:
        loop = asyncio.get_running_loop()
        source = self.proxy.next_source()
        try:
            await loop.create_connection(lambda: _Up(self), "127.0.0.1", self.proxy.port,
                                         local_addr=(source, 0))
        except OSError:
            self.proxy.refused += 1
            if self.down is not None:
                self.down.close()
            return
        if self.down.is_closing():
            self.up.close()
        else:
            self.down.resume_reading()

    def blackhole(self) -> None:
        """From now on nothing is read or written either way, nothing is closed."""
        self.black = True
        for transport in (self.down, self.up):
            if transport is not None and not transport.is_closing():
                transport.pause_reading()

    def down_lost(self, exc) -> None:
        self.proxy.pipes.pop(self.key, None)
        if self.black or self.up is None:       # half-open: the server's side stays open
            return
        if isinstance(exc, ConnectionResetError):
            reset(self.up)
        else:
            self.up.close()

    def up_lost(self, exc) -> None:
        if self.down is None or self.down.is_closing():
            return
        if isinstance(exc, ConnectionResetError):
            reset(self.down)
        else:
            self.down.close()


def reset(transport: asyncio.Transport) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _Down(asyncio.Protocol):
    def __init__(self, proxy: "Proxy") -> None:
        self.pipe = Pipe(proxy)

    def connection_made(self, transport) -> None:
        self.pipe.down = transport
        self.pipe.key = transport.get_extra_info("peername")[1]
        self.pipe.proxy.pipes[self.pipe.key] = self.pipe
        transport.pause_reading()               # until the upstream connection is made
        asyncio.ensure_future(self.pipe.connect_up())

    def data_received(self, data: bytes) -> None:
        if not self.pipe.black and self.pipe.up is not None:
            self.pipe.up.write(data)

    def connection_lost(self, exc) -> None:
        self.pipe.down_lost(exc)


class _Up(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport) -> None:
        self.pipe.up = transport

    def data_received(self, data: bytes) -> None:
        if not self.pipe.black and not self.pipe.down.is_closing():
            self.pipe.down.write(data)

    def connection_lost(self, exc) -> None:
        self.pipe.up_lost(exc)


class Proxy:
    def __init__(self, mux_port: int) -> None:
        self.port = mux_port
        self.pipes: dict[int, Pipe] = {}        # by the client's own port
        self._turn = 0
        self.refused = 0
        self.server: asyncio.AbstractServer | None = None
        self.listen_port = 0

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _Down(self), "127.0.0.1", 0, backlog=4096)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    def next_source(self) -> str:
        self._turn += 1
        return SOURCES[self._turn % len(SOURCES)]

    def close(self) -> None:
        self.server.close()
        for pipe in list(self.pipes.values()):
            for transport in (pipe.down, pipe.up):
                if transport is not None:
                    transport.abort()


# ---------------------------------------------------------------------------
# The users (slixmpp) and the ledger


@dataclass
class Ledger:
    """Every message by id: the phase it was first sent in, acked, deliveries."""

    phase_of: dict[str, str] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    copies: Counter = field(default_factory=Counter)
    bounced: set[str] = field(default_factory=set)
    resent: int = 0

    def sent(self, ident: str, phase: str) -> None:
        self.phase_of.setdefault(ident, phase)

    def table(self, phase: str, sm: bool) -> dict:
        ids = [i for i, p in self.phase_of.items() if p == phase]
        delivered = [i for i in ids if self.copies[i]]
        acked = [i for i in ids if i in self.acked]
        undelivered = {i for i in ids if not self.copies[i]}
        return {"sent": len(ids), "acked": len(acked) if sm else None,
                "delivered": len(delivered),
                "duplicates": sum(self.copies[i] - 1 for i in delivered),
                "bounced": sum(1 for i in ids if i in self.bounced),
                "lost": len([i for i in undelivered if i in self.acked]) if sm
                else len(undelivered),
                "unacked_lost": len([i for i in undelivered if i not in self.acked])
                if sm else None,
                "lost_ids": sorted(undelivered)[:20]}


class User(slixmpp.ClientXMPP):
    def __init__(self, bench: "Bench", index: int) -> None:
        # one shared context: slixmpp's own default one reads the system's CA store
        # for every client (0.1 s each)
        super().__init__(f"u{index}@{DOMAIN}/r", password_of(index),
                         ssl_context=bench.ssl_context)
        self.bench, self.index, self.name = bench, index, f"u{index}"
        self.enable_plaintext = False
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.whitespace_keepalive = False
        self.online = False
        self.seq = 0
        self.pending: dict[str, str] = {}         # sent, not acked: id -> recipient
        self.reconnecting = False
        self.failures = 0                         # reconnections since the last session
        self.logins = 0
        if bench.sm:
            self.register_plugin("xep_0198")
            self.add_event_handler("stanza_acked", self._acked)
            self.add_event_handler("session_resumed", self._resumed)
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("disconnected", self._disconnected)
        self.add_event_handler("message", self._message)

    def go(self) -> None:
        self.connect("127.0.0.1", self.bench.proxy.listen_port)

    def _start(self, _event) -> None:
        self.logins += 1
        self.failures = 0
        self.send_presence()
        self.online = True
        self.bench.stats["logins"] += 1
        if self.bench.sm and self.pending:      # a resumption refused: send them again
            for ident, to in list(self.pending.items()):
                self._send(ident, to)
                self.bench.ledger.resent += 1

    def _resumed(self, _event) -> None:
        self.online = True
        self.failures = 0
        self.bench.stats["resumed"] += 1

    def _disconnected(self, _event) -> None:
        self.online = False
        if self.bench.stopping or self.reconnecting:
            return
        self.reconnecting = True
        delay = min(30.0, 0.3 * 2 ** self.failures) * random.uniform(1, 5)
        self.failures += 1
        asyncio.get_running_loop().call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        self.reconnecting = False
        if not self.bench.stopping and self.transport is None:
            self.go()

    def _acked(self, stanza) -> None:
        if stanza.name == "message":
            ident = stanza["id"]
            self.bench.ledger.acked.add(ident)
            self.pending.pop(ident, None)

    def _message(self, msg) -> None:
        ident = msg["id"]
        if msg["type"] == "error":
            self.bench.ledger.bounced.add(ident)
            return
        body = msg["body"]
        if body.startswith("u") and "/" in body:
            self.bench.ledger.copies[body.replace("/", ":", 1)] += 1

    def chat(self, to: int) -> None:
        self.seq += 1
        ident = f"{self.name}:{self.seq}"
        self.bench.ledger.sent(ident, self.bench.phase)
        if self.bench.sm:
            self.pending[ident] = f"u{to}@{DOMAIN}"
        self._send(ident, f"u{to}@{DOMAIN}")

    def _send(self, ident: str, to: str) -> None:
        msg = self.make_message(mto=to, mbody=ident.replace(":", "/", 1), mtype="chat")
        msg["id"] = ident
        msg.send()

    # -- the cuts ---------------------------------------------------------------------

    def pipe(self) -> Pipe | None:
        if self.transport is None:
            return None
        sockname = self.transport.get_extra_info("sockname")
        return self.bench.proxy.pipes.get(sockname[1]) if sockname else None

    def cut_rst(self) -> bool:
        if self.transport is None:
            return False
        reset(self.transport)
        return True

    def cut_half_open(self, detect: float) -> bool:
        pipe = self.pipe()
        if pipe is None:
            return False
        pipe.blackhole()
        transport = self.transport

        def give_up() -> None:
            if self.transport is transport:
                transport.abort()
        asyncio.get_running_loop().call_later(detect, give_up)
        return True


# ---------------------------------------------------------------------------
# The bench: one mode


class Bench:
    def __init__(self, args, mode: str, folder: Path) -> None:
        self.args, self.mode, self.sm = args, mode, mode == "sm"
        self.folder = folder
        self.system = System(folder, args)
        self.proxy: Proxy | None = None
        self.cafile: Path | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.users: list[User] = []
        self.ledger = Ledger()
        self.phase = "login"
        self.stopping = False
        self.sending = False
        self.stats: Counter = Counter()
        self.cuts: Counter = Counter()
        self.samples: list[dict] = []
        self.results: dict = {"mode": mode, "phases": {}}

    def online(self) -> int:
        return sum(1 for u in self.users if u.online)

    def progress(self, note: str = "") -> None:
        ledger = self.ledger
        delivered = sum(1 for c in ledger.copies.values() if c)
        print(f"  [{time.strftime('%H:%M:%S')}] {self.mode:5} {self.phase:11} "
              f"online {self.online():5}/{len(self.users)}  sent {len(ledger.phase_of):7}  "
              f"acked {len(ledger.acked):7}  delivered {delivered:7}  "
              f"cuts {sum(self.cuts.values()):5}  load {os.getloadavg()[0]:.1f}  {note}",
              flush=True)

    async def run(self) -> dict:
        args = self.args
        self.cafile = await asyncio.to_thread(self.system.setup, args.users)
        self.results["server_start_s"] = await asyncio.to_thread(self.system.start_server)
        await asyncio.to_thread(self.system.start_mux)
        self.proxy = Proxy(self.system.mux_port)
        await self.proxy.start()
        self.ssl_context = ssl.create_default_context(cafile=str(self.cafile))
        self.users = [User(self, i) for i in range(args.users)]
        began = time.monotonic()
        for n, user in enumerate(self.users):
            user.go()
            if n % 10 == 9:
                await asyncio.sleep(10 / args.login_rate)
        await self.wait_all_online(180, "logging in")
        self.results["login_s"] = round(time.monotonic() - began, 1)
        self.progress(f"all logged in, {self.results['login_s']} s")
        sender = asyncio.ensure_future(self.send_loop())
        try:
            for phase in args.phases:
                await self.run_phase(phase)
        finally:
            sender.cancel()
            self.stopping = True
        self.results["totals"] = dict(self.stats) | {"resent_by_bench": self.ledger.resent,
                                                     "proxy_upstream_refused": self.proxy.refused}
        for user in self.users:
            if user.transport is not None:
                user.transport.abort()
        self.proxy.close()
        self.results["exit"] = await asyncio.to_thread(self.system.stop)
        log = self.system.log("server.log")
        self.results["server_log"] = {
            "resumed": log.count(" resumed ("), "kept for resumption": log.count("for resumption"),
            "not resumed": log.count(" not resumed within"),
            "resumption refused": log.count("resumption refused"),
            "warnings": [line for line in log.splitlines()
                         if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ",
                                                    "Traceback"))][:20]}
        return self.results

    async def wait_all_online(self, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        last = 0.0
        while self.online() < len(self.users):
            if time.monotonic() > deadline:
                return False
            if time.monotonic() - last > 5:
                self.progress(what)
                last = time.monotonic()
            await asyncio.sleep(0.2)
        return True

    async def send_loop(self) -> None:
        tick = 0.1
        per_tick = self.args.rate * len(self.users) * tick
        carry = 0.0
        while True:
            await asyncio.sleep(tick)
            if not self.sending:
                continue
            carry += per_tick
            online = [u for u in self.users if u.online]
            while carry >= 1 and online:
                carry -= 1
                sender = random.choice(online)
                to = random.randrange(len(self.users) - 1)
                sender.chat(to if to < sender.index else to + 1)

    async def run_phase(self, phase: str) -> None:
        args = self.args
        self.phase = phase
        self.cuts = Counter()
        usage = Usage(self.system)
        self.sending = True
        began = time.monotonic()
        next_progress = began + 5
        next_kill = began + (args.seconds / 3 if phase == "server-kill" else args.kill_every / 2)
        killed_server = False
        while time.monotonic() - began < args.seconds:
            await asyncio.sleep(1 / args.cut_rate if phase in ("rst", "half-open") else 0.2)
            usage.sample()
            now = time.monotonic()
            if phase in ("rst", "half-open"):
                online = [u for u in self.users if u.online]
                if online:
                    user = random.choice(online)
                    done = user.cut_rst() if phase == "rst" else user.cut_half_open(args.detect)
                    self.cuts[phase] += done
            elif phase == "mux-kill" and now >= next_kill:
                workers = self.system.workers()
                if workers:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    self.cuts["worker SIGKILL"] += 1
                next_kill = now + args.kill_every
            elif phase == "server-kill" and now >= next_kill and not killed_server:
                killed_server = True
                self.system.kill_server()
                self.cuts["server SIGKILL"] += 1
                self.results.setdefault("restart_s", []).append(
                    round(await asyncio.to_thread(self.system.start_server), 2))
            if now >= next_progress:
                self.progress()
                next_progress = now + 5
        self.sending = False
        settle = await self.settle(usage)
        row = self.ledger.table(phase, self.sm)
        row.update(cuts=dict(self.cuts), settle_s=settle, usage=usage.done(),
                   logins=self.stats["logins"], resumed=self.stats["resumed"])
        self.results["phases"][phase] = row
        self.progress(f"settled in {settle} s: lost {row['lost']}, dup {row['duplicates']}")

    async def settle(self, usage: Usage) -> float:
        """Until every user is online, nothing new arrives for 3 s and (SM)
        every message is acknowledged; at most --settle seconds."""
        began = time.monotonic()
        deadline = began + self.args.settle
        await self.wait_all_online(self.args.settle, "settling: reconnecting")
        last_change, last_seen = time.monotonic(), None
        while time.monotonic() < deadline:
            if self.sm:
                for user in self.users:
                    if user.online and user.pending and user.transport is not None:
                        user.plugin["xep_0198"].request_ack()
            seen = (sum(self.ledger.copies.values()), len(self.ledger.acked), self.online())
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            unacked = sum(len(u.pending) for u in self.users)
            if time.monotonic() - last_change >= 3 and unacked == 0 \
                    and self.online() == len(self.users):
                break
            if time.monotonic() - last_change >= 10:
                break                           # nothing moves any more
            usage.sample()
            await asyncio.sleep(1)
        return round(time.monotonic() - began, 1)


class Usage:
    """CPU seconds and RSS of the server and the mux over a phase. ``sample``
    is called often, so that a process killed meanwhile keeps its CPU time."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.began = time.monotonic()
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.sample()

    def sample(self) -> None:
        for name, pids in self.system.processes().items():
            for pid in pids:
                try:
                    cpu = cpu_seconds(pid)
                except (FileNotFoundError, ProcessLookupError):
                    continue
                self.first.setdefault(pid, cpu if time.monotonic() - self.began < 1 else 0.0)
                self.last[pid] = (name, cpu)

    def done(self) -> dict:
        self.sample()
        cpu: Counter = Counter()
        for pid, (name, value) in self.last.items():
            cpu[name] += value - self.first.get(pid, 0.0)
        rss = {}
        for name, pids in self.system.processes().items():
            total = 0
            for pid in pids:
                try:
                    total += rss_kb(pid)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            rss[name] = round(total / 1024, 1)
        return {"wall_s": round(time.monotonic() - self.began, 1),
                "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
                "rss_mb": rss, "load1": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------------------
# The table


def table(runs: list[dict]) -> str:
    lines = ["| mode | cut | cuts | sent | acked | delivered | **lost** | unacked lost | "
             "duplicates | bounced | settle s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for phase, row in run["phases"].items():
            cuts = sum(row["cuts"].values())
            acked = "-" if row["acked"] is None else row["acked"]
            unacked = "-" if row["unacked_lost"] is None else row["unacked_lost"]
            lines.append(f"| {run['mode']} | {phase} | {cuts} | {row['sent']} | {acked} | "
                         f"{row['delivered']} | **{row['lost']}** | {unacked} | "
                         f"{row['duplicates']} | {row['bounced']} | {row['settle_s']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.1,
                   help="messages per second per online user (default 0.1)")
    p.add_argument("--seconds", type=float, default=60, help="traffic and cuts per phase")
    p.add_argument("--settle", type=float, default=180, help="most seconds of settling")
    p.add_argument("--cut-rate", type=float, default=2.0,
                   help="rst / half-open cuts per second (default 2)")
    p.add_argument("--detect", type=float, default=10.0,
                   help="seconds a client takes to give up on a black-holed connection")
    p.add_argument("--kill-every", type=float, default=20.0,
                   help="seconds between mux worker SIGKILLs in phase mux-kill")
    p.add_argument("--login-rate", type=float, default=100.0, help="logins started per second")
    p.add_argument("--resume-timeout", type=int, default=300)
    p.add_argument("--modes", default="sm,plain")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--json", type=Path, help="write every number here too")
    p.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.phases = [m for m in args.phases.split(",") if m]
    for phase in args.phases:
        if phase not in PHASES:
            p.error(f"--phases: {phase!r} is none of {', '.join(PHASES)}")
    for mode in args.modes:
        if mode not in ("sm", "plain"):
            p.error(f"--modes: {mode!r} is neither sm nor plain")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    raise_nofile()
    logging.basicConfig(level=logging.CRITICAL)         # slixmpp's own log lines: off
    top = Path(tempfile.mkdtemp(prefix="iim-faults-"))
    print(f"faults: {args.users} users, {args.rate} msg/s each, phases {', '.join(args.phases)}"
          f" x {args.seconds:.0f} s, modes {', '.join(args.modes)}; folder {top}", flush=True)
    print(f"  iim {_revision()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs = []
    for mode in args.modes:
        folder = top / mode
        folder.mkdir()
        bench = Bench(args, mode, folder)
        try:
            runs.append(asyncio.run(bench.run()))
        finally:
            bench.system.stop()
    text = table(runs)
    print("\n" + text)
    for run in runs:
        print(f"\n{run['mode']}: logins {run['totals'].get('logins')}, resumed "
              f"{run['totals'].get('resumed', 0)}, resent by the bench "
              f"{run['totals']['resent_by_bench']}, server log {run['server_log']}, "
              f"exit {run['exit']}")
        for phase, row in run["phases"].items():
            print(f"  {phase}: cuts {row['cuts']} usage {row['usage']}"
                  + (f" lost ids {row['lost_ids']}" if row["lost"] else ""))
    (top / "results.md").write_text(text + "\n")
    (top / "results.json").write_text(json.dumps({"args": vars(args) | {"json": None},
                                                  "runs": runs}, indent=1, default=str))
    if args.json:
        args.json.write_text((top / "results.json").read_text())
    print(f"\nresults: {top / 'results.md'}, {top / 'results.json'}")
    if not args.keep:
        for mode in args.modes:
            shutil.rmtree(top / mode, ignore_errors=True)
        print("(logs and databases removed; --keep keeps them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
