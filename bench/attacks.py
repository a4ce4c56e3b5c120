"""Attacks against a loaded server: what a legitimate pair of users sees meanwhile.

    python bench/attacks.py                  # 1,000 users (Tsung), 60 s per attack
    python bench/attacks.py --quick          # 100 users, 5 s per phase: a smoke run

Theory of operation
-------------------
Issue 11 found several ways for one peer to hurt everyone; this bench runs
each of them for ``--seconds`` against a server that has ``--users`` logged-in
users, and reports what a legitimate pair of users saw meanwhile.

* **The server**: ``python -m iim.server`` on 127.0.0.1 (its own session, dies
  with this script), the dev-setup keystore (STARTTLS offered, not required),
  log severity INFO, no multiplexor link (clients connect to the server's port
  directly, as in bench/load.py), ``s2s_nameservers`` pointing at a fake DNS in
  this process. Every limit at its default (iim/conf/limits.py).
* **The population** comes from an independent load generator, Tsung
  (bench/tsung/population.xml): users ``tsung1..N`` log in with STARTTLS and
  SASL PLAIN, bind, send presence, fetch the roster and stay connected, sending
  a chat message to another online user now and then. Tsung connects from
  ``--tsung-sources`` addresses 127.0.1.x, so the per-source limits do not
  count it as one source. It runs as our own Erlang node: a private node name
  and random cookie, distribution without epmd (``-start_epmd false
  -erl_epmd_port P``, as tests/ejabberdlive.py does), no web GUI, its logs in
  the run's folder; it is stopped with SIGTERM (Erlang's ``init:stop``), then
  whatever is left of its process group is killed.
* **The legitimate pair** (bench/benchclient.py, STARTTLS, from 127.0.0.1):
  ``alice`` sends ``bob`` a message every ``--ping-interval``; ``bob`` answers
  each at once; ``alice`` times the round trip. A ping never answered is
  *lost*. A **probe** logs a third user in from 127.0.0.1 every 2 s and times
  the login: the question for pre-auth and login attacks is whether a
  legitimate user can still get in.
* **Attackers** run in a child process (bench/attackers.py, one function per
  attack) from 127.0.0.2, so their CPU work never delays the loop that times
  the pair. The fake DNS answers any ``*.attack`` domain (SRV to a sink on
  127.0.0.2 that counts and closes connection attempts; ``remote.attack`` to
  the attacker's own authoritative server, which vouches for every dialback
  key) and counts the queries.
* **Phases**: a baseline (population and pair, no attack, ``--baseline`` s),
  then each attack for ``--seconds``, each followed by ``--recovery`` s without
  it. The server's RSS (VmRSS, /proc) is read every second: a row gives the RSS
  before the attack, its peak during it and the value at the end of recovery.
  Server CPU seconds are counted over the attack window.

Every process started (server, Tsung's node, attackers) and every thread (DNS,
sink) is stopped on exit, on an exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.etree.ElementTree import Element

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attackers import password_of                    # noqa: E402
from benchclient import BenchUser                      # noqa: E402
from load import _revision, machine_busy_seconds, same_iim_env   # noqa: E402
from iim.keys.context import client_context            # noqa: E402
from iim.limits import raise_nofile                    # noqa: E402
from iim.server.storage import Storage                 # noqa: E402
from iim.xmpp.jid import JID                           # noqa: E402

DOMAIN = "localhost"
LEGIT = "127.0.0.1"
ATTACKER = "127.0.0.2"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
TSUNG = Path("/usr/lib/x86_64-linux-gnu/tsung")
TSUNG_VERSION = "1.7.0"
ERL = shutil.which("erl") or "/usr/bin/erl"
#: The accounts of the pair, the probe and the attackers (password_of(name)).
ACCOUNTS = ("alice", "bob", "probe", "mallory", "victim", "sloth", "pest", "hoarder", "hydra")


@dataclass(frozen=True)
class Attack:
    key: str
    title: str
    config: dict = field(default_factory=dict)


ATTACKS = [
    Attack("preauth_flood", "(1) xmlns flood + SASL abort loop, pre-auth, plain + STARTTLS",
           {"connections": 8, "xmlns_per_element": 200}),
    Attack("idle_preauth", "(2) idle pre-auth connections from one source",
           {"max_sockets": 5000}),
    Attack("dialback_flood", "(3) dialback flood on the s2s port",
           {"connections": 4, "batch": 50, "pause": 0.05}),
    Attack("offline_flood", "(4a) offline-store flood (60 KB messages to an offline user)",
           {"size": 60000, "rate": 50}),
    Attack("subscription_flood", "(4b) remote subscription-request flood",
           {"rate": 200}),
    Attack("never_reads", "(5) client that never reads + 30 resources of one account",
           {"size": 4000, "rate": 500, "resources": 30}),
    Attack("roster_growth", "(6) roster growth (1 KB items) + presence every 0.5 s",
           {"item_size": 1000, "window": 20}),
    Attack("brute_force", "(7) wrong-password brute force (SCRAM), 4 streams",
           {"connections": 4, "target": "tsung1"}),
]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this script dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stop_process(proc: subprocess.Popen | None, timeout: float = 20) -> int | None:
    """SIGTERM, wait, SIGKILL if need be; then kill what is left of its process group."""
    if proc is None:
        return None
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# The server


class Server:
    def __init__(self, folder: Path, dns_port: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0
        (folder / "iim.conf").write_text("\n".join([
            f'iim_server.domainname = "{DOMAIN}"',
            f'iim_server.port = "127.0.0.1:{self.port}"',
            'iim_server.usemuxport = "false"',
            'iim_server.database = "iim.db"',
            'iim_server.sslkeystore = "dev/server-keystore.p12"',
            'iim_server.keystorepasswordfile = "dev/sslpassword.conf"',
            f'iim_server.s2s_nameservers = "127.0.0.1:{dns_port}"',
            # one line per limit and second (default 60 s), so that the refusals the
            # server logs can be told apart phase by phase; no limit is changed
            'iim_server.limit_log_interval = "1"',
            'iim.log.iim_server.url = "server.log"',
            'iim.log.iim_server.severity = "INFO"']) + "\n")

    def make_keystore(self) -> Path:
        subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                        str(self.folder / "dev")], check=True, capture_output=True, timeout=120,
                       cwd=self.folder, env=same_iim_env())
        return self.folder / "dev" / "ca.pem"

    def add_users(self, tsung_users: int) -> float:
        start = time.perf_counter()
        with Storage.open(self.folder / "iim.db") as storage:
            for i in range(1, tsung_users + 1):
                storage.add_user(f"tsung{i}", f"tsungpw{i}")      # what Tsung's config expects
            for name in ACCOUNTS:
                storage.add_user(name, password_of(name))
        return time.perf_counter() - start

    def start(self) -> None:
        with open(self.folder / "server.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iim.server", "-c", str(self.folder / "iim.conf")],
                stdout=subprocess.DEVNULL, stderr=err, cwd=self.folder, env=same_iim_env(),
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunFailed(f"server exited at startup: {self.stderr()}")
            if "serving" in self.log_text():
                return
            time.sleep(0.05)
        raise RunFailed("server did not start in 30 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr(self) -> str:
        path = self.folder / "server.stderr"
        return path.read_text(errors="replace").strip()[-2000:] if path.exists() else ""

    def new_log(self) -> str:
        """The server log written since the last call."""
        path = self.folder / "server.log"
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self.log_offset += cut
        return data[:cut].decode(errors="replace")


class LogWatch:
    """What the server log says: population sessions online, limit hits, warnings."""

    SESSION = re.compile(r": session (tsung\d+)@")
    LOGOUT = re.compile(r": logout (tsung\d+)@")
    LIMIT = re.compile(r"limit (\S+): refused (\d+)")
    CLOSING = re.compile(r": closing: ([a-z-]+)")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.online: set[str] = set()
        self.limits: dict[str, int] = {}
        self.warnings: list[str] = []

    def update(self) -> None:
        for line in self.server.new_log().splitlines():
            if (m := self.SESSION.search(line)):
                self.online.add(m.group(1))
            elif (m := self.LOGOUT.search(line)):
                self.online.discard(m.group(1))
            if (m := self.LIMIT.search(line)):
                self.limits[m.group(1)] = self.limits.get(m.group(1), 0) + int(m.group(2))
            elif (m := self.CLOSING.search(line)):
                key = f"closed by the server: {m.group(1)}"
                self.limits[key] = self.limits.get(key, 0) + 1
            elif any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
                self.warnings.append(line)

    def limits_snapshot(self) -> dict[str, int]:
        self.update()
        return dict(self.limits)


# ---------------------------------------------------------------------------
# Tsung: the population


class Tsung:
    """Tsung's controller as our own Erlang node (what ``tsung start`` runs, with a
    private name and cookie, no epmd, no web GUI)."""

    def __init__(self, folder: Path, args, server_port: int, cafile: Path, duration: int) -> None:
        self.folder = folder / "tsung"
        self.folder.mkdir()
        self.node = f"iimattacks{os.getpid()}@localhost"
        self.cookie = secrets.token_hex(16)
        self.dist_port = free_port()
        self.proc: subprocess.Popen | None = None
        ips = "\n".join(f'      <ip value="127.0.1.{i + 1}"/>' for i in range(args.tsung_sources))
        chats = max(1, duration // max(1, args.chat_interval))
        text = Template((HERE / "tsung" / "population.xml").read_text()).substitute(
            users=args.users, maxusers=args.users + 100, ips=ips, port=server_port,
            duration=duration + 60, arrival_seconds=2 * -(-args.users // args.arrival_rate) + 10,
            arrival_rate=args.arrival_rate, domain=DOMAIN, cafile=str(cafile),
            chats=chats, chat_interval=args.chat_interval, chat_size=100,
            hold=duration + 60)
        self.config = self.folder / "population.xml"
        self.config.write_text(text)

    def command(self) -> list[str]:
        ebin = [str(TSUNG / f"tsung-{TSUNG_VERSION}" / "ebin"),
                str(TSUNG / f"tsung_controller-{TSUNG_VERSION}" / "ebin")]
        options = {"web_gui": "false", "keep_web_gui": "false", "smp_disable": "true",
                   "debug_level": "5", "warm_time": "1", "exclude_tag": '""',
                   "config_file": f'"{self.config}"', "log_dir": f'"{self.folder}/"',
                   "mon_file": '"tsung.log"'}
        return [ERL, "-noshell", "-sname", self.node, "-setcookie", self.cookie,
                "-start_epmd", "false", "-erl_epmd_port", str(self.dist_port),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "+P", "250000", "+K", "true", "-s", "tsung_controller",
                "-pa", ebin[0], "-pa", ebin[1], "-sasl", "sasl_error_logger", "false",
                *[arg for key, value in options.items()
                  for arg in ("-tsung_controller", key, value)]]

    def start(self) -> None:
        if not (TSUNG / f"tsung-{TSUNG_VERSION}").exists():
            raise RunFailed(f"Tsung {TSUNG_VERSION} not found in {TSUNG}: apt-get install tsung")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERL")}
        env.update(HOME=str(self.folder), ERL_CRASH_DUMP=str(self.folder / "erl_crash.dump"),
                   ERL_CRASH_DUMP_BYTES="0")
        with (self.folder / "tsung.out").open("wb") as out:
            out.write(f"node {self.node} cookie {self.cookie} dist port {self.dist_port}\n"
                      .encode())
            out.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.folder, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        return stop_process(self.proc)

    def output(self) -> str:
        path = self.folder / "tsung.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stats(self) -> dict[str, str]:
        """The last value of each counter in Tsung's own mon file (tsung.log)."""
        found: dict[str, str] = {}
        for path in self.folder.glob("*/tsung.log"):
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[0] == "stats:" and (
                        parts[1].startswith("error") or parts[1] in (
                            "users", "connected", "users_count", "finish_users_count")):
                    found[parts[1]] = parts[3] if parts[1].endswith("count") or \
                        parts[1].startswith("error") else parts[2]
        return found


