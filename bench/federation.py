"""Federation side by side: iim and Debian's Prosody 0.12, server to server, in one run.

    python bench/federation.py                 # --messages 5000 --rounds 5, about 1 minute

Theory of operation
-------------------
Four XMPP servers run at once on loopback, each for its own domain:

    a.example   iim      127.0.0.1        pa.example  Prosody  127.0.0.3
    b.example   iim      127.0.0.2        pb.example  Prosody  127.0.0.4

and they find each other the way tests/test_federation_prosody.py has them do
it: SRV and A records of a test DNS zone (``tests/prosodylive.TestZone``, in
this process) -- iim through ``iim_server.s2s_nameservers``, Prosody through
libunbound's ``forward``. Every server has a certificate for its domain from
one test CA (iim: a keystore made by the real ``keytool``; Prosody: PEM chain,
key in a memfd) and trusts that CA for peers, so every s2s link is STARTTLS +
SASL EXTERNAL (XEP-0178). Prosody runs without mod_dialback and with
``s2s_secure_auth = true``, so it can authenticate no other way; the run
checks, from the log of each link's receiving server, that EXTERNAL was used.

A *setup* is a sending server and a receiving server:

    iim -> iim          a.example  -> b.example
    Prosody -> Prosody  pa.example -> pb.example   (the anchor)
    iim -> Prosody      a.example  -> pb.example
    Prosody -> iim      pa.example -> b.example
    iim local           a.example  -> a.example    (what federation costs)
    Prosody local       pa.example -> pa.example

Every server has ``--senders`` K users ``s000..`` and K users ``r000..``, all
logged in once, before any measurement, by one Python load generator: the
project's sans-I/O ``ClientStream`` behind a small asyncio adapter (STARTTLS
through ``TLSLayer``, SASL SCRAM-SHA-256 on both servers: Prosody stores
SHA-256 SCRAM keys here with ``password_hash = "SHA-256"``). A warm-up opens
every s2s link (both directions) and sends a burst through each setup.

Then ``--rounds`` rounds; each round runs every setup once, the order rotated
from round to round, so a slow spell of this shared machine hits all setups
alike. One setup in one round is two phases:

1. *ping*: ``--pings`` single messages, one at a time, sender ``s<i>`` on the
   sending server to ``r<i>`` on the receiving server; the receiving client
   answers each at once, and the sender times the round trip (two s2s hops
   and four c2s hops, plus the load generator's own turn-around).
2. *throughput*: ``--messages`` M chat messages (body + XEP-0085 state, ~260
   bytes, to the recipient's full JID) from random senders to random
   receivers, at most ``--window`` in flight. Messages/s = M / (last arrival
   - first send).

Around each phase the CPU seconds of every server process (utime + stime from
``/proc/PID/stat``), of the load generator (``time.process_time``) and of the
whole machine (``/proc/stat``) are read; "other" is the machine's busy time
charged to none of them. The tables give medians over rounds, and the ratio of
each iim setup to its Prosody anchor measured in the same run.

Everything the run starts (four servers, the DNS thread) is stopped on exit,
on an exception, on Ctrl-C and on SIGTERM; the servers run in their own
sessions, so a terminal's Ctrl-C reaches only this script, which then stops
them with SIGTERM. Each phase is bounded by ``--timeout``, the whole run by
``--budget`` (rounds not started by then are skipped, and the report says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))      # pki, keytool, prosodylive, live

import pki                                           # noqa: E402
from keytool import make_store                       # noqa: E402
from load import _revision, machine_busy_seconds, same_iim_env   # noqa: E402
from prosodylive import PROSODY, PROSODYCTL, ProsodyServer, TestZone, ca_pem   # noqa: E402

from benchclient import BODY, BenchUser, source_address   # noqa: E402
from iim.keys.context import client_context          # noqa: E402
from iim.limits import raise_nofile                  # noqa: E402
from iim.server.storage import Storage               # noqa: E402
from iim.xmpp.jid import JID                         # noqa: E402

RESOURCE = "bench"
STOREPASS = "Fed-Bench-Store-7"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------
# What runs


@dataclass(frozen=True)
class Site:
    """One server: its software, domain and loopback address."""

    kind: str           # "iim" or "Prosody"
    domain: str
    host: str


SITES = {
    "a": Site("iim", "a.example", "127.0.0.1"),
    "b": Site("iim", "b.example", "127.0.0.2"),
    "pa": Site("Prosody", "pa.example", "127.0.0.3"),
    "pb": Site("Prosody", "pb.example", "127.0.0.4"),
}


@dataclass(frozen=True)
class Setup:
    key: str            # as given to --setups
    title: str
    sender: str         # a SITES key
    receiver: str
    anchor: str | None  # the key of the Prosody setup it is compared with


SETUPS = [
    Setup("iim-iim", "iim -> iim", "a", "b", "prosody-prosody"),
    Setup("prosody-prosody", "Prosody -> Prosody", "pa", "pb", None),
    Setup("iim-prosody", "iim -> Prosody", "a", "pb", "prosody-prosody"),
    Setup("prosody-iim", "Prosody -> iim", "pa", "b", "prosody-prosody"),
    Setup("iim-local", "iim local", "a", "a", "prosody-local"),
    Setup("prosody-local", "Prosody local", "pa", "pa", None),
]


def user_names(count: int) -> list[tuple[str, str]]:
    """(username, password) of the K senders and K receivers every server has."""
    return [(f"{role}{i:03d}", f"fed-bench-{role}-{i}") for role in ("s", "r")
            for i in range(count)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this script dies, even by SIGKILL."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# ---------------------------------------------------------------------------
# The servers


class ChildServer:
    """What the bench needs of every server it started (``self.proc``)."""

    signalled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        """SIGTERM, once: one arriving after the server's event loop closed would
        kill it with the default action before it exits 0."""
        if self.proc is not None and self.proc.poll() is None and not self.signalled:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM (once) and wait; the exit status, None if never started."""
        try:
            if self.proc is None:
                return None
            self.terminate()
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            self._after_stop()

    def _after_stop(self) -> None:
        """What a server leaves behind besides its process."""


