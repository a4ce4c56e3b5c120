"""XMPP clients nobody here wrote, on TLS stacks other than Python's OpenSSL.

Theory of operation
-------------------
Each client is run as a child process, exactly as a user would run it, and
judged only by what it prints and exits with:

* ``GoSendxmpp``: Debian's ``go-sendxmpp`` (go-xmpp over Go's crypto/tls).
  ``-t`` is direct TLS, otherwise STARTTLS. It has no CA option: Go reads its
  roots from ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, so the file names the one
  CA to trust and the folder is empty. ``-m FILE`` sends the file as one
  message (its final newline dropped); ``-l`` prints every message it gets
  as ``<RFC 3339 time> <bare sender>: <body>\\n`` until it is stopped.
* ``Nbxmpp``: Gajim's python3-nbxmpp (GLib/Gio TLS, i.e. GnuTLS through
  glib-networking), driven by tests/data/nbxmpp_client.py under Debian's
  /usr/bin/python3 (not the virtual environment). The CA file becomes GLib's
  default TLS database, so GnuTLS judges the chain; the script reports JSON
  lines and writes a received body to a file.

Both log in as a given account through a given port of the multiplexor, send
one message (``send``) or wait for one (``listen``), and say whether a
failure was the certificate (``certificate_refused``). Nothing here starts a
server; nothing is left running: every process is waited for or killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

NBXMPP_PYTHON = "/usr/bin/python3"          # Debian's: python3-nbxmpp is installed for it
NBXMPP_SCRIPT = Path(__file__).parent / "data" / "nbxmpp_client.py"


@dataclass(frozen=True)
class Account:
    jid: str            # bare: user@domain
    password: str


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client reaches the server, and the one CA it trusts."""
    port: int
    direct_tls: bool    # TLS from the first byte (legacy SSL) rather than STARTTLS
    cafile: Path
    host: str = "127.0.0.1"


def child_env(scratch: Path, **extra: str) -> dict[str, str]:
    """The environment of a client: no proxy (go-xmpp and GLib both honour
    HTTP_PROXY and friends; these tests stay on loopback), HOME in the test's
    folder, no Python settings of the virtual environment."""
    env = {key: value for key, value in os.environ.items()
           if "proxy" not in key.lower() and not key.startswith("PYTHON")}
    return {**env, "HOME": str(scratch), **extra}


@dataclass
class Finished:
    returncode: int | None      # None: it was stopped
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        return (f"exit {self.returncode}; stdout: {self.stdout[-2000:]!r}; "
                f"stderr: {self.stderr[-2000:]!r}")