# ---------------------------------------------------------------------------
# Fake DNS and the sink for outgoing connection attempts


class FakeDNS:
    """Authoritative for ``*.attack`` on loopback UDP (mirrors tests/dnsfake.py, with
    wildcards): ``_xmpp-server._tcp.remote.attack`` -> the attacker's authoritative
    server, any other ``_xmpp-server._tcp.*.attack`` -> the sink, the two targets'
    A records -> 127.0.0.2. Counts every query."""

    def __init__(self, sink_port: int, peer_port: int) -> None:
        self.sink_port, self.peer_port = sink_port, peer_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.names: set[str] = set()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
                self.sock.sendto(self._answer(data), peer)
            except OSError:
                return
            except Exception:  # noqa: BLE001 - a malformed query must not stop the server
                continue

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name, kind = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.queries += 1
        self.names.add(name)
        answer = None
        if kind == "SRV" and name.startswith("_xmpp-server._tcp.") and name.endswith(".attack."):
            answer = (f"0 5 {self.peer_port} peer.attack." if name == "_xmpp-server._tcp.remote.attack."
                      else f"0 5 {self.sink_port} sink.attack.")
        elif kind == "A" and name in ("sink.attack.", "peer.attack."):
            answer = ATTACKER
        if answer:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind,
                                                            [answer]))
        elif name not in ("sink.attack.", "peer.attack."):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def close(self) -> None:
        self.sock.close()


