"""XMPP over WebSocket, side by side: iim's gateway, iim through the multiplexor,
Prosody 0.12's mod_websocket; load from xmpp.js (issue 15).

    python bench/web_side_by_side.py [--users 200] [--messages 6000] [--rounds 3]

Theory of operation
-------------------
Three targets, each started fresh for every run, in an order that rotates
from round to round (round 1: ws, mux, prosody; round 2: mux, prosody, ws;
...); the table holds the median of the rounds:

- ``iim ws``: ``python -m iim.server`` with the gateway on HTTPS
  (``wss://.../ws``, RFC 7395);
- ``iim mux``: the same server and ``python -m iim.mux`` in front of it
  (plain listener, ``usessl off``), the clients doing STARTTLS end to end
  through it (``xmpp://``);
- ``prosody ws``: Debian's ``prosody -F`` as our own instance (its own
  configuration, data, log and certificate in the run's folder, as
  bench/c2s_side_by_side.py runs it; never the system service) with
  mod_websocket on HTTPS (``wss://.../xmpp-websocket``), accounts as
  ``internal_plain`` files.

All use the same certificate (an ECDSA P-256 key made here) and TLS as Node
negotiates it (1.3). The load is xmpp.js (@xmpp/client, installed by ./dev
setup into .venv/node) under Node: bench/xmppjs_load.mjs logs ``--users``
users in (SASL as xmpp.js chooses, bind, initial presence), then ``--pairs``
senders send ``--messages`` chat messages in all to a partner each, at most
``--window`` per pair in flight.

Figures per run:

- *KB per session*: (RSS of the server, plus the multiplexor's processes for
  ``iim mux``, ``--settle`` s after the last login - RSS before the first) /
  users. iim releases idle parsers on the stanza watchdog's tick and trims
  its heap once logins were quiet for 17 s, hence the default 20 s; Prosody
  gets the same wait.
- *messages/s*: as xmpp.js saw them arrive (sent and received by the same
  Node process on the same two cores: a figure of the whole machine).
- *server CPU µs per message*: the server process's user + system time over
  the message phase / messages (logins excluded); for ``iim mux`` the
  multiplexor's processes are given apart.

The machine's load is printed beside each run: the figures are only
comparable within one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from c2s_side_by_side import prosody_config  # noqa: E402
from mux_side_by_side import free_port, rss_kb, stop, tree, wait_port  # noqa: E402
from web_gateway import DOMAIN, PASSWORD, add_users, cpu_seconds, keystore  # noqa: E402

PROSODY = shutil.which("prosody") or "/usr/bin/prosody"
NODE = shutil.which("node") or "/usr/bin/node"
MODULES = ROOT / ".venv" / "node" / "node_modules"
LOAD = HERE / "xmppjs_load.mjs"
TARGETS = ("iim ws", "iim mux", "prosody ws")


def progress(text: str) -> None:
    sys.stderr.write(f"\r{text:<100}")
    sys.stderr.flush()


def load1() -> float:
    return os.getloadavg()[0]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


# -- the targets ------------------------------------------------------------------------------


class Iim:
    """iim.server with the gateway; with ``mux``, python -m iim.mux in front of it."""

    def __init__(self, folder: Path, args, mux: bool) -> None:
        self.folder, self.mux = folder, mux
        self.port, self.http_port, self.link_port = free_port(), free_port(), free_port()
        self.mux_port = free_port()
        shutil.copy(args.db, folder / "iim.db")
        shutil.copy(args.keys / "server.p12", folder / "server.p12")
        shutil.copy(args.keys / "sslpassword.conf", folder / "sslpassword.conf")
        (folder / "iim.conf").write_text(
            f'iim_server.domainname = "{DOMAIN}"\n'
            f'iim_server.port = "127.0.0.1:{self.port}"\n'
            f'iim_server.usemuxport = "{"true" if mux else "false"}"\n'
            f'iim_mux.serverport = "127.0.0.1:{self.link_port}"\n'
            f'iim_server.httpport = "127.0.0.1:{self.http_port}"\n'
            'iim_server.sslkeystore = "server.p12"\n'
            'iim_server.database = "iim.db"\n'
            f'iim_server.max_unauthenticated_per_source = "{args.users + 10}"\n'
            'iim_server.accept_rate_per_source = "100000"\n'
            'iim.log.iim_server.url = "server.log"\n')
        (folder / "mux.conf").write_text(
            f'iim_mux.listenport = "127.0.0.1:{self.mux_port}"\n'
            f'iim_mux.serverport = "127.0.0.1:{self.link_port}"\n'
            'iim_mux.maxthreads = "2"\n'
            'iim_mux.usessl = "off"\n'
            'iim.log.iim_mux.url = "mux.log"\n')
        self.procs: list[subprocess.Popen] = []

    @property
    def service(self) -> str:
        if self.mux:
            return f"xmpp://127.0.0.1:{self.mux_port}"
        return f"wss://127.0.0.1:{self.http_port}/ws"

    def start(self) -> None:
        out = (self.folder / "server.out").open("wb")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "iim.server", "-c", str(self.folder / "iim.conf")],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        wait_port(self.http_port, self.procs, 30)
        if self.mux:
            out = (self.folder / "mux.out").open("wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "iim.mux", "-c", str(self.folder / "mux.conf")],
                cwd=self.folder, stdout=out, stderr=subprocess.STDOUT))
            wait_port(self.mux_port, self.procs, 30)
            deadline = time.monotonic() + 30
            log = self.folder / "mux.log"
            while (log.read_text() if log.exists() else "").count(" up to 127.0.0.1:") < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the multiplexor's links did not come up")
                time.sleep(0.1)

    @property
    def server_pids(self) -> list[int]:
        return [self.procs[0].pid]

    @property
    def helper_pids(self) -> list[int]:
        return tree(self.procs[1].pid) if self.mux else []

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


class Prosody:
    """Our own ``prosody -F`` with mod_websocket on HTTPS."""

    def __init__(self, folder: Path, args) -> None:
        self.folder = folder
        self.port, self.https_port = free_port(), free_port()
        data = folder / "data"
        accounts = data / DOMAIN / "accounts"
        accounts.mkdir(parents=True)
        (folder / "certs").mkdir()
        for i in range(args.users):
            (accounts / f"u{i}.dat").write_text(f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n')
        cert, key = args.keys / "server.crt", args.keys / "server.key"
        lines = prosody_config(
            "web_side_by_side", folder, data, self.port, cert, key,
            listeners=("http_ports = { }", f"https_ports = {{ {self.https_port} }}",
                       'https_interfaces = { "127.0.0.1" }',
                       f'https_ssl = {{ certificate = "{cert}", key = "{key}" }}'),
            modules=("websocket",))
        self.config = folder / "prosody.cfg.lua"
        self.config.write_text("\n".join(lines) + "\n")
        self.procs: list[subprocess.Popen] = []

    @property
    def service(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/xmpp-websocket"

    def start(self) -> None:
        out = (self.folder / "prosody.out").open("wb")
        self.procs.append(subprocess.Popen([PROSODY, "-F", "--config", str(self.config)],
                                           cwd=self.folder, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True))
        wait_port(self.https_port, self.procs, 30)

    @property
    def server_pids(self) -> list[int]:
        return [self.procs[0].pid]

    helper_pids: list[int] = []

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


# -- one run ----------------------------------------------------------------------------------


async def report_line(proc) -> dict:
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if not line:
        raise RuntimeError("xmpp.js ended: " + (await proc.stderr.read()).decode()[-1500:])
    event = json.loads(line)
    if event["event"] == "error":
        raise RuntimeError(f"xmpp.js: {event['message']}")
    return event


async def one_run(name: str, folder: Path, args) -> dict:
    folder.mkdir()
    target = Prosody(folder, args) if name.startswith("prosody") else \
        Iim(folder, args, mux=name.endswith("mux"))
    target.start()
    load = None
    try:
        await asyncio.sleep(2)
        pids = target.server_pids + target.helper_pids
        idle = rss_kb(pids)
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(args.keys / "ca.pem"),
               "XMPPJS_MODULES": str(MODULES)}
        load = await asyncio.create_subprocess_exec(
            NODE, "--experimental-websocket", "--no-warnings", str(LOAD), target.service,
            DOMAIN, "u", PASSWORD, str(args.users), str(args.pairs), str(args.messages),
            str(args.window), env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        progress(f"{name}: logging {args.users} users in")
        online = await report_line(load)
        for left in range(int(args.settle), 0, -1):
            progress(f"{name}: {args.users} online, settling {left} s")
            await asyncio.sleep(1)
        pids = target.server_pids + target.helper_pids
        loaded, load_mem = rss_kb(pids), load1()
        progress(f"{name}: {args.messages} messages")
        server0, helper0 = cpu_of(target.server_pids), cpu_of(target.helper_pids)
        load.stdin.write(b"go\n")
        await load.stdin.drain()
        done = await report_line(load)
        server_cpu = cpu_of(target.server_pids) - server0
        helper_cpu = cpu_of(target.helper_pids) - helper0
        load.stdin.write(b"quit\n")
        await load.stdin.drain()
        await asyncio.wait_for(load.wait(), 30)
        return {"target": name, "kb_per_session": (loaded - idle) / args.users,
                "login_seconds": online["seconds"],
                "messages_per_second": done["messages"] / done["seconds"],
                "server_us_per_message": server_cpu / done["messages"] * 1e6,
                "mux_us_per_message": helper_cpu / done["messages"] * 1e6
                if target.helper_pids else None,
                "load_at_memory": load_mem, "load_at_messages": load1()}
    finally:
        progress("")
        if load is not None and load.returncode is None:
            load.kill()
            await load.wait()
        target.stop()


# -- the report -------------------------------------------------------------------------------


def prepare(args, folder: Path) -> None:
    """The certificate (PKCS#12 for iim, PEM for Prosody), iim's accounts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    args.keys = folder / "keys"
    args.keys.mkdir()
    keystore(args.keys)
    key, cert, _ = pkcs12.load_key_and_certificates(
        (args.keys / "server.p12").read_bytes(), b"bench-store")
    (args.keys / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (args.keys / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (args.keys / "server.key").chmod(0o600)
    accounts = folder / "accounts"
    accounts.mkdir()
    add_users(accounts, args.users)
    args.db = accounts / "iim.db"


def median(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if run.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.1f}" if key == "kb_per_session" else \
        f"{statistics.median(values):.0f}"


def table(results: dict[str, list[dict]]) -> str:
    rows = [("KB per session", "kb_per_session"),
            ("messages/s (xmpp.js sent and received)", "messages_per_second"),
            ("server CPU µs per message", "server_us_per_message"),
            ("multiplexor CPU µs per message", "mux_us_per_message"),
            ("logins (s, all users)", "login_seconds")]
    names = [name for name in TARGETS if results.get(name)]
    out = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in rows:
        out.append(f"| {label} | " + " | ".join(median(results[n], key) for n in names) + " |")
    loads = ["; ".join(f"{n}: " + ", ".join(
        f"{r['load_at_memory']:.1f}/{r['load_at_messages']:.1f}" for r in results[n])
        for n in names)]
    out.append("")
    out.append(f"medians of {max(len(results[n]) for n in names)} runs each; 1-minute load at "
               f"the memory reading / after the messages, per target: {loads[0]}")
    return "\n".join(out)


async def main_async(args) -> int:
    results: dict[str, list[dict]] = {name: [] for name in args.targets}
    with tempfile.TemporaryDirectory(prefix="iim-web-side-") as tmp:
        folder = Path(tmp)
        prepare(args, folder)
        for round_ in range(args.rounds):
            order = args.targets[round_ % len(args.targets):] + \
                args.targets[:round_ % len(args.targets)]
            for name in order:
                try:
                    run = await one_run(name, folder / f"{round_}-{name.replace(' ', '-')}",
                                        args)
                except Exception as exc:             # reported; the other runs go on
                    print(f"round {round_ + 1} {name}: failed: {exc}", flush=True)
                    continue
                results[name].append(run)
                print(f"round {round_ + 1} {name}: " + json.dumps(
                    {k: round(v, 1) if isinstance(v, float) else v for k, v in run.items()}),
                      flush=True)
    print()
    print(table(results))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=20)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    args = parser.parse_args(argv)
    if not (MODULES / "@xmpp" / "client").is_dir():
        raise SystemExit("xmpp.js is not installed: ./dev setup installs it into .venv/node")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"python bench/web_side_by_side.py {' '.join(argv or sys.argv[1:])}  ({started}, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores)",
          flush=True)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
