"""A real Prosody (Debian's 0.12) next to a real iim server, for interop tests.

Theory of operation
-------------------
The test domains (``iim.example``, ``prosody.example``) are in no public DNS,
and the machine's resolver points at a nameserver nobody answers. Rather than
bending either server, the test runs the one thing a real deployment has and a
loopback test lacks: an authoritative DNS server for the test zone.
``TestZone`` answers, over UDP on a free loopback port, the ``_xmpp-server._tcp``
SRV records of both domains and the A records of their targets (NXDOMAIN for
any other name, an empty answer for AAAA), so each server finds the other
exactly as in production (RFC 6120 §3.2.1), and every lookup is answered at
once, none left to time out:

* Prosody resolves with libunbound (lua-unbound, a dependency of Debian's
  package): its ``unbound`` option gets ``forward = "127.0.0.1@port"``,
  ``resolvconf = false`` (never /etc/resolv.conf's nameserver) and
  ``hoststxt = false`` (never /etc/hosts).
* iim gets ``iim_server.s2s_nameservers = "127.0.0.1:port"``.

The alternatives were weaker: Prosody 0.12 does connect to an IP-literal domain
without DNS, but then checks the peer certificate for that literal as a
dNSName or common name (no iPAddress SAN), which no real deployment looks
like; and 0.12 has no per-domain address override short of a Lua module.
Because SRV records carry the port, neither server needs 5269: both listen on
free ports of their own loopback address (Prosody 127.0.0.3, iim 127.0.0.4).

``ProsodyServer`` writes a complete configuration of its own into the test's
folder (nothing under /etc/prosody or /var/lib/prosody is read or written),
creates users with the real ``prosodyctl register`` and runs ``prosody -F``
(foreground: 0.12's replacement for ``daemonize = false``, which it still
reads but calls deprecated) as a child process, ready once both its ports
accept. Its certificate is a PEM chain from the test CA; its private key never
touches the disk: it sits in a memfd the child inherits and Prosody reads as
``/proc/self/fd/N``. ``cafile`` is the CA Prosody trusts for peers (the test
CA, or another one to make iim's certificate unverifiable). The tests run as
root, so ``run_as_root`` is set: Prosody refuses root otherwise, and
prosodyctl would switch to the ``prosody`` user, who cannot write here.
"""

from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import serialization

from live import free_port, listening

PROSODY = shutil.which("prosody") or "/usr/bin/prosody"
PROSODYCTL = shutil.which("prosodyctl") or "/usr/bin/prosodyctl"


# -- the test zone -----------------------------------------------------------------------


