"""The XMPP/HTTP gateway under load: memory per web session and CPU per message.

    python bench/web_gateway.py [--users 500] [--messages 2000]

Starts ``python -m iim.server`` (a PKCS#12 keystore made here, the gateway on
a free port, TLS), adds the users straight into its database, then, from this
process (aiohttp's client):

1. logs ``--users`` users in over wss:// (RFC 7395, SASL PLAIN, bind, initial
   presence) and reads the server's RSS before and after: KB per WebSocket
   session; then as many over BOSH (hold=1, one request held each);
2. has one WebSocket user send ``--messages`` chat messages to another, each
   waited for at the receiver (one in flight), and reads the server's CPU time
   (/proc/PID/stat) over them: µs of server CPU per message through the
   gateway, both ends WebSocket.

Prints one line per figure. The machine's load matters: quote ``uptime``.

Results (commit after c696492, 2 shared cores, load average 7.8-9.2 from other
work; ``python bench/web_gateway.py --users 500 --messages 2000``):

    websocket: 500 sessions, server RSS 62596 -> 97896 KB: 70.6 KB per session
    bosh: 500 sessions (one request held each), server RSS 97896 -> 127048 KB: 58.3 KB per session
    messages: 2000 one at a time, websocket to websocket: 340 µs server CPU and 1.00 ms round trip each

Before ``_SmallSSLProtocol`` (asyncio's default 256 KiB TLS read buffer per
connection): 310 KB per WebSocket session; since its buffer is shared by all
connections (commit 22d4fea), ~54 KB (an in-process measurement, 200 sessions;
the side by side with Prosody is bench/web_side_by_side.py). A STARTTLS user on a socket or a
mux link holds ~36 KB (bench/MEMORY.md); the rest here is aiohttp's request
handler and WebSocket objects, asyncio's TLS transport and the per-session
writer task.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
HTTPBIND = "http://jabber.org/protocol/httpbind"
DOMAIN = "localhost"
PASSWORD = "bench-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keystore(folder: Path) -> Path:
    """A self-signed EC certificate for localhost/127.0.0.1 in a PKCS#12 file; the CA file."""
    import datetime as dt
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(DOMAIN), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "server.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"server", key, cert, None, serialization.BestAvailableEncryption(b"bench-store")))
    os.chmod(folder / "server.p12", 0o600)
    (folder / "sslpassword.conf").write_text("Internal (Software) Token:bench-store\n")
    os.chmod(folder / "sslpassword.conf", 0o600)
    ca = folder / "ca.pem"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def add_users(folder: Path, count: int) -> None:
    sys.path.insert(0, str(ROOT))
    from iim.server.storage import Storage
    with Storage.open(folder / "iim.db") as storage:
        for n in range(count):
            storage.add_user(f"u{n}", PASSWORD)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ws_login(http, url, tls, user):
    ws = await http.ws_connect(url, protocols=("xmpp",), ssl=tls)

    async def frame():
        return (await ws.receive()).data

    await ws.send_str(f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>")
    await frame(), await frame()
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    await ws.send_str(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
    assert "success" in await frame()
    await ws.send_str(f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>")
    await frame(), await frame()
    await ws.send_str(f"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{BIND}'>"
                      f"<resource>ws</resource></bind></iq>")
    assert "result" in await frame()
    await ws.send_str("<presence xmlns='jabber:client'/>")
    await frame()
    return ws


async def bosh_login(http, url, tls, user):
    rid = [1000]

    async def post(content="", **attrs):
        rid[0] += 1
        written = "".join(f" {k}='{v}'" for k, v in attrs.items())
        data = f"<body xmlns='{HTTPBIND}' rid='{rid[0]}'{written}>{content}</body>"
        async with http.post(url, data=data, ssl=tls) as response:
            return await response.text()

    first = await post(to=DOMAIN, wait="60", hold="1", ver="1.11",
                       **{"xmlns:xmpp": "urn:xmpp:xbosh", "xmpp:version": "1.0"})
    sid = re.search(r"sid='([^']+)'", first).group(1)
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert "success" in await post(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>",
                                   sid=sid)
    await post(sid=sid, to=DOMAIN, **{"xmlns:xmpp": "urn:xmpp:xbosh", "xmpp:restart": "true"})
    await post(f"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{BIND}'/></iq>", sid=sid)
    await post("<presence xmlns='jabber:client'/>", sid=sid)
    return asyncio.ensure_future(post(sid=sid))          # one request held from now on


async def settle(pid: int) -> int:
    await asyncio.sleep(2)
    return rss_kb(pid)


async def measure(args, pid: int, port: int, ca: Path) -> None:
    tls = ssl.create_default_context(cafile=str(ca))
    ws_url, bosh_url = f"wss://127.0.0.1:{port}/ws", f"https://127.0.0.1:{port}/http-bind"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        before = await settle(pid)
        sockets = []
        for n in range(args.users):
            sockets.append(await ws_login(http, ws_url, tls, f"u{n}"))
        after_ws = await settle(pid)
        print(f"websocket: {args.users} sessions, server RSS {before} -> {after_ws} KB: "
              f"{(after_ws - before) / args.users:.1f} KB per session")
        held = []
        for n in range(args.users, 2 * args.users):
            held.append(await bosh_login(http, bosh_url, tls, f"u{n}"))
        after_bosh = await settle(pid)
        print(f"bosh: {args.users} sessions (one request held each), server RSS {after_ws} -> "
              f"{after_bosh} KB: {(after_bosh - after_ws) / args.users:.1f} KB per session")
        sender, receiver = sockets[0], sockets[1]
        start_cpu, start = cpu_seconds(pid), time.perf_counter()
        for n in range(args.messages):
            await sender.send_str(f"<message xmlns='jabber:client' to='u1@{DOMAIN}/ws' "
                                  f"type='chat' id='m{n}'><body>message {n}</body></message>")
            while "<message" not in (await receiver.receive()).data:
                pass
        cpu, wall = cpu_seconds(pid) - start_cpu, time.perf_counter() - start
        print(f"messages: {args.messages} one at a time, websocket to websocket: "
              f"{cpu / args.messages * 1e6:.0f} µs server CPU and {wall / args.messages * 1e3:.2f} "
              f"ms round trip each")
        for task in held:
            task.cancel()
        for ws in sockets:
            await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iim-web-bench-") as tmp:
        folder = Path(tmp)
        ca = keystore(folder)
        add_users(folder, 2 * args.users)
        port = free_port()
        (folder / "iim.conf").write_text(
            f'iim_server.domainname = "{DOMAIN}"\n'
            f'iim_server.port = "127.0.0.1:{free_port()}"\n'
            'iim_server.usemuxport = "false"\n'
            f'iim_server.httpport = "127.0.0.1:{port}"\n'
            'iim_server.sslkeystore = "server.p12"\n'
            'iim_server.database = "iim.db"\n'
            f'iim_server.max_unauthenticated_per_source = "{2 * args.users + 10}"\n'
            f'iim_server.accept_rate_per_source = "100000"\n'
            'iim.log.iim_server.url = "server.log"\n')
        server = subprocess.Popen([sys.executable, "-m", "iim.server", "-c",
                                   str(folder / "iim.conf")], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start")
                    time.sleep(0.1)
            asyncio.run(measure(args, server.pid, port, ca))
        finally:
            server.terminate()
            server.wait(10)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