class IimServer(ChildServer):
    """``python -m iim.server`` for one Site, in its own folder, log severity INFO."""

    def __init__(self, site: Site, folder: Path, ca, zone: TestZone, users) -> None:
        self.site, self.folder, self.users = site, folder, dict(users)
        self.port = _free_port(site.host)
        self.c2s = (site.host, self.port)
        self.proc: subprocess.Popen | None = None
        self.signalled = False
        folder.mkdir(parents=True)
        make_store(folder / "server.jks", ca, [site.domain], storepass=STOREPASS)
        password_file = folder / "sslpassword.conf"
        password_file.write_text(f"Internal (Software) Token:{STOREPASS}\n")
        password_file.chmod(0o600)
        (folder / "iim.conf").write_text("\n".join([
            f'iim_server.domainname = "{site.domain}"',
            f'iim_server.port = "{site.host}:{self.port}"',
            'iim_server.usemuxport = "false"',
            'iim_server.sslkeystore = "server.jks"',
            'iim_server.database = "iim.db"',
            f'iim_server.s2s_nameservers = "{zone.address}"',
            'iim.log.iim_server.url = "server.log"',
            'iim.log.iim_server.severity = "INFO"']) + "\n")
        zone.add_xmpp_server(site.domain, f"xmpp.{site.domain}", site.host, self.port)

    def add_users(self) -> None:
        with Storage.open(self.folder / "iim.db") as storage:
            for name, password in self.users.items():
                storage.add_user(name, password)

    def start(self) -> None:
        with open(self.folder / "server.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iim.server", "-c", str(self.folder / "iim.conf")],
                stdout=subprocess.DEVNULL, stderr=err, cwd=self.folder, env=same_iim_env(),
                start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"iim {self.site.domain} exited at startup: "
                                 f"{(self.folder / 'server.stderr').read_text().strip()}")
            if "serving" in self.log():
                return
            time.sleep(0.05)
        raise SystemExit(f"iim {self.site.domain} did not start in time")


    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def problems(self) -> list[str]:
        lines = [line for line in self.log().splitlines()
                 if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))]
        stderr = (self.folder / "server.stderr").read_text(errors="replace").strip()
        return lines + ([f"stderr: {stderr}"] if stderr else [])

    def incoming_auth(self) -> dict[str, str]:
        """Peer domain -> how its stream to us authenticated ("SASL EXTERNAL (TLSv1.3)"),
        from lines such as ``s2s in b.example: b.example authenticated with ...``."""
        return dict(re.findall(r"s2s in [^:]*: (\S+) authenticated with (.+)$", self.log(),
                               re.M))