class TestZone:
    """An authoritative DNS server for the test domains on 127.0.0.1 (UDP).

    ``add_xmpp_server(domain, host, address, port)`` publishes
    ``_xmpp-server._tcp.<domain>. SRV 0 5 <port> <host>.`` and ``<host>. A
    <address>``."""

    __test__ = False                    # not a pytest class

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self._server = socketserver.UDPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_xmpp_server(self, domain: str, host: str, address: str, port: int) -> None:
        self.records[(f"_xmpp-server._tcp.{domain}.", "SRV")] = [f"0 5 {port} {host}."]
        self.records[(f"{host}.", "A")] = [address]

    def answer(self, wire: bytes) -> bytes:
        """The response to one query, as a nameserver authoritative for the zone."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        if (name, kind) in self.records:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", kind,
                                                       *self.records[(name, kind)]))
        elif all(known != name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _handler(self):
        zone = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                try:
                    sock.sendto(zone.answer(data), self.client_address)
                except Exception:  # noqa: BLE001 - a malformed query gets no answer
                    pass
        return Handler

    def start(self) -> "TestZone":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- Prosody -------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {lua_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "{ " + ", ".join(lua_value(v) for v in value) + " }"
    return lua_string(value)


class ProsodyServer:
    """One Prosody virtual host ``domain`` on ``host``, in ``folder``.

    ``issued`` is a ``pki.Issued`` certificate for ``domain``; ``cafile`` the
    PEM file of the CA(s) Prosody trusts for peers; ``options`` global
    Prosody options (``s2s_secure_auth``, ``s2s_require_encryption``...)."""

    def __init__(self, folder: Path, issued, cafile: Path, zone: TestZone, *,
                 domain: str = "prosody.example", host: str = "127.0.0.3",
                 users=(("bob", "bob-pw-prosody-2"),), options: dict | None = None):
        self.folder, self.domain, self.host = folder, domain, host
        self.c2s_port, self.s2s_port = free_port(host), free_port(host)
        while self.s2s_port == self.c2s_port:
            self.s2s_port = free_port(host)
        self.users = dict(users)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        (folder / "certs").mkdir(exist_ok=True)   # certmanager's search folder: none used
        self.cert_file = folder / "prosody.crt"
        self.cert_file.write_bytes(issued.chain_pem())
        self._key_fd = os.memfd_create("prosody-test-key")
        os.write(self._key_fd, issued.key_pem())
        self.config = folder / "prosody.cfg.lua"
        self.config.write_text(self._config(cafile, zone, options or {}))
        self.proc: subprocess.Popen | None = None
        zone.add_xmpp_server(domain, f"xmpp.{domain}", host, self.s2s_port)

    def _config(self, cafile: Path, zone: TestZone, options: dict) -> str:
        settings = {
            "run_as_root": True,
            "pidfile": str(self.folder / "prosody.pid"),
            "data_path": str(self.folder / "data"),
            "certificates": str(self.folder / "certs"),
            "log": [{"levels": {"min": "debug"}, "to": "file",
                     "filename": str(self.folder / "prosody.log")}],
            "interfaces": [self.host],
            "c2s_ports": [self.c2s_port], "s2s_ports": [self.s2s_port],
            "c2s_direct_tls_ports": [], "s2s_direct_tls_ports": [], "legacy_ssl_ports": [],
            "modules_enabled": ["roster", "saslauth", "tls", "dialback", "disco", "posix",
                                "ping"],
            "authentication": "internal_hashed",
            "c2s_require_encryption": True,
            "unbound": {"resolvconf": False, "hoststxt": False,
                        "forward": f"127.0.0.1@{zone.port}"},
            "ssl": {"certificate": str(self.cert_file),
                    "key": f"/proc/self/fd/{self._key_fd}", "cafile": str(cafile)},
            **options,
        }
        lines = ["-- written by tests/prosodylive.py for one test; see its docstring"]
        lines += [f"{name} = {lua_value(value)}" for name, value in settings.items()]
        lines.append(f"VirtualHost {lua_string(self.domain)}")
        return "\n".join(lines) + "\n"

    def _run_ctl(self, *args: str) -> str:
        proc = subprocess.run([PROSODYCTL, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=30,
                              pass_fds=(self._key_fd,))
        if proc.returncode:
            raise AssertionError(f"prosodyctl {args[0]}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def add_users(self) -> None:
        for user, password in self.users.items():
            self._run_ctl("register", user, self.domain, password)

    def start(self) -> "ProsodyServer":
        out = (self.folder / "prosody.out").open("wb")
        self.proc = subprocess.Popen([PROSODY, "-F", "--config", str(self.config)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     pass_fds=(self._key_fd,))
        out.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prosody exited: {self.output()}{self.log()[-2000:]}")
            if listening(self.host, self.c2s_port) and listening(self.host, self.s2s_port):
                return self
            time.sleep(0.05)
        raise AssertionError("prosody did not start listening")

    def stop(self) -> int:
        """SIGTERM, wait for the exit; the key's memfd is closed either way."""
        proc, self.proc = self.proc, None
        try:
            if proc is None:
                return 0
            proc.terminate()
            try:
                return proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("prosody did not stop on SIGTERM") from None
        finally:
            if self._key_fd is not None:
                os.close(self._key_fd)
                self._key_fd = None

    def log(self) -> str:
        path = self.folder / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self) -> str:
        path = self.folder / "prosody.out"
        return path.read_text(errors="replace") if path.exists() else ""


def ca_pem(ca) -> bytes:
    return ca.root_cert.public_bytes(serialization.Encoding.PEM)