class Sink:
    """Accepts and closes connections on 127.0.0.2: counts the server's outgoing
    s2s connection attempts to attacker-chosen domains."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ATTACKER, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# ---------------------------------------------------------------------------
# The legitimate pair and the probe


class RunFailed(Exception):
    """The run cannot measure what it set out to (a login failed, a process died)."""


class Legit(BenchUser):
    failure = RunFailed

    def __init__(self, name: str, resource: str, tls_context, meter: "Meter | None") -> None:
        super().__init__(JID.parse(f"{name}@{DOMAIN}/{resource}"), password_of(name),
                         tls_context)
        self.meter = meter

    def _message(self, stanza: Element) -> None:
        ident = stanza.get("id", "")
        if stanza.get("type") == "error":
            if self.meter:
                self.meter.bounced(ident)
        elif ident.startswith("p"):                      # bob: answer at once
            self.send_chat(stanza.get("from"), "q" + ident[1:], "pong")
        elif ident.startswith("q") and self.meter:       # alice: a pong
            self.meter.pong(ident)

    def _ended_after_login(self, why: str) -> None:
        if self.meter:
            self.meter.ended.append(why)


@dataclass
class PhaseStats:
    sent: int = 0
    rtts: list = field(default_factory=list)
    bounced: int = 0
    probes_ok: list = field(default_factory=list)
    probes_failed: list = field(default_factory=list)


class Meter:
    """alice's pings, bob's pongs, per phase."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.stats: dict[str, PhaseStats] = {}
        self.pending: dict[str, tuple[str, float]] = {}
        self.ended: list[str] = []
        self.n = 0

    def current(self) -> PhaseStats:
        return self.stats.setdefault(self.phase, PhaseStats())

    def ping(self, alice: Legit, bob_jid: str) -> None:
        self.n += 1
        self.pending[f"q{self.n}"] = (self.phase, time.perf_counter())
        self.current().sent += 1
        alice.send_chat(bob_jid, f"p{self.n}", "ping")

    def pong(self, ident: str) -> None:
        found = self.pending.pop(ident, None)
        if found:
            self.stats[found[0]].rtts.append(time.perf_counter() - found[1])

    def bounced(self, ident: str) -> None:
        found = self.pending.pop("q" + ident[1:], None)
        if found:
            self.stats[found[0]].bounced += 1

    def lost(self, phase: str) -> int:
        return sum(1 for p, _ in self.pending.values() if p == phase)


