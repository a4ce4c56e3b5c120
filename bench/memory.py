"""Memory per connected STARTTLS user, and where it goes (issue 14, item 1).

    python bench/memory.py --users 1000                     # RSS per user, own client
    python bench/memory.py --users 1000 --client tsung      # the same login by Tsung
    python bench/memory.py --users 1000 --trace             # + breakdown by owner
    python bench/memory.py --users 1000 --cycles 5          # + churn: log out, log in again
    python bench/memory.py --users 1000 --tree DIR          # the server from another checkout
    python bench/memory.py --users 1000 --trim              # malloc_trim(0) before each reading

Theory of operation
-------------------
*The figure that counts* is the server process's RSS (``VmRSS``): (RSS with
N users logged in - RSS idle) / N, read on a real server process, 2 s after
the last login (``SETTLE``). A user here is what Tsung's XMPP session does
(bench/tsung/login.xml): connect, STARTTLS, SASL, bind, initial presence,
roster get, then stay connected and silent. ``--client own`` does the same
with the project's client (bench/benchclient.py: SCRAM-SHA-256 where Tsung
uses PLAIN; the server drops either mechanism's state after success) from
addresses 127.1.x.y; ``--client tsung`` runs Tsung from 127.0.1.x and counts
the users online from the server's log lines.

The server is ``python bench/memory.py --serve``: the real ``iim.server``
main in a process of its own, which on SIGUSR1 writes a report (RSS,
glibc's ``mallinfo2``, and with ``--trace`` a tracemalloc snapshot grouped
by owner) to a JSON file. Before each report it runs ``gc.collect()``.

*The breakdown* (``--trace``): the server runs with tracemalloc (25 frames)
and ``PYTHONMALLOC=malloc`` (tracing starts at the idle reading), so that every Python allocation goes through
glibc's malloc and ``mallinfo2().uordblks`` counts Python and C allocations
alike. A traced block is charged to the innermost frame that belongs to a
known owner (``OWNERS``: iim modules by role, ``ssl.py``, asyncio, ...).
What tracemalloc cannot see, C allocations that do not go through Python's
allocator (OpenSSL's SSL objects, record buffers and keys above all; also
SQLite's page cache, bounded and not per user), is the growth of
``uordblks`` minus the traced growth, minus glibc's per-chunk overhead on
the traced blocks (computed from their sizes) and minus tracemalloc's own
tables (``get_tracemalloc_memory``). The traced run's RSS is larger than an
untraced run's (tracemalloc's tables, malloc instead of pymalloc): quote the
RSS of an untraced run.

``--tree DIR`` runs the server from another checkout (a prototype in a
scratch copy: ``git worktree add``), the clients stay this tree's.

Every process started is stopped on exit (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DOMAIN = "localhost"
SETTLE = 2.0                # seconds between the last login (or logout) and a reading
SETTLE_AFTER_LOGOUT = 22.0  # the server trims the heap once logins and logouts stopped for
                            # stanza_timeout / 4 + 2 s (17 s by default; iim/server/heap.py)

#: Owner of a traced allocation: the first rule that matches a frame, frames
#: read from the innermost outwards (so the c2s session's own attributes are
#: the session's, the parser it builds in stream.py is the parser's).
OWNERS = [
    ("iim/tlsbio.py", "TLS: SSLObject + MemoryBIO pair (Python side)"),
    ("/ssl.py", "TLS: SSLObject + MemoryBIO pair (Python side)"),
    ("iim/xmpp/xml.py", "XML parser (expat + TreeBuilder)"),
    ("xml/etree/", "XML parser (expat + TreeBuilder)"),
    ("iim/xmpp/stream.py", "stream core (ServerStream)"),
    ("iim/xmpp/server_stream.py", "stream core (ServerStream)"),
    ("iim/xmpp/sasl.py", "SASL"),
    ("iim/xmpp/jid.py", "JIDs"),
    ("iim/server/c2s.py", "c2s session (ClientSession, timers)"),
    ("iim/server/listener.py", "socket carrier + protocol (listener.py)"),
    ("iim/server/admission.py", "admission / negotiating sets"),
    ("iim/server/roster.py", "roster cache"),
    ("iim/server/presence.py", "presence maps"),
    ("iim/server/sessions.py", "router: session tables"),
    ("iim/server/router.py", "router: session tables"),
    ("iim/server/storage.py", "storage (SQLite results)"),
    ("iim/server/", "other iim/server"),
    ("iim/", "other iim"),
    ("asyncio/", "asyncio transport + buffers + handles"),
    ("selectors.py", "asyncio transport + buffers + handles"),
    ("logging/", "logging"),
]
UNTRACED = "C, not traced: OpenSSL (SSL objects, buffers, keys) + SQLite cache"


# ---------------------------------------------------------------------------
# The server side: python bench/memory.py --serve CONF REPORT [--trace]


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def mallinfo2() -> dict:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = MallInfo2
    info = fn()
    return {name: getattr(info, name) for name, _ in MallInfo2._fields_}


def vm_rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def owner_of(traceback) -> str:
    for frame in reversed(traceback):           # innermost first (tracemalloc: oldest first)
        name = frame.filename
        for needle, owner in OWNERS:
            if needle in name:
                return owner
    return "other (interpreter, stdlib)"


def chunk_overhead(size: int) -> int:
    """glibc: a chunk is the request plus 8 bytes, rounded up to 16, at least 32."""
    return max(32, (size + 8 + 15) & ~15) - size


def pymalloc_stats() -> dict:
    """pymalloc's arenas (``sys._debugmallocstats``, which writes to fd 2): bytes in
    allocated blocks, in free blocks of used pools, in unused pools, and the arenas'
    total. Empty when pymalloc is off (``PYTHONMALLOC=malloc``)."""
    import re
    keys = {"# bytes in allocated blocks": "allocated", "# bytes in available blocks":
            "available", "unused pools": "unused_pools", "Total": "total"}
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out: dict[str, int] = {}
    for line in text.splitlines():
        for needle, key in keys.items():
            if key not in out and needle in line and "=" in line:
                out[key] = int(re.sub(r"[^0-9]", "", line.split("=")[-1]) or 0)
    return out


def report(path: Path, trace: bool) -> None:
    import tracemalloc
    if trace and not tracemalloc.is_tracing():
        tracemalloc.start(25)           # at the idle reading: imports untraced (and fast)
    gc.collect()
    if os.environ.get("IIM_MEMORY_TRIM"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    out = {"rss_kb": vm_rss_kb(), "mallinfo": mallinfo2(), "types": type_counts(),
           "pymalloc": {} if trace else pymalloc_stats()}
    if trace and tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        owners: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        overhead = 0
        known: dict = {}
        for t in snapshot.traces:
            owner = known.get(t.traceback)
            if owner is None:
                owner = known[t.traceback] = owner_of(t.traceback)
            cell = owners[owner]
            cell[0] += t.size
            cell[1] += 1
            overhead += chunk_overhead(t.size)
        out["owners"] = {k: {"bytes": v[0], "blocks": v[1]} for k, v in owners.items()}
        out["traced_bytes"] = sum(v[0] for v in owners.values())
        out["chunk_overhead"] = overhead
        out["tracemalloc_memory"] = tracemalloc.get_tracemalloc_memory()
        out["top_lines"] = [(str(s.traceback[-1]), s.size, s.count)
                            for s in snapshot.statistics("lineno")[:40]]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.rename(path)


def type_counts() -> dict[str, int]:
    """Instances of the per-session types worth counting (gc-tracked ones)."""
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return dict(counts.most_common(40))


def serve(conf: str, report_path: str, trace: bool) -> int:
    path = Path(report_path)
    signal.signal(signal.SIGUSR1, lambda *_: report(path, trace))
    from iim.server.__main__ import main
    return main(["-c", conf])


# ---------------------------------------------------------------------------
# The parent: keystore, accounts, server process, clients


class Server:
    def __init__(self, folder: Path, port: int, trace: bool, tree: str | None,
                 extra: list[str]) -> None:
        self.folder, self.port, self.trace, self.tree = folder, port, trace, tree
        self.trim = False
        self.proc: subprocess.Popen | None = None
        self.report_path = folder / "report.json"
        (folder / "iim.conf").write_text("\n".join([
            f'iim_server.domainname = "{DOMAIN}"',
            f'iim_server.port = "127.0.0.1:{port}"',
            'iim_server.usemuxport = "false"',
            'iim_server.database = "iim.db"',
            'iim_server.sslkeystore = "dev/server-keystore.p12"',
            'iim_server.keystorepasswordfile = "dev/sslpassword.conf"',
            'iim.log.iim_server.url = "server.log"',
            'iim.log.iim_server.severity = "INFO"'] + extra) + "\n")

    def env(self) -> dict:
        from load import same_iim_env
        env = same_iim_env()
        if self.tree:
            env["PYTHONPATH"] = str(Path(self.tree).resolve())
        if self.trace:
            env["PYTHONMALLOC"] = "malloc"
        if self.trim:
            env["IIM_MEMORY_TRIM"] = "1"
        return env

    def start(self) -> None:
        from attacks import _die_with_parent
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve",
               str(self.folder / "iim.conf"), str(self.report_path)]
        if self.trace:
            cmd.append("--trace")
        with open(self.folder / "server.stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                         cwd=self.folder, env=self.env(),
                                         start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while "serving" not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start: "
                                 + (self.folder / "server.stderr").read_text()[-2000:])
            time.sleep(0.05)

    def log_text(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def online(self) -> int:
        text = self.log_text()
        return text.count(": session ") - text.count(": logout ")

    def rss_kb(self) -> int:
        return vm_rss_kb(self.proc.pid)

    async def report(self) -> dict:
        self.report_path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 900
        while not self.report_path.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no report from the server in 900 s")
            await asyncio.sleep(0.1)
        return json.loads(self.report_path.read_text())

    def stop(self) -> None:
        from attacks import stop_process
        stop_process(self.proc)


def progress(text: str) -> None:
    print(f"\r  {text:<76}", end="", file=sys.stderr, flush=True)


async def own_login(args, server: Server, ca: Path) -> list:
    from benchclient import BenchUser, source_address
    from iim.keys.context import client_context
    from iim.xmpp.jid import JID

    class Silent(BenchUser):
        def _message(self, stanza) -> None:
            pass

        def _ended_after_login(self, why: str) -> None:
            pass

    from cryptography import x509
    context = client_context(None, anchors=[x509.load_pem_x509_certificate(ca.read_bytes())])
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    clients, done = [], 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            _, client = await loop.create_connection(
                lambda: Silent(JID.parse(f"m{i}@{DOMAIN}/r"), f"pw{i}", context),
                "127.0.0.1", server.port, local_addr=source_address(i))
            clients.append(client)
            await asyncio.wait_for(client.ready, 60)
            done += 1

    async def show() -> None:
        while True:
            progress(f"logged in {done}/{args.users}  server RSS "
                     f"{server.rss_kb() / 1024:.1f} MB")
            await asyncio.sleep(1)

    shower = asyncio.create_task(show())
    try:
        await asyncio.gather(*(one(i) for i in range(args.users)))
    finally:
        shower.cancel()
    return clients


async def own_logout(clients: list) -> None:
    for client in clients:
        client.logout()
    await asyncio.wait([c.gone for c in clients], timeout=30)
    for client in clients:
        client.hang_up()


def create_users(db: Path, count: int, name) -> None:
    from iim.server.storage import Storage
    with Storage.open(db) as storage:
        for i in range(count):
            storage.add_user(*name(i))
            if i % 100 == 0:
                progress(f"accounts {i}/{count}")


async def wait_online(server: Server, want: int, tsung=None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (online := server.online()) != want:
        progress(f"online {online}/{want}  server RSS {server.rss_kb() / 1024:.1f} MB")
        if tsung is not None and not tsung.alive() and want:
            raise SystemExit(f"Tsung ended early: {tsung.output()[-1500:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {online} of {want} online after {timeout} s")
        await asyncio.sleep(0.5)


def tsung_runner(folder: Path, args, port: int, cafile: Path, cycle: int):
    from attacks import Tsung

    class LoginTsung(Tsung):
        def __init__(self) -> None:
            import secrets
            from attacks import free_port
            from string import Template
            self.folder = folder / f"tsung{cycle}"
            self.folder.mkdir()
            self.node = f"iimmemory{os.getpid()}c{cycle}@localhost"
            self.cookie = secrets.token_hex(16)
            self.dist_port = free_port()
            self.proc = None
            ips = "\n".join(f'      <ip value="127.0.1.{i + 1}"/>'
                            for i in range(args.tsung_sources))
            text = Template((HERE / "tsung" / "login.xml").read_text()).substitute(
                users=args.users, maxusers=args.users + 100, ips=ips, port=port,
                arrival_seconds=2 * -(-args.users // args.arrival_rate) + 10,   # room for lag
                arrival_rate=args.arrival_rate, domain=DOMAIN, cafile=str(cafile),
                hold=args.hold, duration=args.hold + 600)
            self.config = self.folder / "login.xml"
            self.config.write_text(text)

    return LoginTsung()


def per_user(before: dict, after: dict, users: int) -> dict:
    """KB per user by owner, and the C part tracemalloc cannot see."""
    rows = {"RSS (whole process)": (after["rss_kb"] - before["rss_kb"]) * 1024 / users}
    if "owners" not in after:
        return rows
    owners = set(before["owners"]) | set(after["owners"])
    for owner in owners:
        delta = (after["owners"].get(owner, {"bytes": 0})["bytes"]
                 - before["owners"].get(owner, {"bytes": 0})["bytes"])
        rows[owner] = delta / users
    traced = after["traced_bytes"] - before["traced_bytes"]
    overhead = after["chunk_overhead"] - before["chunk_overhead"]
    own = after["tracemalloc_memory"] - before["tracemalloc_memory"]
    used = after["mallinfo"]["uordblks"] - before["mallinfo"]["uordblks"]
    rows["malloc chunk overhead of the traced blocks"] = overhead / users
    rows[UNTRACED] = (used - traced - overhead - own) / users
    rows["(tracemalloc's own tables, not the server's)"] = own / users
    return rows


def split_line(before: dict, after: dict, users: int) -> str:
    """Where the RSS growth sits, KB per user: glibc's heap in use and free (arena),
    glibc's mmapped chunks, pymalloc's blocks in use and free (its arenas are mmapped
    by CPython itself, outside glibc's counts)."""
    def grown(group: str, key: str) -> float:
        return (after.get(group, {}).get(key, 0) - before.get(group, {}).get(key, 0)) \
            / users / 1024
    parts = [("malloc in use", grown("mallinfo", "uordblks")),
             ("malloc free", grown("mallinfo", "fordblks")),
             ("of which mmapped", grown("mallinfo", "hblkhd"))]
    if after.get("pymalloc"):
        parts += [("pymalloc in use", grown("pymalloc", "allocated")),
                  ("pymalloc arenas", grown("pymalloc", "total"))]
    return ", ".join(f"{name} {value:+.1f}" for name, value in parts) + " KB per user"


def print_rows(title: str, rows: dict, blocks: dict | None = None) -> None:
    print(f"\n{title}")
    total = 0.0
    for name, value in sorted(rows.items(), key=lambda kv: -kv[1]):
        if name.startswith("RSS") or name.startswith("("):
            continue
        total += value
        extra = f"   {blocks[name]:7.1f} blocks" if blocks and name in blocks else ""
        print(f"  {name:<60} {value / 1024:7.2f} KB{extra}")
    print(f"  {'sum (malloc in use, per user)':<60} {total / 1024:7.2f} KB")
    for name, value in rows.items():
        if name.startswith("RSS") or name.startswith("("):
            print(f"  {name:<60} {value / 1024:7.2f} KB")


async def run(args, folder: Path) -> dict:
    from attacks import free_port
    extra = [f'iim_server.{line}' for line in args.set]
    server = Server(folder, free_port(), args.trace, args.tree, extra)
    server.trim = args.trim
    if args.client == "tsung":
        name = lambda i: (f"tsung{i + 1}", f"tsungpw{i + 1}")     # noqa: E731
    else:
        name = lambda i: (f"m{i}", f"pw{i}")                      # noqa: E731
    subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                    str(folder / "dev")], check=True, capture_output=True, cwd=folder,
                   env=server.env())
    create_users(folder / "iim.db", args.users, name)
    server.start()
    tsung = None
    results = {"cycles": []}
    try:
        await asyncio.sleep(SETTLE)
        idle = await server.report()
        results["idle"] = idle
        for cycle in range(1, args.cycles + 1):
            if args.client == "tsung":
                tsung = tsung_runner(folder, args, server.port, folder / "dev" / "ca.pem",
                                     cycle)
                tsung.start()
                await wait_online(server, args.users, tsung)
            else:
                clients = await own_login(args, server, folder / "dev" / "ca.pem")
            await asyncio.sleep(args.settle)
            loaded = await server.report()
            rows = per_user(idle, loaded, args.users)
            progress("")
            print(f"\rcycle {cycle}: {args.users} users online, RSS idle "
                  f"{idle['rss_kb'] / 1024:.1f} MB -> {loaded['rss_kb'] / 1024:.1f} MB: "
                  f"{rows['RSS (whole process)'] / 1024:.1f} KB per user")
            print("  " + split_line(idle, loaded, args.users))
            entry = {"loaded": loaded, "rows": rows}
            if cycle < args.cycles:
                if tsung is not None:
                    tsung.stop()
                    tsung = None
                else:
                    await own_logout(clients)
                await wait_online(server, 0)
                await asyncio.sleep(SETTLE_AFTER_LOGOUT)
                entry["after_logout"] = await server.report()
                print(f"cycle {cycle}: all logged out, RSS "
                      f"{entry['after_logout']['rss_kb'] / 1024:.1f} MB")
            results["cycles"].append(entry)
        if args.trace:
            last = results["cycles"][-1]
            blocks = {k: (last["loaded"]["owners"].get(k, {"blocks": 0})["blocks"]
                          - idle["owners"].get(k, {"blocks": 0})["blocks"]) / args.users
                      for k in last["rows"]}
            print_rows(f"per user, by owner (traced run: PYTHONMALLOC=malloc, tracemalloc; "
                       f"cycle {args.cycles})", last["rows"], blocks)
            print("\ntypes with the most instances (gc-tracked), growth per user:")
            types = last["loaded"]["types"]
            for t, n in sorted(types.items(), key=lambda kv: -kv[1])[:25]:
                grown = (n - idle["types"].get(t, 0)) / args.users
                if grown >= 0.5:
                    print(f"  {t:<40} {grown:6.1f}")
    finally:
        progress("")
        print("\r", end="", file=sys.stderr)
        if tsung is not None:
            tsung.stop()
        server.stop()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("CONF", "REPORT"), help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--client", choices=("own", "tsung"), default="own")
    parser.add_argument("--cycles", type=int, default=1, help="log in and out this many times")
    parser.add_argument("--trace", action="store_true",
                        help="tracemalloc + PYTHONMALLOC=malloc in the server: the breakdown")
    parser.add_argument("--tree", help="run the server from this checkout")
    parser.add_argument("--trim", action="store_true",
                        help="malloc_trim(0) in the server before each reading (what a trim "
                             "after a login burst would give back)")
    parser.add_argument("--set", action="append", default=[], metavar='NAME="VALUE"',
                        help='an iim_server parameter for the run, e.g. stanza_timeout="8"')
    parser.add_argument("--settle", type=float, default=SETTLE,
                        help="seconds between the last login and the reading")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tsung-sources", type=int, default=50)
    parser.add_argument("--arrival-rate", type=int, default=100, help="Tsung logins per second")
    parser.add_argument("--hold", type=int, default=3600,
                        help="seconds a Tsung user stays (it is stopped sooner)")
    parser.add_argument("--json", help="write every reading here")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve[0], args.serve[1], "--trace" in sys.argv)
    from iim.limits import raise_nofile
    raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="iim-memory-"))
    try:
        results = asyncio.run(run(args, folder))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if args.keep:
            print(f"run folder kept: {folder}")
        else:
            import shutil
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
