"""A real server process on 127.0.0.1 and real clients (slixmpp) for end-to-end tests.

``LiveServer`` writes an iim.conf into a folder, a keystore made by the real
keytool (CA from tests/pki.py), a password file and users created with the
real ``python -m iim.admin user add``, then runs ``python -m iim.server`` as a
child process and waits until its port answers.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import slixmpp
from cryptography.hazmat.primitives import serialization

from iim import control
from keytool import make_store
from support import Process, free_port, listening  # noqa: F401  (the tests import these two from here)
from support.process import DEADLINE

DOMAIN = "localhost"
STOREPASS = "Live-Store-Pw-9"


class LiveServer:
    def __init__(self, folder: Path, ca, *, requiressl: bool = False, tls: bool = True,
                 users=(("alice", "alice-pw-1"), ("bob", "bob-pw-2")), extra: str = "",
                 domain: str = DOMAIN, host: str = "127.0.0.1", names=None,
                 managed: bool = False):
        self.folder = folder
        self.managed = managed        # --managed: status and refresh on server.sock (ask)
        self.ca = ca
        self.domain = domain
        self.host = host
        self.port = free_port(host)
        self.link_port = free_port()
        self.users = dict(users)
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        lines = [f'iim_server.domainname = "{domain}"',
                 f'iim_server.port = "{host}:{self.port}"',
                 f'iim_mux.serverport = "127.0.0.1:{self.link_port}"',
                 f'iim_server.requiressl = "{str(requiressl).lower()}"',
                 'iim_server.database = "iim.db"',
                 'iim.log.iim_server.url = "server.log"',
                 'iim.log.iim_server.severity = "DEBUG"']
        if tls:
            # A test's own JKS when it put one in the folder; otherwise PKCS#12, the
            # JDK's default store type, made by keytool too. (A JKS costs each server
            # start ~0.15 s of CPU importing pyjks; the JKS and JCEKS paths have their
            # own tests: test_keystore, test_trust_keytool, the federation ones.)
            store = folder / "server.jks"
            if not store.exists():
                store = folder / "server.p12"
                if not store.exists():
                    make_store(store, ca, names or [domain, "127.0.0.1"], storepass=STOREPASS,
                               storetype="PKCS12")
            pw = folder / "sslpassword.conf"
            pw.write_text(f"Internal (Software) Token:{STOREPASS}\n")
            os.chmod(pw, 0o600)
            lines.append(f'iim_server.sslkeystore = "{store.name}"')
        self.conf = folder / "iim.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.proc: Process | None = None

    def add_users(self) -> None:
        """``users``, each added by the real ``python -m iim.admin user add``.

        A run gives the same few users to hundreds of servers, a process start
        each (~0.25 CPU-s), so a new database is a copy of the one made for the
        same users before in this process; a database that exists already gets
        them added for real."""
        db = self.folder / "iim.db"
        key = tuple(sorted(self.users.items()))
        if key in _user_dbs and not db.exists():
            shutil.copy2(_user_dbs[key], db)                 # its mode (0600) too
            return
        new = not db.exists()
        self._admin_add_users()
        if new and key and not db.with_name("iim.db-wal").exists():
            _user_dbs[key] = _cache_folder() / f"users-{len(_user_dbs)}.db"
            shutil.copy2(db, _user_dbs[key])

    def _admin_add_users(self) -> None:
        for user, password in self.users.items():
            admin("user", "add", "-c", str(self.conf), user, stdin=password + "\n")

    def start(self) -> "LiveServer":
        self.proc = Process([sys.executable, "-m", "iim.server", "-c", str(self.conf)]
                            + ["--managed"] * self.managed, self.folder, "server")
        try:
            self.proc.wait_port(self.port, self.host)
        except AssertionError:
            self.proc.kill()
            raise
        return self

    def ask(self, op: str) -> dict:
        """The answer to ``op`` (status, refresh) on the control socket of a
        ``managed`` server (iim/server/control.py), which is in its folder."""
        return control.ask(self.folder / "server.sock", op)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        code = self.proc.stop()
        self.proc = None
        return code

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text() if path.exists() else ""


class LiveMux:
    """``python -m iim.mux`` with its own iim.conf, pointed at a LiveServer.

    ``usessl``: legacy SSL with the NSS database ``nssdb`` of ``folder`` (its
    password in ``nsspassword.conf``); ``params``: more ``iim_mux.*`` values.
    Waits until every relay thread's link to the server is up."""

    def __init__(self, folder: Path, server: "LiveServer", name: str, *, usessl: bool = False,
                 instances: int = 1, threads: int = 2, params: dict | None = None) -> None:
        self.port = free_port()
        self.threads, self.instances = threads, instances
        self.log_file = folder / f"{name}.log"
        lines = [f'iim_mux.listenport = "127.0.0.1:{self.port}"',
                 f'iim_mux.serverport = "127.0.0.1:{server.link_port}"',
                 f'iim_mux.maxthreads = "{threads}"',
                 f'iim_mux.usessl = "{"on" if usessl else "off"}"',
                 f'iim.log.iim_mux.url = "{self.log_file.name}"',
                 'iim.log.iim_mux.severity = "DEBUG"']
        if usessl:
            lines += ['iim_mux.secconfigdir = "nssdb"',
                      'iim_mux.certnickname = "Multiplexor-Cert"',
                      'iim_mux.keystorepasswordfile = "nsspassword.conf"']
        lines += [f'iim_mux.{k} = "{v}"' for k, v in (params or {}).items()]
        self.conf = folder / f"{name}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = Process([sys.executable, "-m", "iim.mux", "-c", str(self.conf),
                             "--instances", str(instances)], folder, name, cwd=folder)
        self.stderr = self.proc.stderr_file
        try:
            self.wait_links(threads * instances)
        except AssertionError:
            self.kill()
            raise

    def links_up(self) -> int:
        return self.log().count(" up to 127.0.0.1:")

    def wait_links(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` relay-thread links are logged as up (the deadline bounds a failure)."""
        try:
            self.proc.wait_until(lambda: self.links_up() >= count, f"{count} links up",
                                 timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {self.log_file.name} ---\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def workers(self) -> dict[int, int]:
        """{instance: pid} of the supervisor's worker processes."""
        pid = self.proc.pid
        found = {}
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:                  # the supervisor is gone
            return found
        for child in map(int, children):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"--worker" in argv:
                found[int(argv[argv.index(b"--worker") + 1])] = child
        return found

    def stop(self) -> int:
        return self.proc.stop()

    def kill(self) -> None:
        for pid in self.workers().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()


_user_dbs: dict[tuple, Path] = {}         # sorted (user, password) pairs -> database made
_cache: Path | None = None


def _cache_folder() -> Path:
    global _cache
    if _cache is None:
        _cache = Path(tempfile.mkdtemp(prefix="iim-userdbs-"))
        atexit.register(shutil.rmtree, _cache, True)
    return _cache


def admin(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "iim.admin", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise AssertionError(f"iim.admin {' '.join(args)}: {proc.stderr}")
    return proc


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that verifies the server against our CA and refuses plaintext."""

    def __init__(self, jid: str, password: str, ca_file: Path):
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file))
        self.enable_plaintext = False
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.received: asyncio.Queue = asyncio.Queue()
        self.errors: asyncio.Queue = asyncio.Queue()     # messages bounced back as errors
        self.presences: asyncio.Queue = asyncio.Queue()
        self.roster_pushes: asyncio.Queue = asyncio.Queue()
        self.subscribe_requests: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.failed = asyncio.Event()                   # SASL failed
        self.closed = asyncio.Event()                   # the connection closed
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0203")
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("failed_auth", lambda *_: self.failed.set())
        # Closed before the session started (a multiplexor without its links
        # refuses clients): a failure now, not a wait for the deadline.
        self.add_event_handler("disconnected", lambda *_: self.closed.set())
        self.add_event_handler("message", lambda m: self.received.put_nowait(m))
        self.add_event_handler("message_error", lambda m: self.errors.put_nowait(m))
        self.add_event_handler("presence_available", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("presence_unavailable", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("roster_update", self._roster_update)
        self.add_event_handler("presence_subscribe",
                               lambda p: self.subscribe_requests.put_nowait(p))
        self.roster.auto_authorize = None       # None: the tests answer subscriptions (False rejects)
        self.roster.auto_subscribe = False

    def _roster_update(self, iq):
        if iq["type"] == "set":                 # a push (RFC 6121 §2.1.6), not the get result
            self.roster_pushes.put_nowait(iq)

    async def _start(self, _event):
        await self.get_roster()
        self.send_presence()
        self.started.set()

    async def online(self, port: int, timeout: float = DEADLINE,
                     host: str = "127.0.0.1") -> "Client":
        self.connect(host, port)
        done, _ = await asyncio.wait([asyncio.ensure_future(self.started.wait()),
                                      asyncio.ensure_future(self.failed.wait()),
                                      asyncio.ensure_future(self.closed.wait())],
                                     timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self.started.is_set():
            why = ("authentication failed" if self.failed.is_set() else
                   "the connection closed" if self.closed.is_set() else f"{timeout} s passed")
            raise AssertionError(f"{self.boundjid} did not log in ({why})")
        return self

    async def offline(self) -> None:
        self.disconnect()
        await asyncio.wait_for(self.disconnected, 10)


async def next_item(queue: asyncio.Queue, timeout: float = 10):
    return await asyncio.wait_for(queue.get(), timeout)
