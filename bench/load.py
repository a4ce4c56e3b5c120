"""Load run: N users log in to a real server process and exchange M chat messages.

    python bench/load.py --users 1000 --messages 20000 [--tls]

What it does, in order:

1. Writes an iim.conf in a temporary folder and creates the N accounts
   (``u00000`` ... with their own passwords) directly through ``Storage``,
   before the server starts. With ``--tls`` the keystore comes from
   ``python -m iim.admin dev-setup`` (a PKCS#12 store and its password file)
   and the clients trust that setup's ``ca.pem``; without it the server has no
   keystore, offers no STARTTLS, and the clients use ``TLSMode.OPTIONAL``.
2. Starts ``python -m iim.server -c iim.conf`` on 127.0.0.1 (no multiplexor-link
   listener, log severity ``--severity``, INFO by default) and reads its RSS
   (``VmRSS`` in ``/proc/PID/status``) once it is idle.
3. Logs the N clients in, at most ``--concurrency`` at a time. A client is the
   project's own sans-I/O ``ClientStream`` behind the small asyncio adapter
   below (STARTTLS through ``TLSLayer``): TCP connect, [STARTTLS], SASL
   SCRAM-SHA-256, bind, initial presence, roster get; it counts as logged in
   when the roster result arrives. Login rate = N / wall time of the phase.
4. Reads the server's RSS again: (RSS logged in - RSS idle) / N is the memory
   per connected user, against the original product's sizing figure of 65 KB.
5. Sends M chat messages (body + chat state, ~260 bytes) between random pairs
   of distinct users, to the recipient's full JID, keeping at most ``--window``
   in flight; the phase ends when all M arrived at their recipients.
   Messages/s = M / (last received - first sent). Repeated ``--rounds`` times;
   the table shows medians.
6. Logs the clients out (``--logout polite``: ``</stream:stream>``, then wait
   for the server to close, as RFC 6120 §4.4 asks; ``immediate``: close the
   socket right after the closing tag), counts from the server's log the bound
   sessions it never ended, stops it with SIGTERM and reports its exit code and
   every WARNING/ERROR/CRITICAL/Traceback line of its log. ``--cycles K`` logs
   everybody in and out K times in all and reads the RSS each time (a soak
   check: does memory come back after logout?).

The load generator runs in one process and one thread; on a small machine it
shares the CPUs with the server, so the table also shows the CPU seconds each
side used in each phase: the side near 1.0 CPU-s per wall-second is the one
that limited the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

from cryptography import x509

import iim

from iim.keys.context import client_context
from iim.limits import raise_nofile
from iim.server.storage import Storage
from iim.xmpp.jid import JID

from benchclient import BenchUser, source_address   # noqa: E402 - beside this script

DOMAIN = "localhost"
RESOURCE = "bench"
TARGET_KB_PER_USER = 65
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# The server process


@dataclass
class ServerProcess:
    folder: Path
    port: int
    tls: bool
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.folder / "iim.conf"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def write_config(self, severity: str) -> None:
        lines = [f'iim_server.domainname = "{DOMAIN}"',
                 f'iim_server.port = "127.0.0.1:{self.port}"',
                 'iim_server.usemuxport = "false"',         # no multiplexor link listener
                 'iim_server.database = "iim.db"',
                 'iim.log.iim_server.url = "server.log"',
                 f'iim.log.iim_server.severity = "{severity}"']
        if self.tls:
            lines += ['iim_server.sslkeystore = "dev/server-keystore.p12"',
                      'iim_server.keystorepasswordfile = "dev/sslpassword.conf"']
        self.conf.write_text("\n".join(lines) + "\n")

    def make_keystore(self) -> x509.Certificate:
        """The dev-setup keystore; returns the CA the clients trust."""
        subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                        str(self.folder / "dev")], check=True, capture_output=True, timeout=120,
                       cwd=self.folder, env=same_iim_env())
        return x509.load_pem_x509_certificate((self.folder / "dev" / "ca.pem").read_bytes())

    def start(self) -> None:
        self.stderr = open(self.folder / "server.stderr", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "iim.server", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     cwd=self.folder, env=same_iim_env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited at startup ({self.proc.returncode}): "
                                 f"{(self.folder / 'server.stderr').read_text()}")
            if "serving" in (self.log.read_text() if self.log.exists() else ""):
                return
            time.sleep(0.05)
        raise SystemExit("server did not start in 30 s")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS    # utime + stime

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stderr.close()
        return code

    def sessions_left(self) -> str:
        """Bound sessions the server never ended, from its INFO log lines."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        bound, ended = text.count(": session "), text.count(": logout ")
        if not bound:
            return "n/a (needs severity INFO or DEBUG)"
        return f"{bound - ended} of {bound} (log: {bound} 'session', {ended} 'logout' lines)"

    def problems(self) -> list[str]:
        """Log lines worth a human's eyes (and any stderr output)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = [line for line in text.splitlines()
                 if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ",
                                                   "Traceback"))]
        stderr = (self.folder / "server.stderr").read_text(errors="replace").strip()
        return lines + ([f"stderr: {stderr}"] if stderr else [])


def same_iim_env() -> dict:
    """The environment for child processes, so that they import the very ``iim``
    this script imported (``python -m`` would otherwise put its working
    directory first on sys.path)."""
    source = str(Path(iim.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": source + (os.pathsep + path if path else "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def username(i: int) -> str:
    return f"u{i:05d}"


def password(i: int) -> str:
    return f"bench-pw-{i}"


def create_users(database: Path, count: int) -> float:
    start = time.perf_counter()
    with Storage.open(database) as storage:
        for i in range(count):
            storage.add_user(username(i), password(i))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# The clients: ClientStream behind a tiny asyncio adapter


class LoginFailed(Exception):
    pass


@dataclass
class Traffic:
    """What every client reports to: the message counters of the current round."""

    expected: int = 0
    received: int = 0
    errors: int = 0
    sent_at: list = field(default_factory=list)     # seq -> perf_counter at send
    latencies: list = field(default_factory=list)
    last: float = 0.0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_streams: list = field(default_factory=list)

    def reset(self, expected: int) -> None:
        self.expected, self.received, self.errors = expected, 0, 0
        self.sent_at, self.latencies = [0.0] * expected, []
        self.done.clear()

    def message(self, stanza: Element) -> None:
        if stanza.get("type") == "error":
            self.errors += 1
        else:
            now = time.perf_counter()
            seq = int(stanza.get("id", "m-1")[1:])
            if 0 <= seq < len(self.sent_at):
                self.latencies.append(now - self.sent_at[seq])
            self.received += 1
            self.last = now
        self.progress.set()
        if self.received + self.errors >= self.expected:
            self.done.set()


class BenchClient(BenchUser):
    """One user u<index> (bench/benchclient.py); its messages count in ``traffic``."""

    failure = LoginFailed

    def __init__(self, index: int, tls_context, traffic: Traffic) -> None:
        super().__init__(JID.parse(f"{username(index)}@{DOMAIN}/{RESOURCE}"), password(index),
                         tls_context)
        self.traffic = traffic

    def _message(self, stanza: Element) -> None:
        self.traffic.message(stanza)

    def _ended_after_login(self, why: str) -> None:
        self.traffic.ended_streams.append(why)

    def send_chat(self, to: str, seq: int) -> None:
        self.traffic.sent_at[seq] = time.perf_counter()
        super().send_chat(to, f"m{seq}")

    def logout(self, polite: bool) -> None:
        """Send our closing tag. ``polite``: then wait for the server to close
        (RFC 6120 §4.4: SHOULD); else close the connection at once."""
        super().logout()
        if not polite:
            self.hang_up()


# ---------------------------------------------------------------------------
# The phases


@dataclass
class Usage:
    """Wall seconds, and the CPU seconds each side spent in them."""

    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    """Busy CPU seconds of the whole machine not charged to either process:
    other programs, and kernel work (softirq) charged to nobody."""


@contextlib.contextmanager
def measure(server: ServerProcess):
    usage = Usage()
    wall, client, srv = time.perf_counter(), time.process_time(), server.cpu_seconds()
    busy = machine_busy_seconds()
    yield usage
    usage.wall = time.perf_counter() - wall
    usage.client_cpu = time.process_time() - client
    usage.server_cpu = server.cpu_seconds() - srv
    usage.other_cpu = (machine_busy_seconds() - busy) - usage.client_cpu - usage.server_cpu


def machine_busy_seconds() -> float:
    """All CPUs' non-idle time since boot (/proc/stat)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]                                  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS                # up to steal, not guest


