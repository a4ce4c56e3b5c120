"""iim and Prosody 0.12 side by side under Tsung: memory per connected STARTTLS
user and server CPU per message (issue 14, item 1).

    python bench/c2s_side_by_side.py                        # 1,000 users, 3 rounds, 2,000 msg/s
    python bench/c2s_side_by_side.py --users 1000 --rounds 3 --rate 2000 --window 30
    python bench/c2s_side_by_side.py --only iim --tree DIR  # iim from another checkout

Theory of operation
-------------------
One invocation runs both servers, one at a time on the same machine, each
fresh for every round, in alternating order (round 1: iim then Prosody;
round 2: Prosody then iim; ...), and reports the median of the rounds.
In every run the same Tsung scenario (bench/tsung/chat.xml) logs in
``--users`` users (tsung1..N) at 100 a second from 100 loopback addresses:
STARTTLS, SASL PLAIN, bind, initial presence, roster get, then silence for
``WAIT`` seconds, then chat messages to online users at ``--rate`` messages a
second in all (each user one every users/rate seconds on average).

*KB per user*: (VmRSS of the server process ``--settle`` s after the last
login - VmRSS idle before Tsung started) / users, read while every user is
silent. iim's sessions release their parsers on the stanza watchdog's tick
(2 s after bind, then every ``stanza_timeout / 4``, 15 s by default) and trim
the heap once logins have been quiet for 17 s (iim/server/heap.py), so the
default settle is 25 s; Prosody gets the same wait.

*CPU per message*: the server process's user + system CPU time
(/proc/PID/stat) over ``--window`` seconds in the middle of the chat phase,
divided by the messages Tsung sent in that time. Tsung on two shared cores
does not quite keep the nominal rate (1,640-1,960 of 2,000 msg/s in the
runs of bench/MEMORY.md, and not the same for both servers), so the count is Tsung's own: its
``request_noack`` totals, dumped every 10 s with a timestamp in tsung.log,
give the rate actually sent between the first and last dump inside the
window; CPU seconds per second over the window divided by that rate is the
figure. Tsung runs on the same two cores, so the machine's 1-minute load is
printed beside each figure.

The servers. iim: the real ``iim.server`` main (bench/memory.py ``--serve``),
defaults except the bench's paths, log level INFO. Prosody: Debian's
``prosody -F`` as our own instance (a configuration, data folder, log,
certificate and key of its own in the run's folder, as tests/prosodylive.py
does; never the system service), modules roster, saslauth, tls, disco, ping,
posix, ``c2s_require_encryption``, epoll backend, log level info,
``authentication = "internal_plain"`` (accounts written as files before the
start, where 1,000 ``prosodyctl register`` would take minutes; Tsung logs in
with PLAIN either way). Both use the certificate of iim's ``dev-setup``
and TLS 1.3 (TLS_AES_256_GCM_SHA384), as Tsung negotiates it.

A progress line (phase, users online, server RSS) runs on stderr. A run
that fails (not every user online before the chats begin, Tsung gone) is
reported with its logs kept, and the other runs go on. Every process
started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import memory                                           # noqa: E402
from memory import DOMAIN, Server, create_users, progress, vm_rss_kb   # noqa: E402

PROSODY = shutil.which("prosody") or "/usr/bin/prosody"
WAIT = 90                   # s of silence after each login, before its chats
SOURCES = 100               # Tsung's loopback addresses (iim counts its limits per source)
ARRIVAL_RATE = 100          # logins per second
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sent_rate(folder: Path, start: float, end: float) -> float:
    """Messages a second Tsung sent between its first and last stats dump
    inside [start, end] (``request_noack``: the chats; the initial presences
    were long before)."""
    dumps, at = [], None
    for path in folder.glob("*/tsung.log"):
        for line in path.read_text().splitlines():
            if line.startswith("# stats: dump at "):
                at = int(line.split()[-1])
            elif line.startswith("stats: request_noack ") and at is not None:
                dumps.append((at, int(line.split()[-1])))
    inside = [(t, n) for t, n in sorted(dumps) if start <= t <= end + 1]
    if len(inside) < 2:
        raise SystemExit(f"fewer than two Tsung dumps inside the window: {dumps[-8:]}")
    (ta, na), (tb, nb) = inside[0], inside[-1]
    return (nb - na) / (tb - ta)


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- the servers ---------------------------------------------------------------------------



def prosody_config(bench: str, folder: Path, data: Path, port: int, cert: Path, key: Path,
                   *, listeners: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> list[str]:
    """The lines of our own Prosody's prosody.cfg.lua for one bench run: c2s on
    ``port`` (STARTTLS required, ``cert``/``key``), accounts as files under
    ``data``, nothing else listening but ``listeners``, the modules a Tsung or
    xmpp.js user needs and ``modules``."""
    enabled = ", ".join(f'"{m}"' for m in ("roster", "saslauth", "tls", "disco", "posix",
                                            "ping", *modules))
    return [
        f"-- written by bench/{bench}.py for one run",
        "run_as_root = true",
        f'pidfile = "{folder}/prosody.pid"',
        f'data_path = "{data}"',
        f'certificates = "{folder}/certs"',
        f'log = {{ {{ levels = {{ min = "info" }}, to = "file", '
        f'filename = "{folder}/prosody.log" }} }}',
        'interfaces = { "127.0.0.1" }',
        f"c2s_ports = {{ {port} }}",
        "s2s_ports = { }", "c2s_direct_tls_ports = { }", "s2s_direct_tls_ports = { }",
        "legacy_ssl_ports = { }",
        *listeners,
        'network_backend = "epoll"',
        f"modules_enabled = {{ {enabled} }}",
        'authentication = "internal_plain"',
        "c2s_require_encryption = true",
        f'ssl = {{ certificate = "{cert}", key = "{key}" }}',
        f'VirtualHost "{DOMAIN}"',
    ]

class Iim:
    name = "iim"

    def __init__(self, folder: Path, args) -> None:
        from attacks import free_port
        self.folder = folder
        folder.mkdir()
        shutil.copytree(args.dev, folder / "dev")
        self.server = Server(folder, free_port(), False, args.tree, [])
        shutil.copy(args.accounts, folder / "iim.db")
        self.port = self.server.port

    def start(self) -> None:
        self.server.start()

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def online(self) -> int:
        return self.server.online()

    def stop(self) -> None:
        self.server.stop()


class Prosody:
    """Our own ``prosody -F`` (see the module docstring), on 127.0.0.1:port."""

    name = "prosody"

    def __init__(self, folder: Path, args) -> None:
        from attacks import free_port
        self.folder, self.port, self.proc = folder, free_port(), None
        data = folder / "data"
        (data / DOMAIN / "accounts").mkdir(parents=True)
        (folder / "certs").mkdir()
        for i in range(1, args.users + 1):
            (data / DOMAIN / "accounts" / f"tsung{i}.dat").write_text(
                f'return {{\n\t["password"] = "tsungpw{i}";\n}};\n')
        cert, key = folder / "localhost.crt", folder / "localhost.key"
        cert.write_bytes(args.cert_pem)
        key.write_bytes(args.key_pem)
        key.chmod(0o600)
        lines = prosody_config("c2s_side_by_side", folder, data, self.port, cert, key)
        self.config = folder / "prosody.cfg.lua"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        from attacks import _die_with_parent
        from live import listening
        with (self.folder / "prosody.out").open("wb") as out:
            self.proc = subprocess.Popen([PROSODY, "-F", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.folder, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while not listening("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("prosody did not start: "
                                 + (self.folder / "prosody.out").read_text()[-2000:])
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def online(self) -> int:
        path = self.folder / "prosody.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text.count("Authenticated as ")

    def stop(self) -> None:
        from attacks import stop_process
        stop_process(self.proc)


def chat_tsung(folder: Path, args, port: int, cafile: Path):
    from attacks import Tsung, free_port

    class ChatTsung(Tsung):
        def __init__(self) -> None:
            import secrets
            self.folder = folder / "tsung"
            self.folder.mkdir()
            self.node = f"iimside{os.getpid()}x{port}@localhost"
            self.cookie = secrets.token_hex(16)
            self.dist_port = free_port()
            self.proc = None
            ips = "\n".join(f'      <ip value="127.0.1.{i + 1}"/>' for i in range(SOURCES))
            interval = args.users / args.rate
            chats = int((args.window + args.arrival_seconds + 30) / interval) + 1
            text = Template((HERE / "tsung" / "chat.xml").read_text()).substitute(
                users=args.users, maxusers=args.users + 100, ips=ips, port=port,
                arrival_seconds=args.arrival_seconds, arrival_rate=ARRIVAL_RATE,
                domain=DOMAIN, cafile=str(cafile), wait=WAIT, chats=chats,
                chat_interval=f"{interval:g}", chat_size=100, hold=3600, duration=7200)
            self.config = self.folder / "chat.xml"
            self.config.write_text(text)

    return ChatTsung()


# -- one run ---------------------------------------------------------------------------------


async def one_run(kind, folder: Path, args) -> dict:
    server = kind(folder, args)
    server.start()
    tsung = None
    try:
        await asyncio.sleep(2)
        idle = vm_rss_kb(server.pid)
        tsung = chat_tsung(folder, args, server.port, args.dev / "ca.pem")
        tsung.start()
        began = time.monotonic()
        while (online := server.online()) < args.users:
            progress(f"{server.name}: online {online}/{args.users}  RSS "
                     f"{vm_rss_kb(server.pid) / 1024:.1f} MB")
            if not tsung.alive():
                raise SystemExit(f"Tsung ended early: {tsung.output()[-1500:]}")
            if time.monotonic() - began > WAIT - args.settle - 5:
                raise SystemExit(f"{server.name}: only {online} of {args.users} online "
                                 f"before the chats would start")
            await asyncio.sleep(0.5)
        logged_in = time.monotonic() - began
        for left in range(int(args.settle), 0, -1):
            progress(f"{server.name}: {args.users} online, settling {left} s  RSS "
                     f"{vm_rss_kb(server.pid) / 1024:.1f} MB")
            await asyncio.sleep(1)
        loaded, load_mem = vm_rss_kb(server.pid), load1()
        # every user's chats have begun by began + arrival + WAIT (+ slack)
        start = began + args.arrival_seconds + WAIT + 5
        while (left := start - time.monotonic()) > 0:
            progress(f"{server.name}: chats begin in {left:.0f} s")
            await asyncio.sleep(min(1.0, left))
        cpu0, t0, wall0 = cpu_seconds(server.pid), time.monotonic(), time.time()
        while (left := t0 + args.window - time.monotonic()) > 0:
            progress(f"{server.name}: {args.rate} msg/s, measuring, {left:.0f} s left  RSS "
                     f"{vm_rss_kb(server.pid) / 1024:.1f} MB")
            await asyncio.sleep(min(1.0, left))
        cpu1, t1, wall1 = cpu_seconds(server.pid), time.monotonic(), time.time()
        if not tsung.alive():
            raise SystemExit(f"Tsung ended during the chats: {tsung.output()[-1500:]}")
        await asyncio.sleep(11)                 # the dump after the window
        rate = sent_rate(tsung.folder, wall0, wall1)
        messages = rate * (t1 - t0)
        return {"server": server.name, "idle_kb": idle, "loaded_kb": loaded,
                "kb_per_user": (loaded - idle) / args.users, "login_seconds": logged_in,
                "cpu_seconds": cpu1 - cpu0, "messages": messages,
                "us_per_message": (cpu1 - cpu0) / messages * 1e6,
                "load_at_memory": load_mem, "load_at_cpu": load1()}
    finally:
        progress("")
        if tsung is not None:
            tsung.stop()
        server.stop()


def prepare(args, folder: Path) -> None:
    """Certificates (iim's dev-setup), the PEM pair for Prosody, iim's accounts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    from iim.keys.passwords import read_password_file
    args.dev = folder / "dev"
    subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir", str(args.dev)],
                   check=True, capture_output=True, cwd=folder)
    password = read_password_file(args.dev / "sslpassword.conf", check_mode=False).password
    key, cert, chain = pkcs12.load_key_and_certificates(
        (args.dev / "server-keystore.p12").read_bytes(), password.encode())
    args.key_pem = key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    args.cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM)
                             for c in [cert, *(chain or [])])
    args.accounts = folder / "accounts.db"
    create_users(args.accounts, args.users, lambda i: (f"tsung{i + 1}", f"tsungpw{i + 1}"))


