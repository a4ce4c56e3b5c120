"""The multiplexor side by side with Debian's relays, in one run.

    python bench/mux_side_by_side.py --sessions 1000 --seconds 10 [--reps 3] [--only plain|tls|link]

Targets, all on 127.0.0.1, all in front of a one-process Python asyncio backend
(bench/mux_backends.py): an echo server for the anchors, a docs/muxlink.md
echo peer for iim's multiplexor.

- plain relay: ``python -m iim.mux`` (numinstances 1, maxthreads 2) vs
  HAProxy ``mode tcp`` (nbthread 2) vs nginx ``stream`` (2 workers);
- TLS termination (legacy SSL): the same mux with ``iim_mux.usessl = on``
  (NSS database made with certutil/pk12util) vs stunnel4 vs HAProxy ``ssl``
  vs nginx stream ``ssl``; one RSA-2048 self-signed certificate for all.

- the cost of an encrypted link (``--only link``): the same plain mux with its link
  in clear (``iim_mux.muxlink_tls = off``, as on loopback) vs TLS 1.3
  (``iim_mux.muxlink_tls = on``, the link peer behind asyncio's ssl); the
  "iim/iim-tlslink" column is the ratio.

For each target, in every repetition (targets interleaved A,B,C,A,B,C...), a
fresh proxy process is started and measured with bench/mux_loadgen.py:
1. idle memory: RSS of the proxy's process tree before / after --sessions idle
   connections (each did one round trip, so the session reached the backend);
2. round trips: --sessions connections, ~200-byte request/response, --seconds;
   round trips/s, latency p50/p99, and the proxy's CPU time per round trip;
3. connection rate: --concurrency loops of connect [+ TLS handshake] + one
   round trip + close for --seconds/2; connections (handshakes) per second.
The table gives medians and the ratio iim / anchor (for latency, CPU and
memory a ratio below 1 is better for iim; for rates above 1 is better).

Installs haproxy, nginx-light, libnginx-mod-stream and stunnel4 with apt-get
when they are missing (root).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NSS_PASSWORD = "bench-nss-pw"
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"
CLK = os.sysconf("SC_CLK_TCK")


# --- system helpers ---------------------------------------------------------------------
def ensure_packages() -> None:
    missing = [pkg for pkg, ok in [("haproxy", shutil.which("haproxy")),
                                   ("nginx-light", shutil.which("nginx")),
                                   ("libnginx-mod-stream", os.path.exists(NGINX_STREAM)),
                                   ("stunnel4", shutil.which("stunnel4")),
                                   ("libnss3-tools", shutil.which("certutil"))] if not ok]
    if not missing:
        return
    print(f"installing {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- key material -----------------------------------------------------------------------
def make_keys(work: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = {"cert": work / "cert.pem", "key": work / "key.pem", "combined": work / "combined.pem"}
    paths["cert"].write_bytes(cert_pem)
    paths["key"].write_bytes(key_pem)
    paths["combined"].write_bytes(cert_pem + key_pem)
    for p in paths.values():
        os.chmod(p, 0o600)
    # NSS database for the multiplexor, made by NSS's own tools.
    nss = work / "nssdb"
    nss.mkdir()
    pw = work / "nss.pw"
    pw.write_text(NSS_PASSWORD + "\n")
    p12 = work / "mux.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"Multiplexor-Cert", key, cert, None,
        serialization.BestAvailableEncryption(b"p12-transport")))
    p12pw = work / "p12.pw"
    p12pw.write_text("p12-transport\n")
    env = {k: v for k, v in os.environ.items() if k != "NSS_DEFAULT_DB_TYPE"}
    for argv in (["certutil", "-N", "-d", f"sql:{nss}", "-f", str(pw)],
                 ["pk12util", "-i", str(p12), "-d", f"sql:{nss}", "-k", str(pw), "-w", str(p12pw)]):
        subprocess.run(argv, check=True, capture_output=True, env=env)
    sslpw = work / "sslpassword.conf"
    sslpw.write_text(f"Internal (Software) Token:{NSS_PASSWORD}\n")
    os.chmod(sslpw, 0o600)
    paths["nssdb"], paths["sslpassword"] = nss, sslpw
    return paths


# --- backends ---------------------------------------------------------------------------
class Backend:
    def __init__(self, kind: str, tls: Path | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "mux_backends.py"), kind,
                                      "--port", str(self.port)]
                                     + (["--tls", str(tls)] if tls else []),
                                     stdout=subprocess.PIPE, text=True)
        self.links = 0
        assert self.proc.stdout.readline().strip() == "LISTENING"
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("LINK"):
                with self._cond:
                    self.links += 1
                    self._cond.notify_all()

    def wait_links(self, n: int, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.links >= n, timeout):
                raise RuntimeError(f"only {self.links} of {n} mux links came up")


# --- targets ----------------------------------------------------------------------------
class Target:
    def __init__(self, name: str, work: Path, keys: dict, tls: bool, sessions: int,
                 echo: Backend, peer: Backend) -> None:
        self.name, self.work, self.keys, self.tls = name, work, keys, tls
        self.sessions, self.echo, self.peer = sessions, echo, peer

    def start(self) -> subprocess.Popen:
        self.port = free_port()
        d = self.work / f"{self.name}-{'tls' if self.tls else 'plain'}"
        d.mkdir(exist_ok=True)
        log = open(d / "stderr.log", "ab")
        k, port, e = self.keys, self.port, self.echo.port
        if self.name in ("iim", "iim-tlslink"):
            lines = [f'iim_mux.listenport = "127.0.0.1:{port}"',
                     f'iim_mux.serverport = "127.0.0.1:{self.peer.port}"',
                     'iim_mux.numinstances = "1"', 'iim_mux.maxthreads = "2"',
                     f'iim_mux.maxsessions = "{max(2000, 4 * self.sessions)}"',
                     # Every session comes from the load generator's one address, as
                     # into HAProxy and nginx, which have no per-source limits here:
                     # ours stay checked on each accept but cannot refuse.
                     f'iim_mux.maxsessions_per_source = "{max(2000, 4 * self.sessions)}"',
                     'iim_mux.accept_rate_per_source = "1000000"',
                     f'iim.log.iim_mux.url = "{d / "mux.log"}"',
                     'iim.log.iim_mux.severity = "WARNING"']
            if self.name == "iim-tlslink":
                lines += ['iim_mux.muxlink_tls = "on"', f'iim_mux.muxlink_cafile = "{k["cert"]}"']
            else:
                lines += ['iim_mux.muxlink_tls = "off"']
            if self.tls:
                lines += ['iim_mux.usessl = "on"', f'iim_mux.secconfigdir = "{k["nssdb"]}"',
                          'iim_mux.certnickname = "Multiplexor-Cert"',
                          f'iim_mux.keystorepasswordfile = "{k["sslpassword"]}"']
            (d / "iim.conf").write_text("\n".join(lines) + "\n")
            before = self.peer.links
            proc = subprocess.Popen([sys.executable, "-m", "iim.mux", "-c", str(d / "iim.conf")],
                                    stdout=log, stderr=log)
            self.peer.wait_links(before + 2)
        elif self.name == "haproxy":
            ssl = f" ssl crt {k['combined']}" if self.tls else ""
            (d / "haproxy.cfg").write_text(f"""global
    maxconn 9000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend f
    bind 127.0.0.1:{port}{ssl}
    default_backend b