class ProsodyProcess(ChildServer, ProsodyServer):
    """tests/prosodylive's ProsodyServer, tuned for measuring rather than for debugging:
    log level info (its debug log writes every stanza), no mod_dialback,
    ``s2s_secure_auth``, SCRAM-SHA-256 user keys; started in its own session."""

    def __init__(self, site: Site, folder: Path, ca, cafile: Path, zone: TestZone,
                 users) -> None:
        log = [{"levels": {"min": "info"}, "to": "file", "filename": str(folder / "prosody.log")}]
        super().__init__(folder, ca.issue(site.domain), cafile, zone, domain=site.domain,
                         host=site.host, users=users, options={
                             "log": log, "s2s_secure_auth": True, "password_hash": "SHA-256",
                             "modules_enabled": ["roster", "saslauth", "tls", "disco",
                                                 "posix", "ping"]})
        self.site = site
        self.c2s = (site.host, self.c2s_port)
        self.signalled = False

    def add_users(self) -> None:
        """``prosodyctl register``, a few at a time (each is a Lua process)."""
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda user: self._run_ctl("register", user[0], self.domain, user[1]),
                          self.users.items()))

    def start(self) -> None:
        with (self.folder / "prosody.out").open("wb") as out:
            self.proc = subprocess.Popen([PROSODY, "-F", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         pass_fds=(self._key_fd,), start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"prosody {self.domain} exited at startup: "
                                 f"{self.output().strip()[-500:]}")
            if "Activated service 'c2s'" in self.log() and "Activated service 's2s'" in self.log():
                return
            time.sleep(0.05)
        raise SystemExit(f"prosody {self.domain} did not start in time")


    def _after_stop(self) -> None:
        """The key's memfd is closed whether or not the server ever started."""
        if self._key_fd is not None:
            os.close(self._key_fd)
            self._key_fd = None

    def problems(self) -> list[str]:
        """warn/error lines, less the "Received SIGTERM" of our own stop."""
        return [line for line in re.findall(r"^.*\t(?:warn|error)\t.*$", self.log(), re.M)
                if not line.endswith("Received SIGTERM")]

    def incoming_auth(self) -> dict[str, str]:
        """Peer domain -> "SASL EXTERNAL" for each peer whose EXTERNAL we accepted."""
        return {peer: "SASL EXTERNAL" for peer in
                re.findall(r"Accepting SASL EXTERNAL identity from (\S+)", self.log())}


class Zone(TestZone):
    """The test DNS zone, closable whether or not its thread was ever started."""

    running = False

    def start(self) -> "Zone":
        self.running = True
        return super().start()

    def close(self) -> None:
        if self.running:
            self.stop()
        else:
            self._server.server_close()


def _free_port(host: str) -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prosody_version() -> str:
    """From dpkg, never from ``prosody --version`` (which starts a daemon on Debian)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "prosody"],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------
# The clients


class RunFailed(Exception):
    """A login, a ping or the warm-up failed: the run cannot measure what it set out to."""


@dataclass
class Traffic:
    """Counters of the current phase, fed by every client."""

    expected: int = 0
    received: int = 0
    errors: list = field(default_factory=list)
    sent_at: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    last: float = 0.0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pongs: dict = field(default_factory=dict)           # ping number -> future
    ended: list = field(default_factory=list)

    def reset(self, expected: int) -> None:
        self.expected, self.received, self.errors = expected, 0, []
        self.sent_at, self.latencies = [0.0] * expected, []
        self.done.clear()

    def message(self, stanza: Element) -> None:
        now = time.perf_counter()
        seq = int(stanza.get("id")[1:])
        if 0 <= seq < len(self.sent_at):
            self.latencies.append(now - self.sent_at[seq])
        self.received += 1
        self.last = now
        self._step()

    def error(self, stanza: Element) -> None:
        condition = next((child.tag.rpartition("}")[2] for error in stanza
                          if error.tag.endswith("error") for child in error), "?")
        self.errors.append(f"{stanza.get('id')} from {stanza.get('from')}: {condition}")
        future = self.pongs.pop("q" + stanza.get("id", "")[1:], None)   # a bounced ping
        if future is not None and not future.done():
            future.set_exception(RunFailed(f"ping bounced: {self.errors[-1]}"))
        self._step()

    def _step(self) -> None:
        self.progress.set()
        if self.expected and self.received + len(self.errors) >= self.expected:
            self.done.set()


class User(BenchUser):
    """One logged-in user (bench/benchclient.py) and what it does with the messages
    it gets: count them, answer pings, time pongs."""

    failure = RunFailed

    def __init__(self, jid: JID, password: str, tls_context: ssl.SSLContext,
                 traffic: Traffic) -> None:
        super().__init__(jid, password, tls_context)
        self.traffic = traffic

    def _message(self, stanza: Element) -> None:
        ident = stanza.get("id", "")
        if stanza.get("type") == "error":
            self.traffic.error(stanza)
        elif ident.startswith("m"):
            self.traffic.message(stanza)
        elif ident.startswith("p"):                     # a ping: answer at once
            self.send(stanza.get("from"), "q" + ident[1:], "pong")
        elif ident.startswith("q"):
            future = self.traffic.pongs.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

    def _ended_after_login(self, why: str) -> None:
        self.traffic.ended.append(why)

    def send(self, to: str, ident: str, body: str = BODY) -> None:
        self.send_chat(to, ident, body)


# ---------------------------------------------------------------------------
# Measuring


class Meter:
    """CPU seconds of every server, the load generator and the machine, around a phase."""

    def __init__(self, servers: dict) -> None:
        self.servers = servers

    def snapshot(self) -> dict:
        return {"wall": time.perf_counter(), "client": time.process_time(),
                "busy": machine_busy_seconds(),
                **{key: cpu_seconds(server.pid) for key, server in self.servers.items()}}

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        usage = {key: after[key] - before[key] for key in before}
        charged = usage["client"] + sum(usage[key] for key in before if key in SITES)
        usage["other"] = usage.pop("busy") - charged
        return usage


async def log_in(sites: dict, servers: dict, tls_context, traffic: Traffic,
                 timeout: float) -> dict:
    """Every user of every server, at most 20 logins at a time; (site, name) -> User."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(20)
    users: dict = {}
    numbers = itertools.count()

    async def one(key: str, name: str, password: str) -> None:
        async with gate:
            jid = JID.parse(f"{name}@{sites[key].domain}/{RESOURCE}")
            _, user = await loop.create_connection(
                lambda: User(jid, password, tls_context, traffic), *servers[key].c2s,
                local_addr=source_address(next(numbers)))
            users[key, name] = user
            try:
                await asyncio.wait_for(user.ready, timeout)
            except asyncio.TimeoutError:
                raise RunFailed(f"{jid}: not logged in after {timeout} s") from None

    jobs = [one(key, name, password) for key, server in servers.items()
            for name, password in server.users.items()]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        shown = "; ".join(f"{type(e).__name__}: {e}" for e in failures[:3])
        raise RunFailed(f"{len(failures)} of {len(jobs)} logins failed ({shown})")
    return users


def full_jid(site: Site, name: str) -> str:
    return f"{name}@{site.domain}/{RESOURCE}"


async def pings(setup: Setup, users: dict, traffic: Traffic, count: int, k: int,
                timeout: float) -> list[float]:
    """``count`` round trips, one at a time; seconds each."""
    loop = asyncio.get_running_loop()
    receiver_site = SITES[setup.receiver]
    times = []
    for n in range(count):
        sender = users[setup.sender, f"s{n % k:03d}"]
        pong = loop.create_future()
        traffic.pongs[f"q{n}"] = pong
        start = time.perf_counter()
        sender.send(full_jid(receiver_site, f"r{n % k:03d}"), f"p{n}", "ping")
        try:
            times.append(await asyncio.wait_for(pong, timeout) - start)
        except asyncio.TimeoutError:
            raise RunFailed(f"{setup.title}: ping {n} unanswered after {timeout:.0f} s") from None
    return times


async def burst(setup: Setup, users: dict, traffic: Traffic, args, count: int,
                rng: random.Random) -> tuple[float, bool]:
    """``count`` messages, random senders to random receivers, at most
    ``args.window`` in flight; returns (wall seconds, all accounted for)."""
    k = args.senders
    receiver_site = SITES[setup.receiver]
    plan = [(users[setup.sender, f"s{rng.randrange(k):03d}"],
             full_jid(receiver_site, f"r{rng.randrange(k):03d}")) for _ in range(count)]
    traffic.reset(count)
    start = time.perf_counter()
    deadline = start + args.timeout
    seq = 0
    while seq < count:
        room = args.window - (seq - traffic.received - len(traffic.errors))
        if room <= 0:
            traffic.progress.clear()
            try:
                await asyncio.wait_for(traffic.progress.wait(),
                                       max(0.1, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                return time.perf_counter() - start, False
            continue
        for _ in range(min(room, 100, count - seq)):
            sender, to = plan[seq]
            traffic.sent_at[seq] = time.perf_counter()
            sender.send(to, f"m{seq}")
            seq += 1
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(traffic.done.wait(), max(1.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        return time.perf_counter() - start, False
    return traffic.last - start, True


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered \
        else float("nan")


async def measure_setup(setup: Setup, users: dict, traffic: Traffic, meter: Meter, args,
                        number: int) -> dict:
    """One round of one setup: the ping phase, then the throughput phase."""
    before = meter.snapshot()
    rtts = await pings(setup, users, traffic, args.pings, args.senders, args.timeout)
    ping_usage = Meter.delta(before, meter.snapshot())
    rng = random.Random(args.seed * 1000 + number)     # the same plan for every setup
    before = meter.snapshot()
    wall, complete = await burst(setup, users, traffic, args, args.messages, rng)
    usage = Meter.delta(before, meter.snapshot())
    return {
        "rtt_p50_ms": percentile(rtts, 0.5) * 1000, "rtt_p99_ms": percentile(rtts, 0.99) * 1000,
        "ping_usage": ping_usage,
        "rate": traffic.received / wall, "received": traffic.received,
        "errors": list(traffic.errors), "complete": complete, "wall": wall,
        "load_p50_ms": percentile(traffic.latencies, 0.5) * 1000,
        "load_p99_ms": percentile(traffic.latencies, 0.99) * 1000,
        "usage": usage,
    }


async def warm_up(setups: list[Setup], users: dict, traffic: Traffic, args) -> None:
    """Open every s2s link both ways and push a burst through each setup, unmeasured."""
    for setup in setups:
        await pings(setup, users, traffic, args.senders, args.senders, args.timeout)
        count = min(args.messages, 1000)
        _, complete = await burst(setup, users, traffic, args, count, random.Random(0))
        if not complete or traffic.errors:
            raise RunFailed(f"warm-up of {setup.title}: {traffic.received} of {count} "
                              f"delivered; errors: {traffic.errors[:3]}")


async def run(args, setups: list[Setup], servers: dict, ca_cert) -> dict:
    tls_context = client_context(None, anchors=[ca_cert])
    traffic = Traffic()
    started = time.monotonic()
    users = await log_in({k: SITES[k] for k in servers}, servers, tls_context, traffic,
                         args.timeout)
    print(f"{len(users)} users logged in ({time.monotonic() - started:.1f} s)", flush=True)
    await warm_up(setups, users, traffic, args)
    print(f"warm-up done ({time.monotonic() - started:.1f} s)", flush=True)
    meter = Meter(servers)
    results: dict = {setup.key: [] for setup in setups}
    skipped = 0
    for number in range(args.rounds):
        if number and time.monotonic() - started > args.budget:
            skipped = args.rounds - number
            print(f"budget of {args.budget:.0f} s spent: {skipped} round(s) skipped", flush=True)
            break
        order = setups[number % len(setups):] + setups[:number % len(setups)]
        for setup in order:
            result = await measure_setup(setup, users, traffic, meter, args, number)
            results[setup.key].append(result)
            print(progress_line(number, setup, result), flush=True)
    await log_out(users.values())
    return {"results": results, "skipped_rounds": skipped, "ended": list(traffic.ended),
            "transport": _transport(users)}


def progress_line(number: int, setup: Setup, result: dict) -> str:
    flags = ("" if result["complete"] else "  INCOMPLETE") + \
        (f"  {len(result['errors'])} errors" if result["errors"] else "")
    return (f"  round {number + 1}  {setup.title:<19} {result['rate']:>8,.0f} msg/s  "
            f"ping p50 {result['rtt_p50_ms']:6.2f} ms  p99 {result['rtt_p99_ms']:6.2f} ms"
            f"{flags}  (other CPU {result['usage']['other']:.2f} s)")


def _transport(users: dict) -> str:
    """The TLS versions, ciphers and SASL mechanisms the users' streams ended up with."""
    seen = {f"{u.tls.info().version} {u.tls.info().cipher}, "
            f"{u.stream.mechanism.value if u.stream.mechanism else '?'}"
            if u.tls else "no TLS" for u in users.values()}
    return "; ".join(sorted(seen))


async def log_out(users) -> None:
    users = list(users)
    for user in users:
        user.logout()
    await asyncio.wait([user.gone for user in users], timeout=10)
    for user in users:
        user.hang_up()


# ---------------------------------------------------------------------------
# Report


def med(rounds: list[dict], get) -> float:
    return statistics.median(get(r) for r in rounds)


def summarize(setup: Setup, rounds: list[dict], messages: int, pings: int) -> dict:
    """The medians over rounds that the tables show."""
    sender, receiver = setup.sender, setup.receiver
    s = {
        "rate": med(rounds, lambda r: r["rate"]),
        "rates": [r["rate"] for r in rounds],
        "rtt_p50": med(rounds, lambda r: r["rtt_p50_ms"]),
        "rtt_p99": med(rounds, lambda r: r["rtt_p99_ms"]),
        "load_p50": med(rounds, lambda r: r["load_p50_ms"]),
        "load_p99": med(rounds, lambda r: r["load_p99_ms"]),
        "wall": med(rounds, lambda r: r["usage"]["wall"]),
        "cpu_sender": med(rounds, lambda r: r["usage"][sender]),
        "cpu_receiver": med(rounds, lambda r: r["usage"][receiver]),
        "cpu_client": med(rounds, lambda r: r["usage"]["client"]),
        "cpu_other": med(rounds, lambda r: r["usage"]["other"]),
        "busy_cores": med(rounds, lambda r: sum(v for k, v in r["usage"].items()
                                                 if k != "wall") / r["usage"]["wall"]),
        "ping_cpu_servers": med(rounds, lambda r: r["ping_usage"][sender] + (
            r["ping_usage"][receiver] if receiver != sender else 0)),
        "ping_cpu_client": med(rounds, lambda r: r["ping_usage"]["client"]),
        "ping_wall": med(rounds, lambda r: r["ping_usage"]["wall"]),
        "delivered": [f"{r['received']}/{len(r['errors'])}" for r in rounds],
        "complete": all(r["complete"] for r in rounds),
    }
    s["us_sender"] = s["cpu_sender"] / messages * 1e6
    s["us_receiver"] = s["cpu_receiver"] / messages * 1e6
    s["us_ping_servers"] = s["ping_cpu_servers"] / pings * 1e6
    return s


def report(args, setups: list[Setup], outcome: dict, facts: dict) -> dict:
    summary = {setup.key: summarize(setup, outcome["results"][setup.key], args.messages,
                                    args.pings)
               for setup in setups if outcome["results"][setup.key]}
    print()
    for label, value in facts.items():
        print(f"{label:<18} {value}")
    rounds = len(next(iter(outcome["results"].values()), []))
    print(f"\nMedians of {rounds} round{'' if rounds == 1 else 's'}; M = {args.messages} messages per round, window "
          f"{args.window}, K = {args.senders} senders / receivers, {args.pings} pings per round.")
    print("Server CPU per message: the server's CPU seconds in the throughput phase / M "
          "(utime + stime, /proc/PID/stat, 10 ms ticks).\n")
    _main_table(setups, summary)
    _cpu_table(setups, summary)
    _ratio_table(setups, summary)
    _ping_cpu_table(setups, summary, args.pings)
    return summary


def _main_table(setups: list[Setup], summary: dict) -> None:
    print("| setup | msg/s | rounds (msg/s) | ping RTT p50 / p99 ms | latency under load "
          "p50 / p99 ms | server CPU µs per msg, send / recv | delivered |")
    print("|---|---:|---|---:|---:|---:|---|")
    for setup in setups:
        s = summary.get(setup.key)
        if s is None:
            continue
        per_msg = (f"{s['us_sender']:.0f} (one server)" if setup.sender == setup.receiver
                   else f"{s['us_sender']:.0f} / {s['us_receiver']:.0f}")
        print(f"| {setup.title} | {s['rate']:,.0f} | {' / '.join(f'{r:,.0f}' for r in s['rates'])}"
              f" | {s['rtt_p50']:.2f} / {s['rtt_p99']:.2f} | {s['load_p50']:.0f} / "
              f"{s['load_p99']:.0f} | {per_msg} | {_delivered(s)} |")


def _delivered(s: dict) -> str:
    counts = s["delivered"]
    if s["complete"] and len(set(counts)) == 1 and counts[0].endswith("/0"):
        return "all, every round (0 errors)"
    return ", ".join(counts) + ("" if s["complete"] else " INCOMPLETE")


def _cpu_table(setups: list[Setup], summary: dict) -> None:
    print("\nThroughput phase, CPU seconds per round (median): who limited the rate. "
          "\"busy cores\" = all busy CPU time of the machine / wall time (2 = saturated).\n")
    print("| setup | sending server | receiving server | load generator | other | wall s "
          "| busy cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setup in setups:
        s = summary.get(setup.key)
        if s is None:
            continue
        receiver = "(same)" if setup.sender == setup.receiver else f"{s['cpu_receiver']:.2f}"
        print(f"| {setup.title} | {s['cpu_sender']:.2f} | {receiver} | {s['cpu_client']:.2f} | "
              f"{s['cpu_other']:.2f} | {s['wall']:.2f} | {s['busy_cores']:.2f} |")


def _ratio_table(setups: list[Setup], summary: dict) -> None:
    rows = [(setup, summary[setup.key], summary[setup.anchor]) for setup in setups
            if setup.anchor and setup.key in summary and setup.anchor in summary]
    if not rows:
        return
    titles = {setup.key: setup.title for setup in SETUPS}
    print("\nRatio to the Prosody anchor measured in the same run (rate: above 1 favours iim; "
          "latency and CPU: below 1 favours iim).\n")
    print("| setup / anchor | msg/s | ping RTT p50 | ping RTT p99 | send server µs/msg "
          "| recv server µs/msg |")
    print("|---|---:|---:|---:|---:|---:|")
    for setup, s, a in rows:
        print(f"| {setup.title} / {titles[setup.anchor]} | {s['rate'] / a['rate']:.2f} | "
              f"{s['rtt_p50'] / a['rtt_p50']:.2f} | {s['rtt_p99'] / a['rtt_p99']:.2f} | "
              f"{s['us_sender'] / a['us_sender']:.2f} | "
              f"{s['us_receiver'] / a['us_receiver']:.2f} |")


def _ping_cpu_table(setups: list[Setup], summary: dict, pings: int) -> None:
    print(f"\nPing phase ({pings} round trips one at a time, per round, median): server CPU "
          "per round trip (both servers), load generator CPU-s, wall s.\n")
    print("| setup | server µs per round trip | load gen CPU-s | wall s |")
    print("|---|---:|---:|---:|")
    for setup in setups:
        s = summary.get(setup.key)
        if s is not None:
            print(f"| {setup.title} | {s['us_ping_servers']:.0f} | {s['ping_cpu_client']:.2f} | "
                  f"{s['ping_wall']:.2f} |")


def check_links(setups: list[Setup], servers: dict) -> list[str]:
    """How each s2s link the setups used authenticated, from its receiving server's log."""
    lines, missing = [], []
    for setup in setups:
        if setup.sender == setup.receiver:
            continue
        for origin, target in ((setup.sender, setup.receiver), (setup.receiver, setup.sender)):
            method = servers[target].incoming_auth().get(SITES[origin].domain)
            link = f"{SITES[origin].domain} -> {SITES[target].domain}"
            if method is None:
                missing.append(link)
            elif f"{link}: {method}" not in lines:
                lines.append(f"{link}: {method}")
    return lines + [f"{link}: NOT FOUND in the receiving server's log" for link in missing]


# ---------------------------------------------------------------------------
# Main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="M, per round and setup")
    parser.add_argument("--senders", type=int, default=20,
                        help="K senders and K receivers per server (default 20)")
    parser.add_argument("--window", type=int, default=500, help="messages in flight")
    parser.add_argument("--pings", type=int, default=300,
                        help="single round trips per round and setup (default 300)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setups", default=",".join(s.key for s in SETUPS),
                        help="comma-separated, from: " + ", ".join(s.key for s in SETUPS))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds after which no new round starts (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the folder (configs, logs)")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    known = {s.key: s for s in SETUPS}
    wanted = [name.strip() for name in args.setups.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        parser.error(f"--setups: unknown {', '.join(unknown) or '(empty)'}; "
                     f"choose from {', '.join(known)}")
    for name in ("messages", "senders", "window", "pings", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.timeout <= 0 or args.budget <= 0:
        parser.error("--timeout and --budget must be positive")
    return args, [s for s in SETUPS if s.key in wanted]


def check_tools() -> None:
    for tool, hint in ((PROSODY, "apt-get install prosody (./dev installs it)"),
                       (PROSODYCTL, "apt-get install prosody"),
                       (shutil.which("keytool") or "keytool",
                        "apt-get install openjdk-17-jre-headless")):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} not found: {hint}")


def busy_cores(seconds: float = 2.0) -> float:
    """How many of the machine's CPUs were busy, on average, over ``seconds``
    (before anything of ours runs: others' load on a shared machine)."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def prepare_servers(servers: dict, setups: list[Setup], folder: Path, zone: TestZone,
                    senders: int):
    """Configure the servers the setups need and create their users; returns the
    CA certificate. ``servers`` (site key -> server) is filled as they are made,
    so that the caller can clean up whatever exists if a later one fails."""
    keys = sorted({key for s in setups for key in (s.sender, s.receiver)}, key=list(SITES).index)
    ca = pki.CA.root("iim federation bench CA")
    cafile = folder / "ca.pem"
    cafile.write_bytes(ca_pem(ca))
    users = user_names(senders)
    for key in keys:
        site = SITES[key]
        servers[key] = (IimServer(site, folder / site.domain, ca, zone, users)
                        if site.kind == "iim" else
                        ProsodyProcess(site, folder / site.domain, ca, cafile, zone, users))
    for server in servers.values():
        server.add_users()
    return ca.root_cert


def launch(servers: dict) -> None:
    """Start every server, then wait until each is ready (30 s in all)."""
    for server in servers.values():
        server.start()
    deadline = time.monotonic() + 30
    for server in servers.values():
        server.wait_ready(deadline)


def describe(args, outcome: dict, servers: dict, setups: list[Setup], codes: dict,
             problems: dict, revision: str, load_before: float, seconds: float) -> dict:
    """The lines above the tables: what ran, on what, and how it went."""
    now = _revision()
    skipped = outcome["skipped_rounds"]
    return {
        "command": " ".join([Path(sys.executable).name, "bench/federation.py", *args.argv]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
                   f"{platform.python_version()}, {ssl.OPENSSL_VERSION}",
        "busy before start": f"{load_before:.2f} of {os.cpu_count()} cores (2 s, others' "
                             f"work on this machine)",
        "iim source": revision + ("" if now == revision else
                                  f", then {now} at the end: code changed during the run"),
        "Prosody": f"{prosody_version()} (Debian package), epoll backend, log level info",
        "load generator": "one Python process (this one), asyncio, iim's ClientStream + TLSLayer",
        "c2s transport": outcome["transport"],
        "s2s links": "; ".join(check_links(setups, servers)),
        "servers' exit": ", ".join(f"{SITES[k].domain} {c}" for k, c in codes.items()),
        "WARNING+ lines": ", ".join(f"{d} {len(p)}" for d, p in problems.items()),
        "run time": f"{seconds:.0f} s" + (f" ({skipped} round(s) skipped: --budget)"
                                          if skipped else ""),
    }


def main(argv=None) -> int:
    args, setups = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    check_tools()
    signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile()
    revision, load_before = _revision(), busy_cores()
    folder = Path(tempfile.mkdtemp(prefix="iim-fed-bench-"))
    zone, servers, outcome, interrupted = Zone(), {}, None, False
    started = time.monotonic()
    try:
        ca_cert = prepare_servers(servers, setups, folder, zone, args.senders)
        launch(servers)
        zone.start()            # its thread only after the forks (preexec_fn and threads)
        print(f"servers up in {folder} ({time.monotonic() - started:.1f} s): " + ", ".join(
            f"{SITES[k].kind} {SITES[k].domain} pid {s.pid}" for k, s in servers.items()),
            flush=True)
        outcome = asyncio.run(run(args, setups, servers, ca_cert))
    except RunFailed as exc:
        print(f"RUN FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({str(exc) or 'Ctrl-C'}): stopping the servers", file=sys.stderr)
        interrupted = True
    finally:
        codes = stop_all(servers)
        zone.close()
    problems = {SITES[k].domain: s.problems() for k, s in servers.items()}
    if interrupted and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
        return 130
    if outcome is None:
        for domain, lines in problems.items():
            for line in lines[:10]:
                print(f"  {domain}: {line}", file=sys.stderr)
        print(f"folder kept: {folder}", file=sys.stderr)
        return 1
    facts = describe(args, outcome, servers, setups, codes, problems, revision, load_before,
                     time.monotonic() - started)
    summary = report(args, setups, outcome, facts)
    for domain, lines in problems.items():
        for line in lines[:10]:
            print(f"  log {domain}: {line}")
    for line in outcome["ended"][:10]:
        print("  stream ended during the run:", line)
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "args": vars(args),
                                               "summary": summary, "rounds": outcome["results"],
                                               "problems": problems}, indent=2, default=str))
    if args.keep:
        print(f"folder kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def stop_all(servers: dict) -> dict:
    """SIGTERM to every server at once, then wait for each; their exit codes."""
    for server in servers.values():
        with contextlib.suppress(Exception):
            server.terminate()
    codes = {}
    for key, server in servers.items():
        try:
            codes[key] = server.stop()
        except Exception as exc:  # noqa: BLE001 - report, and go on stopping the others
            codes[key] = f"stop failed: {exc}"
            with contextlib.suppress(Exception):
                server.proc.kill()
    return codes


if __name__ == "__main__":
    sys.exit(main())
