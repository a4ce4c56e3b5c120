"""A soak through the multiplexor: memory, descriptors and latency minute by minute
(issue 14, item 3b).

    python bench/soak.py                              # 10,000 Tsung users, 1 msg/s each, 10 min
    python bench/soak.py --users 500 --minutes 2      # a small run

Theory of operation
-------------------
* **The server** (``python -m iim.server``, 127.0.0.1, the dev-setup keystore:
  STARTTLS offered) and **the multiplexor** (``python -m iim.mux --instances 2``,
  two relay threads each, ``iim_mux.maxsessions`` raised to ``--users`` per
  process so that either process could take everyone, ``iim_mux.stat_frequency``
  10 s); every per-source limit at its default, server and mux alike.
* **The load** comes from Tsung (Debian's ``tsung``, bench/tsung/soak.xml), run as
  bench/attacks.py runs it (own Erlang node, no epmd, no web GUI): users
  ``tsung1..N`` connect to the multiplexor from ``--sources`` addresses
  127.0.2.1-127.0.2.K in turn (``--users / --sources`` each, under
  ``iim_mux.maxsessions_per_source`` and the server's per-source limits), log
  in at ``--arrival-rate`` a second (STARTTLS end to end through the mux, SASL
  PLAIN, bind, presence, roster), then each sends a 100-byte chat message to a
  random online user every ``1 / --rate`` seconds on average (exponential
  think time). Messages are *stamped*: Tsung times each one it receives and
  reports every 10 s how many arrived and their mean and max latency
  (``xmpp_msg_latency``); ``request_noack`` counts what it sent.
* **Probes** (bench/benchclient.py, STARTTLS, through the same multiplexor from
  127.0.0.1): ``--probes`` pairs, in each one user sends the other a message
  every ``--probe-interval`` s and the other answers at once; the round trip
  is timed, so p50/p99 per minute come from a few thousand samples a minute
  that share every queue with Tsung's traffic. They are measurement, not load
  (10 pairs at 0.1 s: 200 messages a second).
* **Minutes** are counted from the moment every Tsung user is logged in (the
  server's log has N ``session tsung`` lines) plus ``--warmup`` s. At the end of
  each: server and mux RSS (``VmRSS``; the mux's is its supervisor plus its
  workers) and open descriptors (``/proc/PID/fd``), the CPU seconds each used
  in the minute, Tsung's messages sent and received, the probes' round trips.
  *Flat* compares every minute's RSS and descriptors with the first minute's.

* **The server's heap**: the server runs as ``python bench/soak.py --serve CONF
  DIR``, the real ``iim.server`` main in a process that on SIGUSR1 writes a
  heap report to DIR (RSS, glibc's ``mallinfo2``: bytes in use and free in
  the heap; pymalloc's blocks in use and arenas), read at each minute's end:
  RSS that grows with *in use* is objects kept (a leak or a queue), RSS that
  grows with *free* is the allocator keeping a high-water mark.
  ``--trace`` adds tracemalloc, started at minute 0 (after the ramp and the
  warm-up), so a snapshot holds only what was allocated since and is still
  alive; each minute's report lists the source lines whose live bytes grew
  most since the minute before. Tracing slows the server: a traced run finds
  growth, its latency and RSS figures are not the soak's.

RLIMIT_NOFILE: this script raises its soft limit to the hard one (Tsung, the
server and the mux inherit it; the server and the mux raise theirs too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template
from xml.etree.ElementTree import Element

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attacks import (TSUNG, TSUNG_VERSION, Tsung, _die_with_parent, _load_ca,  # noqa: E402
                     cpu_seconds, free_port, rss_kb)
from benchclient import BenchUser                      # noqa: E402
from faults import System                              # noqa: E402
from load import _revision, same_iim_env               # noqa: E402
from iim.keys.context import client_context            # noqa: E402
from iim.limits import raise_nofile                    # noqa: E402
from iim.server.storage import Storage                 # noqa: E402
from iim.xmpp.jid import JID                           # noqa: E402

DOMAIN = "localhost"


# ---------------------------------------------------------------------------
# The system and Tsung


class SoakSystem(System):
    def __init__(self, folder: Path, args) -> None:
        args.resume_timeout = 300
        super().__init__(folder, args)
        self.heap_dir = folder / "heap"
        self.heap_dir.mkdir()
        with (folder / "iim.conf").open("a") as conf:
            conf.write(f'iim_mux.maxsessions = "{args.users + 1000}"\n'
                       'iim_mux.stat_frequency = "10"\n')

    def setup(self, users: int) -> Path:
        super().setup(0)
        with Storage.open(self.folder / "iim.db") as storage:
            for i in range(1, users + 1):
                storage.add_user(f"tsung{i}", f"tsungpw{i}")
            for k in range(self.args.probes):
                for side in "ab":
                    storage.add_user(f"probe{k}{side}", f"probepw{k}{side}")
        return self.folder / "dev" / "ca.pem"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        if name != "server":
            return super()._spawn(name, argv)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve",
               str(self.folder / "iim.conf"), str(self.heap_dir)]
        if self.args.trace:
            cmd.append("--trace")
        with open(self.folder / f"{name}.stderr", "ab") as err:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                    cwd=self.folder, env=same_iim_env(),
                                    start_new_session=True, preexec_fn=_die_with_parent)

    async def heap_report(self, name: str) -> dict:
        """Ask the server for a heap report (SIGUSR1) and wait for it."""
        path = self.heap_dir / f"{name}.json"
        (self.heap_dir / "next").write_text(name)
        self.server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                return {}
            await asyncio.sleep(0.2)
        return json.loads(path.read_text())


# ---------------------------------------------------------------------------
# The server's side: python bench/soak.py --serve CONF DIR [--trace]


class _HeapReporter:
    """SIGUSR1: write DIR/<name>.json, the name read from DIR/next."""

    def __init__(self, folder: Path, trace: bool) -> None:
        self.folder, self.trace = folder, trace
        self.snapshot = None

    def __call__(self, *_) -> None:
        import gc
        import tracemalloc
        from memory import mallinfo2, pymalloc_stats, vm_rss_kb
        name = (self.folder / "next").read_text().strip()
        out: dict = {"rss_kb": vm_rss_kb(), "mallinfo": mallinfo2(),
                     "pymalloc": pymalloc_stats(), "gc_objects": len(gc.get_objects())}
        if self.trace:
            if not tracemalloc.is_tracing():
                tracemalloc.start(5)
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            out["traced_kb"] = sum(t.size for t in snapshot.traces) / 1024
            if self.snapshot is not None:
                out["grown"] = [
                    {"where": str(stat.traceback[-1]), "kb": round(stat.size_diff / 1024, 1),
                     "blocks": stat.count_diff, "live_kb": round(stat.size / 1024, 1),
                     "stack": [str(f) for f in stat.traceback[-6:]]}
                    for stat in snapshot.compare_to(self.snapshot, "traceback")[:15]]
            self.snapshot = snapshot
        tmp = self.folder / f"{name}.tmp"
        tmp.write_text(json.dumps(out))
        tmp.rename(self.folder / f"{name}.json")


def serve(conf: str, folder: str, trace: bool) -> int:
    signal.signal(signal.SIGUSR1, _HeapReporter(Path(folder), trace))
    from iim.server.__main__ import main
    return main(["-c", conf])


class SoakTsung(Tsung):
    """bench/attacks.py's Tsung node with bench/tsung/soak.xml."""

    def __init__(self, folder: Path, args, mux_port: int, cafile: Path) -> None:
        import secrets
        self.folder = folder / "tsung"
        self.folder.mkdir()
        self.node = f"iimsoak{os.getpid()}@localhost"
        self.cookie = secrets.token_hex(16)
        self.dist_port = free_port()
        self.proc = None
        ips = "\n".join(f'      <ip value="127.0.2.{i + 1}"/>' for i in range(args.sources))
        arrival = -(-args.users // args.arrival_rate)
        # longer than the run can be (the bench stops Tsung itself)
        total = int(2 * arrival + args.ramp_timeout + args.warmup + args.minutes * 60 + 300)
        interval = 1 / args.rate
        text = Template((HERE / "tsung" / "soak.xml").read_text()).substitute(
            users=args.users, maxusers=args.users + 100, ips=ips, port=mux_port,
            duration=total + 60, arrival_seconds=2 * arrival + 10,   # Tsung lags when busy
            arrival_rate=args.arrival_rate, domain=DOMAIN, cafile=str(cafile),
            settle=5, chats=int(total / interval) + 1,
            chat_interval=f"{interval:g}", hold=total)
        self.config = self.folder / "soak.xml"
        self.config.write_text(text)

    def dumps(self) -> list[tuple[float, dict[str, list[float]]]]:
        """Every 10 s dump of tsung.log: (time, {counter: numbers})."""
        found: list[tuple[float, dict]] = []
        for path in self.folder.glob("*/tsung.log"):
            current: dict | None = None
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("# stats: dump at "):
                    current = {}
                    found.append((float(line.split()[-1]), current))
                elif line.startswith("stats: ") and current is not None:
                    parts = line.split()
                    try:
                        current[parts[1]] = [float(x) for x in parts[2:]]
                    except ValueError:
                        pass
        return found


# ---------------------------------------------------------------------------
# Probes


class Probe(BenchUser):
    def __init__(self, name: str, password: str, ctx, rtts: list) -> None:
        super().__init__(JID.parse(f"{name}@{DOMAIN}/probe"), password, ctx)
        self.rtts = rtts
        self.sent: dict[str, float] = {}
        self.bounced = 0
        self.ended: list[str] = []

    def _message(self, stanza: Element) -> None:
        ident = stanza.get("id", "")
        if stanza.get("type") == "error":
            self.bounced += 1
        elif ident.startswith("p"):
            self.send_chat(stanza.get("from"), "q" + ident[1:], "pong")
        elif ident.startswith("q"):
            began = self.sent.pop("p" + ident[1:], None)
            if began is not None:
                self.rtts.append((time.monotonic(), time.monotonic() - began))

    def _ended_after_login(self, why: str) -> None:
        self.ended.append(why)


async def start_probes(args, mux_port: int, cafile: Path, rtts: list) -> list[tuple[Probe, Probe]]:
    loop = asyncio.get_running_loop()
    ctx = client_context(None, anchors=[_load_ca(cafile)])
    pairs = []
    for k in range(args.probes):
        pair = []
        for side in "ab":
            _, user = await loop.create_connection(
                lambda: Probe(f"probe{k}{side}", f"probepw{k}{side}", ctx, rtts),
                "127.0.0.1", mux_port)
            await asyncio.wait_for(user.ready, 60)
            pair.append(user)
        pairs.append(tuple(pair))
    return pairs


async def ping_loop(pairs, interval: float) -> None:
    n = 0
    while True:
        for a, b in pairs:
            n += 1
            a.sent[f"p{n}"] = time.monotonic()
            a.send_chat(str(b.jid), f"p{n}", "ping")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------
# Sampling


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return 0


def sample(system: SoakSystem) -> dict:
    out = {}
    for name, pids in system.processes().items():
        rss = fd = 0
        cpu = 0.0
        for pid in pids:
            try:
                rss += rss_kb(pid)
                cpu += cpu_seconds(pid)
                fd += fds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        out[name] = {"rss_mb": rss / 1024, "fds": fd, "cpu": cpu}
    return out


def heap_row(heap: dict) -> dict:
    """MB: glibc heap in use / free, pymalloc in use / arenas; tracemalloc's growth."""
    mb = lambda group, key: round(heap.get(group, {}).get(key, 0) / 2**20, 1)  # noqa: E731
    row = {"malloc_used_mb": mb("mallinfo", "uordblks"),
           "malloc_free_mb": mb("mallinfo", "fordblks"),
           "malloc_mmap_mb": mb("mallinfo", "hblkhd"),
           "pymalloc_used_mb": mb("pymalloc", "allocated"),
           "pymalloc_arenas_mb": mb("pymalloc", "total"),
           "gc_objects": heap.get("gc_objects")}
    if "traced_kb" in heap:
        row["traced_mb"] = round(heap["traced_kb"] / 1024, 1)
        row["grown"] = heap.get("grown", [])
    return row


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def tsung_minute(dumps, began: float, ended: float) -> dict:
    """Sent (request_noack) and received (xmpp_msg_latency) in [began, ended) of wall time."""
    sent = received = 0.0
    weighted = 0.0
    worst = 0.0
    users = None
    for at, stats in dumps:
        if began <= at < ended:
            sent += stats.get("request_noack", [0])[0]
            lat = stats.get("xmpp_msg_latency")
            if lat and lat[0]:
                received += lat[0]
                weighted += lat[0] * lat[1]
                worst = max(worst, lat[3])
            if "users" in stats:
                users = stats["users"][0]
    return {"sent": int(sent), "received": int(received),
            "latency_mean_ms": round(weighted / received, 1) if received else None,
            "latency_max_ms": round(worst, 1), "users": users}


def progress(note: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:4.1f}  {note}", flush=True)


# ---------------------------------------------------------------------------
# The run


async def run(args, folder: Path) -> dict:
    system = SoakSystem(folder, args)
    cafile = await asyncio.to_thread(system.setup, args.users)
    await asyncio.to_thread(system.start_server)
    await asyncio.to_thread(system.start_mux)
    result: dict = {"minutes": []}
    rtts: list = []
    pairs = await start_probes(args, system.mux_port, cafile, rtts)
    pinger = asyncio.ensure_future(ping_loop(pairs, args.probe_interval))
    tsung = SoakTsung(folder, args, system.mux_port, cafile)
    tsung.start()
    began = time.monotonic()
    changed, online = began, 0
    try:
        while True:                                     # the ramp
            await asyncio.sleep(5)
            before, online = online, system.log("server.log").count(" session tsung")
            if online != before:
                changed = time.monotonic()
            if not tsung.alive():
                raise RuntimeError(f"Tsung exited: {tsung.output()[-1500:]}")
            progress(f"logging in: {online}/{args.users} sessions, "
                     f"{time.monotonic() - began:.0f} s")
            if online >= args.users:
                break
            stalled = time.monotonic() - changed > 60
            if time.monotonic() - began > args.ramp_timeout or stalled:
                why = "no new session for 60 s" if stalled else "--ramp-timeout"
                progress(f"only {online} of {args.users} logged in after "
                         f"{time.monotonic() - began:.0f} s ({why}); measuring those")
                break
        result["ramp_s"] = round(time.monotonic() - began, 1)
        result["logged_in"] = online
        result["tsung_errors_at_ramp"] = {k: v for k, v in tsung.stats().items()
                                          if k.startswith("error")}
        await asyncio.sleep(args.warmup)
        result["heap_minute_0"] = await system.heap_report("minute-0")
        last = sample(system)
        mark, wall = time.monotonic(), time.time()
        stall = args.stall
        for minute in range(1, args.minutes + 1):
            while time.monotonic() < mark + 60 and tsung.alive():
                await asyncio.sleep(1)
                if stall and time.monotonic() >= mark + 30:
                    progress(f"server stopped for {stall:g} s (--stall)")
                    system.server.send_signal(signal.SIGSTOP)
                    await asyncio.sleep(stall)
                    system.server.send_signal(signal.SIGCONT)
                    stall = 0
            if not tsung.alive():
                result["aborted"] = f"Tsung exited in minute {minute}: {tsung.output()[-500:]}"
                progress(result["aborted"])
                break
            now = sample(system)
            heap = await system.heap_report(f"minute-{minute}")
            window = [rtt for at, rtt in rtts if mark <= at < mark + 60]
            mark, wall_end = mark + 60, time.time()
            row = {"minute": minute,
                   "server_rss_mb": round(now["server"]["rss_mb"], 1),
                   "mux_rss_mb": round(now["mux"]["rss_mb"], 1),
                   "server_fds": now["server"]["fds"], "mux_fds": now["mux"]["fds"],
                   "server_cpu": round(now["server"]["cpu"] - last["server"]["cpu"], 1),
                   "mux_cpu": round(now["mux"]["cpu"] - last["mux"]["cpu"], 1),
                   "probe_n": len(window),
                   "probe_p50_ms": round(1000 * percentile(window, 0.5), 1),
                   "probe_p99_ms": round(1000 * percentile(window, 0.99), 1),
                   "probe_max_ms": round(1000 * max(window), 1) if window else None,
                   "load1": round(os.getloadavg()[0], 2),
                   "heap": heap_row(heap),
                   "tsung": tsung_minute(tsung.dumps(), wall, wall_end)}
            wall, last = wall_end, now
            result["minutes"].append(row)
            t = row["tsung"]
            progress(f"minute {minute}/{args.minutes}: server {row['server_rss_mb']} MB "
                     f"{row['server_fds']} fds {row['server_cpu']} CPU-s, mux "
                     f"{row['mux_rss_mb']} MB {row['mux_fds']} fds {row['mux_cpu']} CPU-s, "
                     f"Tsung sent {t['sent']} received {t['received']} (mean "
                     f"{t['latency_mean_ms']} ms), probes p50 {row['probe_p50_ms']} "
                     f"p99 {row['probe_p99_ms']} ms; heap {row['heap']['malloc_used_mb']} "
                     f"used {row['heap']['malloc_free_mb']} free, pymalloc "
                     f"{row['heap']['pymalloc_used_mb']}/{row['heap']['pymalloc_arenas_mb']} MB")
    finally:
        pinger.cancel()
        for pair in locals().get("pairs", []):
            for user in pair:
                user.hang_up()
        result["tsung_exit"] = tsung.stop()
        result["tsung_errors"] = {k: v for k, v in tsung.stats().items() if k.startswith("error")}
        result["exit"] = system.stop()
        log = system.log("server.log")
        result["server_warnings"] = [line for line in log.splitlines() if any(
            w in line for w in (" ERROR ", " CRITICAL ", "Traceback"))][:10]
        result["heap_trims"] = [line for line in log.splitlines() if "heap trimmed" in line]
        result["mux_stats_last"] = [line for line in system.log("mux.log").splitlines()
                                    if " sessions " in line][-2:]
    return result


def flatness(minutes: list[dict], key: str) -> str:
    values = [m[key] for m in minutes]
    if not values or not values[0]:
        return "-"
    first = values[0]
    worst = max(values, key=lambda v: abs(v - first))
    return f"{100 * (worst - first) / first:+.1f} %"


def table(result: dict, args) -> str:
    lines = ["| minute | Tsung sent/s | received/s | Tsung latency mean / max since start ms | "
             "probe p50 / **p99** / max ms | server RSS MB | server heap in use / free MB | "
             "pymalloc in use / arenas MB | mux RSS MB | server fds | mux fds | "
             "CPU-s server / mux | load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["minutes"]:
        t, h = m["tsung"], m.get("heap", {})
        lines.append(f"| {m['minute']} | {t['sent'] / 60:,.0f} | {t['received'] / 60:,.0f} | "
                     f"{t['latency_mean_ms']} / {t['latency_max_ms']} | {m['probe_p50_ms']} / "
                     f"**{m['probe_p99_ms']}** / {m['probe_max_ms']} | {m['server_rss_mb']} | "
                     f"{h.get('malloc_used_mb')} / {h.get('malloc_free_mb')} | "
                     f"{h.get('pymalloc_used_mb')} / {h.get('pymalloc_arenas_mb')} | "
                     f"{m['mux_rss_mb']} | {m['server_fds']} | {m['mux_fds']} | "
                     f"{m['server_cpu']} / {m['mux_cpu']} | {m['load1']} |")
    mins = result["minutes"]
    lines.append("")
    lines.append(f"Offered: {args.users} users x {args.rate} msg/s = {args.users * args.rate:,.0f}"
                 f" msg/s. Change from minute 1 to the furthest minute: server RSS "
                 f"{flatness(mins, 'server_rss_mb')}, mux RSS {flatness(mins, 'mux_rss_mb')}, "
                 f"server fds {flatness(mins, 'server_fds')}, mux fds {flatness(mins, 'mux_fds')}"
                 f"; from minute 2 (after the allocator's warm-up): server RSS "
                 f"{flatness(mins[1:], 'server_rss_mb')}, mux RSS "
                 f"{flatness(mins[1:], 'mux_rss_mb')}.")
    for m in mins:
        for g in m.get("heap", {}).get("grown", [])[:6]:
            lines.append(f"  traced, minute {m['minute']}: {g['kb']:+.1f} KB "
                         f"({g['blocks']:+d} blocks, {g['live_kb']} KB live) "
                         f"{' <- '.join(reversed(g['stack'][-3:]))}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per user")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--arrival-rate", type=int, default=100, help="Tsung logins per second")
    p.add_argument("--sources", type=int, default=100, help="Tsung source addresses 127.0.2.x")
    p.add_argument("--warmup", type=float, default=30, help="seconds after the ramp")
    p.add_argument("--ramp-timeout", type=float, default=600)
    p.add_argument("--probes", type=int, default=10, help="probe pairs")
    p.add_argument("--probe-interval", type=float, default=0.1)
    p.add_argument("--stall", type=float, default=0, metavar="SECONDS",
                   help="stop the server (SIGSTOP) this long half-way through minute 1, "
                        "as a machine too busy to schedule it would")
    p.add_argument("--trace", action="store_true",
                   help="tracemalloc in the server from minute 0: what grew, minute by minute")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2], sys.argv[3], "--trace" in sys.argv[4:])
    args = parse_args(argv)
    raise_nofile()
    if not (TSUNG / f"tsung-{TSUNG_VERSION}").exists():
        print(f"Tsung {TSUNG_VERSION} not found in {TSUNG}: apt-get install tsung")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="iim-soak-"))
    print(f"soak: {args.users} Tsung users through the multiplexor, {args.rate} msg/s each, "
          f"{args.minutes} min; folder {folder}", flush=True)
    print(f"  iim {_revision()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    result = asyncio.run(run(args, folder))
    text = table(result, args)
    print("\n" + text)
    print(f"\nramp {result.get('ramp_s')} s, logged in {result.get('logged_in')}, Tsung errors "
          f"{result['tsung_errors']}, exit {result['exit']}, Tsung exit {result['tsung_exit']}")
    if result.get("aborted"):
        print(f"  aborted: {result['aborted']}")
    for line in result["server_warnings"] + result["heap_trims"] + result["mux_stats_last"]:
        print("  " + line)
    (folder / "results.md").write_text(text + "\n")
    (folder / "results.json").write_text(json.dumps({"args": vars(args) | {"json": None},
                                                     **result}, indent=1, default=str))
    if args.json:
        args.json.write_text((folder / "results.json").read_text())
    if not args.keep:
        for name in ("iim.db", "tsung", "dev"):
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    print(f"results: {folder / 'results.md'}, {folder / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