async def log_in(args, port: int, tls_context, traffic: Traffic) -> tuple[list, list[float]]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    clients: list[BenchClient | None] = [None] * args.users
    durations: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            _, client = await loop.create_connection(
                lambda: BenchClient(i, tls_context, traffic), "127.0.0.1", port,
                local_addr=source_address(i))
            clients[i] = client
            durations.append(await asyncio.wait_for(client.ready, args.timeout) - start)

    results = await asyncio.gather(*(one(i) for i in range(args.users)), return_exceptions=True)
    failures = [(username(i), r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    if failures:
        shown = "; ".join(f"{user}: {type(exc).__name__}: {exc}" for user, exc in failures[:5])
        raise LoginFailed(f"{len(failures)} of {args.users} logins failed ({shown})")
    return clients, durations


async def exchange(args, clients: list[BenchClient], traffic: Traffic, rng: random.Random
                   ) -> tuple[float, bool]:
    """Send ``args.messages`` messages, at most ``args.window`` in flight; wall time."""
    count = args.messages
    pairs = []
    for _ in range(count):
        a, b = rng.sample(range(len(clients)), 2)
        pairs.append((clients[a], f"{username(b)}@{DOMAIN}/{RESOURCE}"))
    traffic.reset(count)
    start = time.perf_counter()
    seq = 0
    deadline = start + args.timeout
    while seq < count:
        room = args.window - (seq - traffic.received - traffic.errors)
        if room <= 0:
            traffic.progress.clear()
            try:
                await asyncio.wait_for(traffic.progress.wait(),
                                       max(0.1, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                return time.perf_counter() - start, False
            continue
        for _ in range(min(room, args.chunk, count - seq)):
            sender, to = pairs[seq]
            sender.send_chat(to, seq)
            seq += 1
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(traffic.done.wait(), max(1.0, deadline - time.perf_counter()))
        complete = True
    except asyncio.TimeoutError:
        complete = False
    end = traffic.last if complete else time.perf_counter()
    return end - start, complete


async def run(args, server: ServerProcess, ca) -> dict:
    tls_context = client_context(None, anchors=[ca]) if ca is not None else None
    traffic = Traffic()
    result: dict = {}
    await asyncio.sleep(0.5)
    result["rss_idle_kb"] = server.rss_kb()

    with measure(server) as usage:
        clients, durations = await log_in(args, server.port, tls_context, traffic)
    result["login"] = usage
    result["login_latency_ms"] = statistics.median(durations) * 1000
    first = clients[0]
    result["transport"] = (f"{first.tls.info().version} {first.tls.info().cipher}"
                           if first.tls else "plaintext (no keystore, no STARTTLS)")
    await asyncio.sleep(1.0)                        # let the last presences settle
    result["rss_logged_in_kb"] = server.rss_kb()

    rng = random.Random(args.seed)
    rounds = []
    for number in range(args.rounds):
        with measure(server) as usage:
            wall, complete = await exchange(args, clients, traffic, rng)
        latencies = sorted(traffic.latencies)
        rounds.append({
            "wall": wall, "received": traffic.received, "errors": traffic.errors,
            "complete": complete, "rate": traffic.received / wall,
            "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
            "client_cpu": usage.client_cpu, "server_cpu": usage.server_cpu,
            "other_cpu": usage.other_cpu,
        })
        print(f"  round {number + 1}: {traffic.received}/{args.messages} received, "
              f"{traffic.errors} errors, {rounds[-1]['rate']:,.0f} msg/s "
              f"(other CPU {usage.other_cpu:.2f} s)", flush=True)
        if not server.alive():
            break
    result["rounds"] = rounds
    result["rss_after_messages_kb"] = server.rss_kb() if server.alive() else None
    result["ended_streams"] = list(traffic.ended_streams)

    result["not_closed_by_server"] = await log_out(clients, args.logout == "polite")
    await asyncio.sleep(SETTLE_AFTER_LOGOUT)
    result["rss_after_logout_kb"] = server.rss_kb() if server.alive() else None
    result["cycles"] = [(result["rss_logged_in_kb"], result["rss_after_logout_kb"])]
    for _ in range(args.cycles - 1):                # log everybody in and out again
        if not server.alive():
            break
        clients, _ = await log_in(args, server.port, tls_context, Traffic())
        await asyncio.sleep(1.0)
        logged_in = server.rss_kb()
        result["not_closed_by_server"] += await log_out(clients, args.logout == "polite")
        await asyncio.sleep(SETTLE_AFTER_LOGOUT)
        result["cycles"].append((logged_in, server.rss_kb()))
    result["sessions_left"] = server.sessions_left()
    return result


#: Seconds between the last logout and reading RSS: the server returns freed
#: memory to the system within a few seconds of a burst of logouts.
SETTLE_AFTER_LOGOUT = 5.0


async def log_out(clients: list[BenchClient], polite: bool) -> int:
    """Log every client out; return how many the server did not close within 10 s."""
    for client in clients:
        client.logout(polite)
    if not polite:
        return 0
    await asyncio.wait([client.gone for client in clients], timeout=10)
    left = sum(not client.gone.done() for client in clients)
    for client in clients:
        client.hang_up()
    return left


# ---------------------------------------------------------------------------
# Report


def report(args, result: dict, setup_seconds: float, exit_code, problems, offline,
           revision: str) -> None:
    n = args.users
    login = result["login"]
    delta = result["rss_logged_in_kb"] - result["rss_idle_kb"]
    per_user = delta / n
    rounds = result["rounds"]
    med = lambda key: statistics.median(r[key] for r in rounds)   # noqa: E731
    rates = ", ".join(f"{r['rate']:,.0f}" for r in rounds)
    rows = [
        ("machine", f"{os.cpu_count()} cores, Python {platform.python_version()}, "
                    f"{platform.machine()}"),
        ("command", " ".join([Path(sys.executable).name, *sys.argv])),
        ("iim source", revision),
        ("client transport", result["transport"]),
        ("users created (Storage.add_user)", f"{n} in {setup_seconds:.1f} s"),
        ("logins/s", f"{n / login.wall:,.0f}  ({n} in {login.wall:.2f} s, median login "
                     f"{result['login_latency_ms']:.1f} ms, concurrency {args.concurrency})"),
        ("  CPU-s during logins", f"server {login.server_cpu:.2f}, load generator "
                                  f"{login.client_cpu:.2f}, other {login.other_cpu:.2f} "
                                  f"(wall {login.wall:.2f})"),
        ("  server CPU per login", f"{login.server_cpu / n * 1000:.2f} ms"),
        ("server RSS idle", f"{result['rss_idle_kb'] / 1024:.1f} MB"),
        (f"server RSS, {n} logged in", f"{result['rss_logged_in_kb'] / 1024:.1f} MB"),
        ("KB per connected user", f"{per_user:.1f} KB  (target: < {TARGET_KB_PER_USER} KB: "
                                  f"{'met' if per_user < TARGET_KB_PER_USER else 'NOT met'})"),
        (f"messages/s, median of {len(rounds)}", f"{med('rate'):,.0f}  (rounds: {rates})"),
        ("  latency p50 / p99 (median)", f"{med('p50_ms'):.1f} / {med('p99_ms'):.1f} ms "
                                         f"(window {args.window} in flight)"),
        ("  server CPU per message (median)",
         f"{med('server_cpu') / args.messages * 1e6:.0f} µs"),
        ("  CPU-s per round (median)", f"server {med('server_cpu'):.2f}, load generator "
                                       f"{med('client_cpu'):.2f}, other "
                                       f"{med('other_cpu'):.2f} (wall {med('wall'):.2f})"),
        ("  delivered / errors", ", ".join(f"{r['received']}/{r['errors']}" for r in rounds)),
        ("server RSS after messages", _mb(result["rss_after_messages_kb"])),
        (f"logout ({args.logout})", _logout_outcome(args, result)),
        ("  sessions not ended at the server", result["sessions_left"]),
        ("server RSS 2 s after logout", _mb(result["rss_after_logout_kb"])),
        *([("RSS per cycle: logged in / out", "  ".join(
            f"{a / 1024:.1f}/{b / 1024:.1f}" for a, b in result["cycles"]) + " MB")]
          if len(result["cycles"]) > 1 else []),
        ("offline messages stored", str(offline)),
        ("server exit code (SIGTERM)", str(exit_code)),
        ("server log WARNING+ lines", str(len(problems))),
    ]
    width = max(len(label) for label, _ in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for line in problems[:20]:
        print("  log:", line)
    for line in result["ended_streams"][:10]:
        print("  stream ended during the run:", line)


def _logout_outcome(args, result: dict) -> str:
    if args.logout == "immediate":
        return "each client closed its socket right after </stream:stream>"
    left = result.get("not_closed_by_server", 0)
    if left:
        return f"{left} connections not closed by the server within 10 s"
    return "the server closed every connection"


def _revision() -> str:
    """Where the server's code came from: the commit, and whether iim/ had local changes."""
    repo = Path(iim.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return f"{repo} (not a git checkout)"
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "iim"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return f"{commit}{' + uncommitted changes in iim/' if dirty else ''}" or "unknown"


def _mb(kb) -> str:
    return "n/a (server gone)" if kb is None else f"{kb / 1024:.1f} MB"


def count_offline(database: Path) -> int | str:
    try:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT COUNT(*) FROM offline_messages").fetchone()[0]
    except sqlite3.Error as exc:
        return f"unknown ({exc})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--tls", action="store_true", help="STARTTLS with a dev-setup keystore")
    parser.add_argument("--rounds", type=int, default=3, help="message phases (default 3)")
    parser.add_argument("--concurrency", type=int, default=50, help="logins in flight")
    parser.add_argument("--window", type=int, default=1000, help="messages in flight")
    parser.add_argument("--chunk", type=int, default=100,
                        help="messages sent per event-loop turn")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--severity", default="INFO", help="server log severity")
    parser.add_argument("--logout", choices=("polite", "immediate"), default="polite",
                        help="polite: send </stream:stream> and wait for the server to "
                             "close; immediate: send it and close at once")
    parser.add_argument("--cycles", type=int, default=1,
                        help="log everybody in and out this many times (RSS each time); "
                             "messages are sent in the first cycle only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.users < 2:
        parser.error("--users must be at least 2")

    revision = _revision()
    soft, hard = raise_nofile()
    if soft < args.users + 100:
        parser.error(f"open-files limit {soft} is too low for {args.users} clients")
    folder = Path(tempfile.mkdtemp(prefix="iim-load-"))
    server = ServerProcess(folder, free_port(), args.tls)
    exit_code, result = None, None
    try:
        ca = server.make_keystore() if args.tls else None
        server.write_config(args.severity)
        setup_seconds = create_users(folder / "iim.db", args.users)
        server.start()
        print(f"server pid {server.proc.pid} on 127.0.0.1:{server.port}, folder {folder}",
              flush=True)
        try:
            result = asyncio.run(run(args, server, ca))
        except LoginFailed as exc:
            print(f"LOGIN PHASE FAILED: {exc}", file=sys.stderr)
    finally:
        alive = server.alive()
        exit_code = server.stop()
        if not alive:
            exit_code = f"{exit_code} (had already exited before SIGTERM)"
        problems = server.problems()
    offline = count_offline(folder / "iim.db")
    if result is None:
        for line in problems[:40]:
            print("  log:", line, file=sys.stderr)
        print(f"server folder kept: {folder}", file=sys.stderr)
        return 1
    if _revision() != revision:
        revision += f", then {_revision()} at the end: the code changed during the run"
    report(args, result, setup_seconds, exit_code, problems, offline, revision)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {**result, "login": vars(result["login"]), "args": vars(args),
             "exit_code": str(exit_code), "problems": problems, "offline": offline},
            indent=2, default=str))
    if args.keep:
        print(f"folder kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