async def connect(user_factory, timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    _, user = await loop.create_connection(user_factory, "127.0.0.1", PORT[0],
                                           local_addr=(LEGIT, 0))
    try:
        await asyncio.wait_for(user.ready, timeout)
    except asyncio.TimeoutError:
        user.hang_up()
        raise RunFailed(f"{user.jid}: not logged in after {timeout} s") from None
    except BaseException:
        user.hang_up()
        raise
    return user, time.perf_counter() - start


PORT = [0]      # the server's port, for connect()


async def pinger(alice: Legit, meter: Meter, interval: float, stop: asyncio.Event) -> None:
    bob_jid = f"bob@{DOMAIN}/pair"
    while not stop.is_set():
        meter.ping(alice, bob_jid)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def prober(tls_context, meter: Meter, interval: float, stop: asyncio.Event) -> None:
    """Log ``probe`` in every ``interval`` s and out again; record each login's time."""
    n = 0
    while not stop.is_set():
        n += 1
        stats = meter.current()
        try:
            user, took = await connect(lambda: Legit("probe", f"p{n}", tls_context, None), 15)
            stats.probes_ok.append(took)
            user.logout()
            await asyncio.sleep(0.2)
            user.hang_up()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a result
            stats.probes_failed.append(str(exc)[:200])
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def sample_rss(pid: int, samples: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            samples.append((time.monotonic(), rss_kb(pid)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


# ---------------------------------------------------------------------------
# Phases


class AttackerProcess:
    def __init__(self, attack: Attack, config: dict, folder: Path) -> None:
        self.attack = attack
        self.out = folder / f"attacker-{attack.key}.out"
        self.err = folder / f"attacker-{attack.key}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "attackers.py"), attack.key, json.dumps(config)],
                stdout=out, stderr=err, env=same_iim_env(), start_new_session=True,
                preexec_fn=_die_with_parent)

    def stop(self) -> None:
        """SIGTERM: it stops attacking and may still do its 'after' step."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def counters(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.proc.poll() is None:
            stop_process(self.proc, 5)
        lines = self.out.read_text(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {
                "no counters (stderr: " + self.err.read_text(errors="replace")[-300:] + ")": 1}
        except json.JSONDecodeError:
            return {"unreadable counters": 1}

    def kill(self) -> None:
        stop_process(self.proc, 5)


@dataclass
class Row:
    phase: str
    title: str
    round: int
    seconds: float
    load: float
    p50_ms: float
    p99_ms: float
    sent: int
    lost: int = 0
    bounced: int = 0
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    cpu_s: float = 0.0
    tsung_cpu_s: float = 0.0
    attacker_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    probes: str = ""
    population: str = ""
    dns_queries: int = 0
    dns_names: int = 0
    s2s_attempts: int = 0
    limits: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered \
        else float("nan")


class Run:
    def __init__(self, args, folder: Path, server: Server, watch: LogWatch, fake_dns: FakeDNS,
                 sink: Sink, cafile: Path) -> None:
        self.args, self.folder, self.server, self.watch = args, folder, server, watch
        self.dns, self.sink = fake_dns, sink
        self.cafile = cafile
        self.tls_context = client_context(None, anchors=[_load_ca(cafile)])
        self.meter = Meter()
        self.samples: list = []
        self.rows: list[Row] = []
        self.attackers: list[AttackerProcess] = []
        self.tsung: Tsung | None = None

    def tsung_cpu(self) -> float:
        """CPU seconds of Tsung's node so far (0 before it runs)."""
        if self.tsung is None or not self.tsung.alive():
            return 0.0
        with contextlib.suppress(OSError):
            return cpu_seconds(self.tsung.proc.pid)
        return 0.0

    def rss_between(self, start: float, end: float) -> list[int]:
        return [kb for t, kb in self.samples if start <= t <= end]

    def rss_at(self, t: float) -> int:
        before = [kb for when, kb in self.samples if when <= t]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0)

    async def phase(self, key: str, title: str, attack: Attack | None, seconds: float,
                    recovery: float, number: int) -> Row:
        label = f"{key}#{number}"
        self.meter.phase = label
        self.meter.current()
        load = os.getloadavg()[0]
        self.watch.update()
        population = len(self.watch.online)
        limits_before = self.watch.limits_snapshot()
        dns_before, names_before, sink_before = self.dns.queries, len(self.dns.names), \
            self.sink.accepted
        start = time.monotonic()
        cpu_before, busy_before = cpu_seconds(self.server.proc.pid), machine_busy_seconds()
        own_before, tsung_before = time.process_time(), self.tsung_cpu()
        attacker = None
        if attack is not None:
            config = {"port": self.server.port, "domain": DOMAIN, "peer_port": PEER_PORT[0],
                      "cafile": str(self.cafile), **attack.config}
            if attack.key == "idle_preauth":
                config["max_sockets"] = min(config["max_sockets"], self.args.max_sockets)
            attacker = AttackerProcess(attack, config, self.folder)
            self.attackers.append(attacker)
        await asyncio.sleep(seconds)
        end = time.monotonic()
        server_cpu = cpu_seconds(self.server.proc.pid) - cpu_before
        busy = machine_busy_seconds() - busy_before
        own = time.process_time() - own_before
        tsung_cpu = self.tsung_cpu() - tsung_before
        attacker_cpu = 0.0
        counters: dict = {}
        if attacker is not None:
            with contextlib.suppress(OSError, ValueError):
                attacker_cpu = cpu_seconds(attacker.proc.pid)
            attacker.stop()
        self.meter.phase = f"{label} recovery"
        await asyncio.sleep(recovery)
        if attacker is not None:
            counters = await attacker.counters(timeout=30)
        self.watch.update()
        stats = self.meter.stats[label]
        limits_after = self.watch.limits_snapshot()
        row = Row(
            phase=key, title=title, round=number, seconds=round(end - start, 1), load=load,
            p50_ms=percentile(stats.rtts, 0.5) * 1000, p99_ms=percentile(stats.rtts, 0.99) * 1000,
            sent=stats.sent, bounced=stats.bounced,
            rss_before=self.rss_at(start) / 1024,
            rss_peak=max(self.rss_between(start, end) or [0]) / 1024,
            rss_after=self.rss_at(time.monotonic()) / 1024,
            cpu_s=round(server_cpu, 2), tsung_cpu_s=round(tsung_cpu, 2),
            attacker_cpu_s=round(attacker_cpu, 2),
            other_cpu_s=round(busy - server_cpu - own - tsung_cpu - attacker_cpu, 2),
            probes=_probes(stats),
            population=f"{population} -> {len(self.watch.online)}",
            dns_queries=self.dns.queries - dns_before,
            dns_names=len(self.dns.names) - names_before,
            s2s_attempts=self.sink.accepted - sink_before,
            limits={k: v - limits_before.get(k, 0) for k, v in limits_after.items()
                    if v - limits_before.get(k, 0)},
            counters=counters)
        if not self.server.alive():
            raise RunFailed(f"the server died during {key}: {self.server.stderr()}")
        return row


PEER_PORT = [0]


def _probes(stats: PhaseStats) -> str:
    ok = stats.probes_ok
    text = f"{len(ok)} ok" + (f" (median {statistics.median(ok) * 1000:.0f} ms)" if ok else "")
    if stats.probes_failed:
        text += f", {len(stats.probes_failed)} FAILED ({stats.probes_failed[0][:80]})"
    return text


def _load_ca(path: Path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(path.read_bytes())


async def wait_population(run: Run, tsung: Tsung, users: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        run.watch.update()
        if len(run.watch.online) >= users:
            return time.monotonic() - start
        if not tsung.alive():
            raise RunFailed(f"Tsung exited before the population was online: "
                            f"{tsung.output()[-1500:]}")
        await asyncio.sleep(0.5)
    raise RunFailed(f"only {len(run.watch.online)} of {users} Tsung users online after "
                    f"{timeout:.0f} s (server log: {run.server.folder / 'server.log'})")


async def measure(run: Run, tsung: Tsung, attacks: list[Attack]) -> dict:
    args = run.args
    run.tsung = tsung
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(run.server.proc.pid, run.samples, stop))
    await asyncio.sleep(1.0)
    rss_idle = rss_kb(run.server.proc.pid)
    tsung.start()
    took = await wait_population(run, tsung, args.users, args.population_timeout)
    print(f"{args.users} Tsung users online in {took:.1f} s", flush=True)
    await asyncio.sleep(2.0)
    rss_population = rss_kb(run.server.proc.pid)
    bob, _ = await connect(lambda: Legit("bob", "pair", run.tls_context, run.meter))
    alice, _ = await connect(lambda: Legit("alice", "pair", run.tls_context, run.meter))
    tasks = [asyncio.ensure_future(pinger(alice, run.meter, args.ping_interval, stop)),
             asyncio.ensure_future(prober(run.tls_context, run.meter, args.probe_interval,
                                          stop))]
    try:
        await asyncio.sleep(2.0)
        for number in range(args.rounds):
            row = await run.phase("baseline", "baseline: population + pair, no attack", None,
                                  args.baseline, 0, number + 1)
            run.rows.append(row)
            print(progress(row), flush=True)
            for attack in attacks:
                row = await run.phase(attack.key, attack.title, attack, args.seconds,
                                      args.recovery, number + 1)
                run.rows.append(row)
                print(progress(row), flush=True)
        await asyncio.sleep(2.0)                 # last pongs
    finally:
        stop.set()
        await asyncio.gather(*tasks, sampler, return_exceptions=True)
    for row in run.rows:
        row.lost = run.meter.lost(f"{row.phase}#{row.round}")
    alice.logout()
    bob.logout()
    await asyncio.wait([alice.gone, bob.gone], timeout=5)
    alice.hang_up()
    bob.hang_up()
    return {"rss_idle_mib": rss_idle / 1024, "rss_population_mib": rss_population / 1024,
            "population_login_s": took, "ended": run.meter.ended,
            "transport": f"{alice.tls.info().version} {alice.tls.info().cipher}"
            if alice.tls else "plaintext"}


def progress(row: Row) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in list(row.counters.items())[:6])
    return (f"  {row.phase:<19} p50 {row.p50_ms:6.1f} ms  p99 {row.p99_ms:7.1f} ms  "
            f"sent {row.sent}  RSS {row.rss_before:.0f}/{row.rss_peak:.0f}/{row.rss_after:.0f} MiB"
            f"  CPU {row.cpu_s:.1f} s  probes {row.probes}  load {row.load:.2f}"
            + (f"\n      {extra}" if extra else ""))


# ---------------------------------------------------------------------------
# Report


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """The median, and min-max when there is more than one value."""
    values = [v for v in values if v == v]                # no NaN
    if not values:
        return "n/a"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return text


def summarize(rows: list[Row]) -> list[dict]:
    phases: dict[str, list[Row]] = {}
    for row in rows:
        phases.setdefault(row.phase, []).append(row)
    out = []
    for key, group in phases.items():
        counters: dict[str, list] = {}
        for row in group:
            for name, value in row.counters.items():
                counters.setdefault(name, []).append(value)
            for name, value in row.limits.items():
                counters.setdefault(name if name.startswith("closed by the server")
                                    else f"server log: {name}", []).append(value)
        refusals = [sum(v for k, v in r.counters.items() if k.startswith("refused ")) for r in group]
        out.append({
            "phase": key, "title": group[0].title, "rounds": len(group),
            "p50": spread([r.p50_ms for r in group]), "p99": spread([r.p99_ms for r in group]),
            "sent": sum(r.sent for r in group), "lost": sum(r.lost for r in group),
            "bounced": sum(r.bounced for r in group),
            "rss": " / ".join(spread([getattr(r, f"rss_{w}") for r in group], "{:.0f}")
                              for w in ("before", "peak", "after")),
            "cpu": spread([r.cpu_s for r in group]),
            "tsung_cpu": spread([r.tsung_cpu_s for r in group]),
            "attacker_cpu": spread([r.attacker_cpu_s for r in group]),
            "other_cpu": spread([r.other_cpu_s for r in group]),
            "refusals": spread(refusals, "{:.0f}") if any(refusals) else "0",
            "dns": spread([r.dns_queries for r in group], "{:.0f}"),
            "s2s": spread([r.s2s_attempts for r in group], "{:.0f}"),
            "probes": "; ".join(r.probes for r in group),
            "population": "; ".join(r.population for r in group),
            "load": ", ".join(f"{r.load:.2f}" for r in group),
            "counters": {name: (spread(values, "{:.0f}" if all(isinstance(v, int) for v in values) else "{:.2f}") if all(isinstance(v, (int, float))
                                                                 for v in values)
                                else values)
                         for name, values in sorted(counters.items())},
        })
    return out


def report(facts: dict, summary: list[dict]) -> None:
    print()
    for label, value in facts.items():
        print(f"{label:<22} {value}")
    print("\nLegit pair: p50/p99 round trip of alice -> bob -> alice during the attack window; "
          "lost = never answered; medians over rounds, (min-max) when repeated. RSS: before "
          "the attack / peak during it / end of recovery. CPU-s over the attack window: server, "
          "Tsung's node, the attacker process, and other: the machine's busy time charged to "
          "none of them nor to this process (others' work on a shared machine).\n")
    print("| phase | legit p50 / p99 ms | pings sent / lost / bounced | RSS MiB before / "
          "peak / after | CPU-s server / Tsung / attacker / other | refusals seen | "
          "DNS queries / s2s attempts | probe logins | load avg at start |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for s in summary:
        print(f"| {s['phase']} | {s['p50']} / {s['p99']} | {s['sent']} / {s['lost']} / "
              f"{s['bounced']} | {s['rss']} | {s['cpu']} / {s['tsung_cpu']} / "
              f"{s['attacker_cpu']} / {s['other_cpu']} | {s['refusals']} | "
              f"{s['dns']} / {s['s2s']} | {s['probes']} | {s['load']} |")
    print()
    for s in summary:
        print(f"{s['phase']}: {s['title']}; Tsung users online at start -> end: {s['population']}")
        for name, value in s["counters"].items():
            print(f"    {name}: {value}")


def _processes() -> dict[str, str]:
    """pid -> command line, of every process we can see."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                found[proc.name] = (proc / "cmdline").read_bytes().replace(b"\0", b" ") \
                    .decode(errors="replace").strip()
    return found


def epmd_pids() -> set[str]:
    return {pid for pid, cmd in _processes().items() if cmd and
            Path(cmd.split()[0]).name == "epmd"}


def leftovers(tsung: "Tsung | None", epmd_before: set[str]) -> list[str]:
    """Processes still running that carry Tsung's node name, and any epmd that
    was not running before the run."""
    found = []
    for pid, cmd in _processes().items():
        if (tsung is not None and tsung.node in cmd) or \
                (pid in epmd_pids() and pid not in epmd_before):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, help="Tsung's population (default 1000; --quick 100)")
    parser.add_argument("--seconds", type=float, help="per attack (default 60; --quick 5)")
    parser.add_argument("--baseline", type=float, help="seconds (default 30; --quick 5)")
    parser.add_argument("--recovery", type=float, help="seconds after each attack (default 10; "
                                                       "--quick 3)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every phase (default 1)")
    parser.add_argument("--quick", action="store_true", help="100 users, 5 s per phase")
    parser.add_argument("--attacks", default=",".join(a.key for a in ATTACKS),
                        help="comma-separated, from: " + ", ".join(a.key for a in ATTACKS))
    parser.add_argument("--ping-interval", type=float, default=0.1,
                        help="seconds between the pair's pings (default 0.1)")
    parser.add_argument("--probe-interval", type=float, default=2.0)
    parser.add_argument("--arrival-rate", type=int, default=50,
                        help="Tsung logins per second (default 50)")
    parser.add_argument("--tsung-sources", type=int, default=20,
                        help="loopback addresses 127.0.1.x Tsung connects from (default 20)")
    parser.add_argument("--chat-interval", type=int, default=60,
                        help="mean seconds between a Tsung user's chat messages (default 60)")
    parser.add_argument("--max-sockets", type=int, default=5000,
                        help="the idle-connection attacker's sockets (default 5000)")
    parser.add_argument("--population-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, configs)")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    quick = {"users": 100, "seconds": 5.0, "baseline": 5.0, "recovery": 3.0}
    full = {"users": 1000, "seconds": 60.0, "baseline": 30.0, "recovery": 10.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    known = {a.key: a for a in ATTACKS}
    wanted = [k.strip() for k in args.attacks.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in known]
    if unknown:
        parser.error(f"--attacks: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.users < 1 or args.rounds < 1 or args.tsung_sources < 1 or args.tsung_sources > 254:
        parser.error("--users and --rounds at least 1, --tsung-sources 1..254")
    return args, [known[k] for k in wanted]


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None) -> int:
    args, attacks = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    soft, _ = raise_nofile()
    room = soft - args.users - 500
    if room < args.max_sockets:
        print(f"open-files limit {soft}: the idle-connection attacker gets {max(room, 100)} "
              f"sockets, not {args.max_sockets}", flush=True)
        args.max_sockets = max(room, 100)
    revision, load_start, epmd_before = _revision(), os.getloadavg(), epmd_pids()
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="iim-attacks-"))
    sink, fake_dns, server, tsung, run, outcome = None, None, None, None, None, None
    codes, interrupted = {}, False
    try:
        sink = Sink()
        PEER_PORT[0] = free_port(ATTACKER)
        fake_dns = FakeDNS(sink.port, PEER_PORT[0])
        server = Server(folder, fake_dns.port)
        PORT[0] = server.port
        cafile = server.make_keystore()
        setup = server.add_users(args.users)
        server.start()
        sink.start()
        fake_dns.start()
        per_round = args.baseline + len(attacks) * (args.seconds + args.recovery + 10)
        duration = int(args.population_timeout + args.rounds * per_round + 120)
        tsung = Tsung(folder, args, server.port, cafile, duration)
        print(f"server pid {server.proc.pid} on 127.0.0.1:{server.port}, folder {folder}, "
              f"{args.users} users created in {setup:.1f} s; load average {load_start[0]:.2f} "
              f"{load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
        watch = LogWatch(server)
        run = Run(args, folder, server, watch, fake_dns, sink, cafile)
        outcome = asyncio.run(measure(run, tsung, attacks))
    except RunFailed as exc:
        print(f"RUN FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({str(exc) or 'Ctrl-C'}): stopping everything", file=sys.stderr)
        interrupted = True
    finally:
        for attacker in (run.attackers if run else []):
            attacker.kill()
        tsung_stats = tsung.stats() if tsung else {}
        codes["tsung"] = tsung.stop() if tsung else None
        codes["server"] = stop_process(server.proc) if server else None
        for thing in (fake_dns, sink):
            if thing is not None:
                thing.close()
        left = leftovers(tsung, epmd_before)
    if left:
        print("LEFT RUNNING: " + "; ".join(left), file=sys.stderr)
    if interrupted and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
        return 130
    if interrupted or outcome is None:
        if run is not None:
            run.watch.update()
            for line in run.watch.warnings[:20]:
                print("  server log:", line, file=sys.stderr)
        print(f"folder kept: {folder}", file=sys.stderr)
        return 130 if interrupted else 1
    run.watch.update()
    now = _revision()
    facts = {
        "command": " ".join([Path(sys.executable).name, "bench/attacks.py", *args.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "iim source": revision + ("" if now == revision else f", then {now} at the end"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
                   f"{platform.python_version()}",
        "load average at start": " ".join(f"{v:.2f}" for v in load_start),
        "population": f"{args.users} Tsung {TSUNG_VERSION} users (STARTTLS + SASL PLAIN) from "
                      f"{args.tsung_sources} addresses 127.0.1.x, online in "
                      f"{outcome['population_login_s']:.1f} s; Tsung's counters: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(tsung_stats.items())),
        "server RSS": f"idle {outcome['rss_idle_mib']:.1f} MiB, population online "
                      f"{outcome['rss_population_mib']:.1f} MiB",
        "legit pair": f"alice/bob from 127.0.0.1, {outcome['transport']}, a ping every "
                      f"{args.ping_interval} s; probe login every {args.probe_interval} s",
        "phases": f"baseline {args.baseline:.0f} s, attacks {args.seconds:.0f} s each + "
                  f"{args.recovery:.0f} s recovery, {args.rounds} round(s)",
        "exit codes": ", ".join(f"{k} {v}" for k, v in codes.items()),
        "left running": "nothing (no Tsung node, no epmd)" if not left else "; ".join(left),
        "server WARNING+ lines": f"{len(run.watch.warnings)} besides limit lines",
        "streams ended": "; ".join(outcome["ended"][:5]) or "none",
        "run time": f"{time.monotonic() - started:.0f} s",
    }
    summary = summarize(run.rows)
    report(facts, summary)
    for line in run.watch.warnings[:15]:
        print("  server log:", line[:300])
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"facts": facts, "args": {k: v for k, v in vars(args).items()},
             "summary": summary, "rows": [vars(r) for r in run.rows],
             "warnings": run.watch.warnings[:200]}, indent=2, default=str))
    if args.keep:
        print(f"folder kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