def summary(runs: list[dict], args) -> None:
    print(f"\n{args.users} users, {args.rate} msg/s, medians of {args.rounds} rounds "
          f"(each: KB per user / CPU µs per message / load 1-min at the readings)")
    names = [name for name in ("iim", "prosody") if any(r["server"] == name for r in runs)]
    medians = {}
    for name in names:
        mine = [r for r in runs if r["server"] == name]
        kb = statistics.median(r["kb_per_user"] for r in mine)
        us = statistics.median(r["us_per_message"] for r in mine)
        medians[name] = (kb, us)
        each = "; ".join(f"{r['kb_per_user']:.1f} / {r['us_per_message']:.0f} / "
                         f"{r['load_at_memory']:.1f},{r['load_at_cpu']:.1f}" for r in mine)
        print(f"  {name:<8} {kb:6.1f} KB per user  {us:6.0f} µs per message   ({each})")
    if len(medians) == 2:
        (ki, ui), (kp, up) = medians["iim"], medians["prosody"]
        print(f"  iim / Prosody: memory {ki / kp:.2f}x, CPU per message {ui / up:.2f}x")


async def main_async(args, folder: Path) -> list[dict]:
    kinds = [k for k in (Iim, Prosody) if args.only in (None, k.name)]
    runs = []
    for rnd in range(args.rounds):
        order = kinds if rnd % 2 == 0 else kinds[::-1]
        for kind in order:
            sub = folder / f"r{rnd + 1}-{kind.name}"
            try:
                run = await one_run(kind, sub, args)
            except SystemExit as exc:           # one failed run: said, kept, the rest goes on
                kept = Path(tempfile.gettempdir()) / f"c2s-side-failed-{sub.name}"
                shutil.copytree(sub, kept, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.db", "dev", "data"))
                print(f"\rround {rnd + 1} {kind.name:<8}: FAILED: {exc} (logs in {kept})",
                      flush=True)
                continue
            run["round"] = rnd + 1
            runs.append(run)
            print(f"\rround {rnd + 1} {kind.name:<8}: {run['kb_per_user']:.1f} KB per user "
                  f"(RSS {run['idle_kb'] / 1024:.1f} -> {run['loaded_kb'] / 1024:.1f} MB, "
                  f"logins {run['login_seconds']:.0f} s), {run['us_per_message']:.0f} µs per "
                  f"message ({run['cpu_seconds']:.2f} s CPU / {run['messages']:.0f}); load "
                  f"{run['load_at_memory']:.1f} / {run['load_at_cpu']:.1f}", flush=True)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="messages per second in all")
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds of the chat phase the CPU is measured over")
    parser.add_argument("--settle", type=float, default=25.0,
                        help="seconds between the last login and the memory reading")
    parser.add_argument("--only", choices=("iim", "prosody"))
    parser.add_argument("--tree", help="run iim from this checkout")
    parser.add_argument("--json", help="write every run here")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args(argv)
    # the phase ends at maxnumber users; a loaded Tsung launches late, so give it room
    args.arrival_seconds = 2 * -(-args.users // ARRIVAL_RATE) + 10
    sys.path.insert(0, str(HERE.parent / "tests"))       # live.listening
    from iim.limits import raise_nofile
    raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="iim-side-"))
    try:
        prepare(args, folder)
        runs = asyncio.run(main_async(args, folder))
        summary(runs, args)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    finally:
        print("\r", end="", file=sys.stderr)
        if args.keep:
            print(f"run folder kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