backend b
    server s1 127.0.0.1:{e}
""")
            proc = subprocess.Popen(["haproxy", "-db", "-f", str(d / "haproxy.cfg")],
                                    stdout=log, stderr=log)
        elif self.name == "nginx":
            ssl = (f"ssl_certificate {k['cert']};\n        ssl_certificate_key {k['key']};\n"
                   "        ssl_protocols TLSv1.2 TLSv1.3;" if self.tls else "")
            (d / "nginx.conf").write_text(f"""load_module {NGINX_STREAM};
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 9000; }}
stream {{
    server {{
        listen 127.0.0.1:{port}{' ssl' if self.tls else ''};
        proxy_pass 127.0.0.1:{e};
        {ssl}
    }}
}}
""")
            proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d),
                                     "-e", str(d / "error.log")], stdout=log, stderr=log)
        elif self.name == "stunnel":
            (d / "stunnel.conf").write_text(f"""foreground = yes
pid =
debug = 3
output = {d}/stunnel.log
[bench]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{e}
cert = {k['combined']}
sslVersionMin = TLSv1.2
""")
            proc = subprocess.Popen(["stunnel4", str(d / "stunnel.conf")], stdout=log, stderr=log)
        else:
            raise ValueError(self.name)
        wait_port(port, proc)
        time.sleep(0.3)
        return proc


def loadgen(mode: str, port: int, args, tls: bool, **kw) -> dict:
    cmd = [sys.executable, str(HERE / "mux_loadgen.py"), mode, "--port", str(port),
           "--procs", str(args.procs), "--size", str(args.size)]
    for key, val in kw.items():
        cmd += [f"--{key}", str(val)]
    if tls:
        cmd.append("--tls")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen {mode} failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def measure(target: Target, args, backend: Backend) -> dict:
    proc = target.start()
    res: dict = {}
    try:
        # 1. idle memory
        time.sleep(0.5)
        rss0 = rss_kb(proc.pid)
        idle = subprocess.Popen([sys.executable, str(HERE / "mux_loadgen.py"), "idle",
                                 "--port", str(target.port), "--sessions", str(args.sessions)]
                                + (["--tls"] if target.tls else []),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = idle.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"idle loadgen: {line!r}")
        time.sleep(1.0)
        rss1 = rss_kb(proc.pid)
        idle.stdin.close()
        idle.wait(60)
        res["kb_per_conn"] = (rss1 - rss0) / args.sessions
        res["rss_idle_mb"] = rss0 / 1024
        time.sleep(0.5)
        # 2. round trips
        c0, b0 = cpu_seconds(proc.pid), cpu_seconds(backend.proc.pid)
        rr = loadgen("rr", target.port, args, target.tls, sessions=args.sessions,
                     seconds=args.seconds)
        c1, b1 = cpu_seconds(proc.pid), cpu_seconds(backend.proc.pid)
        res.update(rr_rate=rr["rate"], p50_ms=rr["p50_us"] / 1000, p99_ms=rr["p99_us"] / 1000,
                   rr_lost=rr["lost"],
                   proxy_cpu_us_per_rt=(c1 - c0) * 1e6 / max(rr["count"], 1),
                   proxy_cpu=(c1 - c0), backend_cpu=(b1 - b0), client_cpu=rr["client_cpu"])
        # 3. connection rate
        c0 = cpu_seconds(proc.pid)
        cr = loadgen("conn", target.port, args, target.tls, concurrency=args.concurrency,
                     seconds=max(2.0, args.seconds / 2))
        c1 = cpu_seconds(proc.pid)
        res.update(conn_rate=cr["rate"], conn_errors=cr["errors"],
                   proxy_cpu_us_per_conn=(c1 - c0) * 1e6 / max(cr["count"], 1))
    finally:
        stop(proc)
    return res


METRICS = [("rr_rate", "round trips/s", "{:.0f}"), ("p50_ms", "RTT p50 ms", "{:.2f}"),
           ("p99_ms", "RTT p99 ms", "{:.2f}"),
           ("proxy_cpu_us_per_rt", "proxy CPU µs / round trip", "{:.1f}"),
           ("conn_rate", "conns/s (connect+1 RT+close)", "{:.0f}"),
           ("proxy_cpu_us_per_conn", "proxy CPU µs / conn", "{:.0f}"),
           ("kb_per_conn", "idle KB / conn", "{:.1f}"), ("rss_idle_mb", "RSS at start MB", "{:.1f}")]


def table(scenario: str, names: list[str], runs: dict) -> str:
    med = {n: {m: statistics.median(r[m] for r in runs[n]) for m, _, _ in METRICS} for n in names}
    anchors = [n for n in names if n != "iim"]
    head = ["metric"] + [n for n in names] + [f"iim/{a}" for a in anchors]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, label, fmt in METRICS:
        if scenario == "tls" and m == "conn_rate":
            label = "TLS handshakes/s (+1 RT, close)"
        cells = [label] + [fmt.format(med[n][m]) for n in names]
        for a in anchors:
            cells.append(f"{med['iim'][m] / med[a][m]:.2f}" if med[a][m] else "n/a")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--only", choices=["plain", "tls", "link"])
    p.add_argument("--json", help="write every run's numbers here")
    args = p.parse_args(argv)
    ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="mux-bench-"))
    keys = make_keys(work)
    echo, peer = Backend("echo"), Backend("linkpeer")
    tls_peer = Backend("linkpeer", tls=keys["combined"])
    scenarios = [("plain", ["iim", "haproxy", "nginx"]),
                 ("tls", ["iim", "stunnel", "haproxy", "nginx"]),
                 ("link", ["iim", "iim-tlslink"])]
    if args.only:
        scenarios = [s for s in scenarios if s[0] == args.only]
    results: dict = {}
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"sessions {args.sessions}, {args.seconds}s, reps {args.reps}, work {work}", flush=True)
    try:
        for scenario, names in scenarios:
            runs: dict = {n: [] for n in names}
            for rep in range(args.reps):
                for n in names:
                    link_peer = tls_peer if n == "iim-tlslink" else peer
                    t = Target(n, work, keys, scenario == "tls", args.sessions, echo, link_peer)
                    r = measure(t, args, link_peer if n.startswith("iim") else echo)
                    runs[n].append(r)
                    print(f"{scenario} rep {rep + 1} {n}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in r.items()), flush=True)
            results[scenario] = runs
            print(f"\n## {scenario} (medians of {args.reps})\n\n{table(scenario, names, runs)}\n",
                  flush=True)
    finally:
        stop(echo.proc)
        stop(peer.proc)
        stop(tls_peer.proc)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