class Child:
    """One client process; its output gathered as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._readers = [asyncio.ensure_future(self._gather(proc.stdout, self.stdout)),
                         asyncio.ensure_future(self._gather(proc.stderr, self.stderr))]

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> "Child":
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    @staticmethod
    async def _gather(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into += chunk

    async def until(self, done, timeout: float) -> bool:
        """Wait until ``done(self)`` holds or the process exits; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self):
            if self.proc.returncode is not None:
                await asyncio.gather(*self._readers)
                return done(self)
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait(self, timeout: float) -> Finished:
        """Its exit, or it is stopped after ``timeout`` seconds (returncode None)."""
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            return await self.stop()
        await asyncio.gather(*self._readers)
        return Finished(self.proc.returncode, bytes(self.stdout), bytes(self.stderr))

    async def stop(self) -> Finished:
        """SIGTERM (SIGKILL if that is not enough); what it had written."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)
        return Finished(None, bytes(self.stdout), bytes(self.stderr))


class GoSendxmpp:
    """Debian's go-sendxmpp: go-xmpp over Go's crypto/tls."""

    name = "go-sendxmpp"
    tls_stack = "Go crypto/tls"

    def installed(self) -> str | None:
        """Why it cannot run, or None."""
        if shutil.which("go-sendxmpp") is None:
            return "go-sendxmpp is not installed (Debian package go-sendxmpp; ./dev installs it)"
        return None

    def _argv(self, account: Account, endpoint: Endpoint) -> list[str]:
        argv = ["go-sendxmpp", "-u", account.jid, "-p", account.password,
                "-j", f"{endpoint.host}:{endpoint.port}", "--timeout", "10"]
        return argv + (["-t"] if endpoint.direct_tls else [])

    def _env(self, endpoint: Endpoint, scratch: Path) -> dict[str, str]:
        no_dir = scratch / "go-no-roots"
        no_dir.mkdir(exist_ok=True)
        return child_env(scratch, SSL_CERT_FILE=str(endpoint.cafile), SSL_CERT_DIR=str(no_dir))

    async def send(self, account: Account, endpoint: Endpoint, to: str, body_file: Path,
                   scratch: Path) -> Child:
        argv = self._argv(account, endpoint) + ["-m", str(body_file), to]
        return await Child.start(argv, self._env(endpoint, scratch))

    async def listen(self, account: Account, endpoint: Endpoint, sender: str,
                     scratch: Path) -> Child:
        argv = self._argv(account, endpoint) + ["-l"]
        return await Child.start(argv, self._env(endpoint, scratch))

    def received(self, child: Child, sender: str, size: int, scratch: Path) -> bytes | None:
        """The body of the first message from ``sender`` once ``size`` bytes of it are in."""
        out = bytes(child.stdout)
        marker = f" {sender}: ".encode()
        at = out.find(marker)
        if at < 0:
            return None
        body = out[at + len(marker):]
        if len(body) < size + 1:                # the body, then println's newline
            return None
        return body[:-1] if body.endswith(b"\n") else body

    def sent(self, finished: Finished) -> bool:
        return finished.returncode == 0

    def certificate_refused(self, finished: Finished) -> bool:
        return (finished.returncode not in (0, None)
                and b"x509: certificate signed by unknown authority" in finished.stderr)


class Nbxmpp:
    """python3-nbxmpp (Gajim's library): GLib/Gio TLS, i.e. GnuTLS."""

    name = "nbxmpp"
    tls_stack = "GnuTLS (GLib/Gio, glib-networking)"

    def installed(self) -> str | None:
        probe = ("import gi; gi.require_version('Gio', '2.0'); from gi.repository import Gio; "
                 "import nbxmpp; assert Gio.TlsBackend.get_default().supports_tls()")
        try:
            proc = subprocess.run([NBXMPP_PYTHON, "-c", probe], capture_output=True, text=True,
                                  timeout=30)
        except FileNotFoundError:
            return f"{NBXMPP_PYTHON} is missing (Debian's python3)"
        if proc.returncode:
            return ("nbxmpp with TLS is not usable from /usr/bin/python3 (Debian packages "
                    f"python3-nbxmpp and glib-networking; ./dev installs them): {proc.stderr}")
        return None

    def _argv(self, account: Account, endpoint: Endpoint) -> list[str]:
        argv = [NBXMPP_PYTHON, str(NBXMPP_SCRIPT), "--host", endpoint.host,
                "--port", str(endpoint.port), "--cafile", str(endpoint.cafile),
                "--jid", account.jid, "--password", account.password, "--timeout", "30"]
        return argv + (["--direct-tls"] if endpoint.direct_tls else [])

    @staticmethod
    def _env(scratch: Path) -> dict[str, str]:
        return child_env(scratch, GIO_USE_VFS="local", GSETTINGS_BACKEND="memory")

    async def send(self, account: Account, endpoint: Endpoint, to: str, body_file: Path,
                   scratch: Path) -> Child:
        argv = self._argv(account, endpoint) + ["--send-to", to, "--body-file", str(body_file)]
        return await Child.start(argv, self._env(scratch))

    async def listen(self, account: Account, endpoint: Endpoint, sender: str,
                     scratch: Path) -> Child:
        argv = self._argv(account, endpoint) + ["--receive-from", sender,
                                                "--out", str(scratch / "nbxmpp-received")]
        return await Child.start(argv, self._env(scratch))

    def received(self, child: Child, sender: str, size: int, scratch: Path) -> bytes | None:
        if not any(e["event"] == "received" for e in self.events(bytes(child.stdout))):
            return None
        return (scratch / "nbxmpp-received").read_bytes()

    def sent(self, finished: Finished) -> bool:
        events = self.events(finished.stdout)
        return finished.returncode == 0 and any(e["event"] == "sent" for e in events)

    def certificate_refused(self, finished: Finished) -> bool:
        failures = [e for e in self.events(finished.stdout) if e["event"] == "failed"]
        return (finished.returncode not in (0, None) and bool(failures)
                and failures[-1]["error"] == "BAD_CERTIFICATE"
                and "UNKNOWN_CA" in failures[-1]["certificate_errors"])

    @staticmethod
    def events(stdout: bytes) -> list[dict]:
        """The JSON lines the script printed (complete lines only)."""
        return [json.loads(line) for line in stdout.split(b"\n")[:-1] if line.startswith(b"{")]


CLIENTS = (GoSendxmpp(), Nbxmpp())
