"""``python -m iim.admin start|stop|refresh|status``: real daemons, real clients.

Every test runs the real dev-setup system (tests/devsystem.py: CA, PKCS#12
keystore, NSS database by certutil, users alice and bob, free ports), with
the server keystore rebuilt by the real keytool from the test CA so that a
test can renew it. The components run as daemons started by the real
``python -m iim.admin start``; clients are slixmpp, openssl s_client and
the project's raw client. ``start`` and ``stop``, whose processes and
signals are checked, run as processes; ``status`` and ``refresh``, which
only ask the daemons on their control sockets, run in the test's process
(``Instance.ask``), as does the start of a test that is about something else.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from devsystem import DevSystem, admin_here
from keytool import make_store
from live import Client, free_port, next_item
from support import relocate
from nsstools import run as nss_tool
from pki import NOW, DAY
from rawclient import RawClient

from iim import runtime
from iim.xmpp.client_stream import TLSMode

DOMAIN = "localhost"


# -- the system under test -------------------------------------------------------------------

class Instance:
    """A dev-setup folder run by iim.admin; legacy SSL on at the multiplexor."""

    def __init__(self, folder: Path, ca) -> None:
        self.dev = DevSystem(folder)
        self.folder = self.dev.folder
        self.conf = self.dev.conf
        self.ca = ca
        self.keystore = self.folder / "server-keystore.p12"
        self.server_cert = self.renew_server_certificate(days=200)
        self.bundle = self.folder / "trust.pem"
        self.bundle.write_bytes((self.folder / "ca.pem").read_bytes() + ca.cert_pem())
        self.set(**{"iim_mux.usessl": "on", "iim_server.requiressl": "false"})

    # configuration

    def set(self, **params: str) -> None:
        self.dev._set(self.conf, params)

    @property
    def server_port(self) -> int:
        return self.dev.server_port

    @property
    def mux_port(self) -> int:
        return self.dev.mux_port

    def password(self, user: str) -> str:
        return self.dev.users[user]

    def renew_server_certificate(self, days: int) -> x509.Certificate:
        """A new key and certificate from the test CA, written by keytool at the same path."""
        fresh = self.folder / "renewed.p12"
        fresh.unlink(missing_ok=True)
        leaf = make_store(fresh, self.ca, [DOMAIN, "127.0.0.1"], alias="server",
                          storetype="PKCS12", storepass=self.dev.store_password,
                          not_after=NOW + days * DAY)
        os.replace(fresh, self.keystore)
        return leaf

    def renew_mux_certificate(self) -> x509.Certificate:
        """certutil -F the old key and certificate, pk12util -i a new one, same nickname."""
        from nsstools import NSSDatabase
        db = NSSDatabase(self.folder / "nssdb", self.dev.store_password)
        pwfile = self.folder / "nss.pw"
        pwfile.write_text(self.dev.store_password + "\n")
        nss_tool("certutil", "-F", "-d", db.spec, "-n", "Multiplexor-Cert", "-f", str(pwfile))
        issued = self.ca.issue(DOMAIN, "127.0.0.1", not_after=NOW + 300 * DAY)
        db.import_pkcs12(issued, "Multiplexor-Cert", roots=[self.ca.cert])
        return issued.cert

    # runtime files

    def pidfile(self, stem: str) -> Path:
        return self.folder / f"{stem}.pid"

    def socket_path(self, stem: str) -> Path:
        return self.folder / f"{stem}.sock"

    def pid(self, stem: str) -> int:
        return int(self.pidfile(stem).read_text())

    # the command under test

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        """``python -m iim.admin ARGS -c iim.conf``: a process."""
        return admin(*args, "-c", str(self.conf))

    def ask(self, *args: str) -> subprocess.CompletedProcess:
        """The same command run in this process (devsystem.admin_here)."""
        return admin_here(*args, "-c", str(self.conf))

    def status(self, *args: str) -> dict:
        proc = self.ask("status", "--json", *args)
        return json.loads(proc.stdout)

    def kill_leftovers(self) -> None:
        """Whatever a failed test left running."""
        self.ask("stop", "--timeout", "20")
        for stem in ("server", "mux"):
            found = runtime.probe(self.pidfile(stem))
            if found.state == "running" and found.pid:
                os.kill(found.pid, signal.SIGKILL)


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iim.admin", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def instance(tmp_path, ca):
    inst = Instance(tmp_path / "dev", ca)
    yield inst
    inst.kill_leftovers()


@pytest.fixture
def running(instance):
    started = instance.ask("start")
    assert started.returncode == 0, started.stderr
    return instance


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def ask_async(inst: Instance, *args: str) -> subprocess.CompletedProcess:
    """``Instance.ask`` while this event loop keeps the clients' sessions alive."""
    return await asyncio.to_thread(inst.ask, *args)


async def admin_async(inst: Instance, *args: str) -> subprocess.CompletedProcess:
    """``Instance.admin`` (a process) while this event loop keeps the clients' sessions alive."""
    return await asyncio.to_thread(inst.admin, *args)


class LegacyClient(Client):
    """TLS from the first byte to the multiplexor (legacy SSL), no STARTTLS."""

    def __init__(self, *args):
        super().__init__(*args)
        self.enable_direct_tls = True
        self.enable_starttls = False


class WatchedClient(Client):
    """Remembers the stream error the server sent (RFC 6120 §4.9)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stream_errors: list[str] = []
        self.add_event_handler("stream_error",
                               lambda error: self.stream_errors.append(error["condition"]))


class WatchedLegacyClient(WatchedClient, LegacyClient):
    pass


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def starttls_certificate(port: int, ca_file: Path) -> x509.Certificate:
    """The certificate a new connection sees after STARTTLS, as openssl s_client shows it."""
    proc = subprocess.run(["openssl", "s_client", "-starttls", "xmpp", "-xmpphost", DOMAIN,
                           "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file),
                           "-verify_return_error"],
                          input="", capture_output=True, text=True, timeout=30)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", proc.stdout,
                    re.DOTALL)
    assert pem, proc.stdout + proc.stderr
    assert "Verify return code: 0 (ok)" in proc.stdout
    return x509.load_pem_x509_certificate(pem[0].encode())


def legacy_certificate(port: int, ca_file: Path) -> x509.Certificate:
    """The certificate a new legacy-SSL client sees at the multiplexor."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def serial(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


# -- start and status ------------------------------------------------------------------------------

def test_start_runs_server_then_multiplexor_as_ready_daemons(instance):
    started = instance.admin("start")

    assert started.returncode == 0, started.stderr
    server, mux = instance.pid("server"), instance.pid("mux")
    assert started.stdout.splitlines() == [f"server started (pid {server})",
                                           f"multiplexor started (pid {mux})"]
    for pid, module in ((server, "iim.server"), (mux, "iim.mux")):
        assert module in cmdline(pid) and "--managed" in cmdline(pid)
        assert os.getsid(pid) == pid                          # its own session
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for stem in ("server", "mux"):
        assert stat.S_IMODE(instance.socket_path(stem).stat().st_mode) == 0o600
    # ready means ready: a client is served at once, through the multiplexor
    assert legacy_certificate(instance.mux_port, instance.bundle).subject.rfc4514_string()
    status = instance.status()
    assert status["multiplexor"]["status"]["links_up"] == 2
    assert [link["state"] for link in status["server"]["status"]["mux_links"]] == ["up", "up"]


def test_status_counts_sessions_by_transport_security(running):
    inst = running

    async def scenario():
        # none: plaintext straight to the server (requiressl is off here)
        plain = await RawClient(f"alice@{DOMAIN}/plain", inst.password("alice"), inst.bundle,
                                tls=TLSMode.NEVER).connect(inst.server_port)
        # tls: STARTTLS with the server, no multiplexor
        direct = await Client(f"bob@{DOMAIN}/direct", inst.password("bob"),
                              inst.bundle).online(inst.server_port)
        # legacy-ssl: TLS from the first byte, ended at the multiplexor
        legacy = await LegacyClient(f"alice@{DOMAIN}/legacy", inst.password("alice"),
                                    inst.bundle).online(inst.mux_port)
        # both: STARTTLS inside legacy SSL
        double = await RawClient(f"bob@{DOMAIN}/double", inst.password("bob"),
                                 inst.bundle).connect(
            inst.mux_port, outer_tls=ssl.create_default_context(cafile=str(inst.bundle)))
        human = await ask_async(inst, "status")
        as_json = json.loads((await ask_async(inst, "status", "--json")).stdout)
        as_json["presented"] = await asyncio.to_thread(legacy_certificate, inst.mux_port,
                                                       inst.bundle)
        for client in (plain, double):
            await client.close()
        for client in (direct, legacy):
            await client.offline()
        return human, as_json

    human, report = run(scenario())

    server, mux = report["server"]["status"], report["multiplexor"]["status"]
    assert server["sessions"] == {"none": 1, "tls": 1, "legacy-ssl": 1, "both": 1}
    assert mux["sessions"]["legacy-ssl"] == 2 and mux["sessions"]["plain"] == 0
    assert sum(link["sessions"] for link in server["mux_links"]) == 2
    assert server["certificate"]["serial"] == serial(inst.server_cert)
    assert mux["certificate"]["serial"] == serial(report["presented"])     # the NSS one
    assert server["s2s"] == []
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"server: running (pid {inst.pid('server')}, up ")
    for label in ("no TLS", "legacy SSL (TLS ended at the multiplexor)",
                  "TLS end to end (STARTTLS with the server)",
                  "legacy SSL and STARTTLS inside it"):
        assert re.search(rf"^    {re.escape(label)} +1$", human.stdout, re.MULTILINE), label
    assert "  s2s peers     none" in lines
    assert f"serial {serial(inst.server_cert)}" in human.stdout
    expiry = inst.server_cert.not_valid_after_utc.strftime("%Y-%m-%d")
    assert f"expires {expiry}" in human.stdout
    assert any(line.startswith(f"multiplexor: running (pid {inst.pid('mux')}") for line in lines)
    assert "  server        127.0.0.1:" in human.stdout and ": 2 of 2 links up" in human.stdout


def test_status_of_a_stopped_instance_fails_and_says_why(instance):
    proc = instance.ask("status")

    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["server: not running", "multiplexor: not running"]


def test_a_missing_iim_conf_is_one_line_for_every_command(tmp_path):
    missing = tmp_path / "nowhere" / "iim.conf"
    for command in ("start", "stop", "refresh", "status"):
        proc = admin(command, "-c", str(missing))
        assert proc.returncode == 1, command
        assert proc.stderr.splitlines()[0] == (f"{missing}: cannot read: No such file or "
                                               "directory"), command
        assert "Traceback" not in proc.stderr


def test_a_multiplexor_the_instance_does_not_use_is_not_required(instance):
    instance.set(**{"iim_server.usemuxport": "false"})

    started = instance.admin("start")
    status = instance.ask("status")

    assert started.stdout.splitlines() == [f"server started (pid {instance.pid('server')})"]
    assert not instance.pidfile("mux").exists()
    assert status.returncode == 0
    assert "multiplexor: not running; not used by this instance" in status.stdout


# -- start: already running, stale, failures -------------------------------------------------------

def test_start_when_already_running_says_so_and_changes_nothing(running):
    before = running.pid("server"), running.pid("mux")

    again = running.admin("start")

    assert again.returncode == 0
    assert again.stdout.splitlines() == [f"server: already running (pid {before[0]})",
                                         f"multiplexor: already running (pid {before[1]})"]
    assert (running.pid("server"), running.pid("mux")) == before


def test_a_stale_pid_file_is_reported_then_removed_by_start(instance):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    instance.pidfile("server").write_text(f"{gone.pid}\n")

    status = instance.ask("status", "server")
    started = instance.admin("start", "server")

    assert status.returncode == 1
    assert status.stdout.strip() == (f"server: not running (stale pid file: pid {gone.pid} "
                                     "is not running)")
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [
        f"server: removed a stale pid file ({instance.pidfile('server')}: pid {gone.pid} "
        "is not running)",
        f"server started (pid {instance.pid('server')})"]
    assert instance.pid("server") != gone.pid


def test_start_of_the_multiplexor_fails_with_its_one_line_error_when_its_port_is_taken(instance):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", instance.mux_port))
        squatter.listen()
        proc = instance.admin("start")

    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        f"multiplexor: not started: iim_mux.listenport: cannot listen on "
        f"127.0.0.1:{instance.mux_port}: Address already in use by pid {os.getpid()} (")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout.splitlines() == [f"server started (pid {instance.pid('server')})"]
    assert not instance.pidfile("mux").exists()


def test_start_of_the_server_fails_with_its_one_line_error_and_nothing_else_starts(instance):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", instance.server_port))
        squatter.listen()
        proc = instance.admin("start")

    assert proc.returncode == 1
    assert proc.stdout == ""
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"server: not started: iim_server.port: cannot listen on "
                           f"127.0.0.1:{instance.server_port}")
    assert not instance.pidfile("server").exists() and not instance.pidfile("mux").exists()


def test_start_with_a_broken_iim_conf_prints_its_errors_and_starts_nothing(instance):
    instance.set(**{"iim_server.maxstanzasize": "tiny"})

    proc = instance.admin("start")

    assert proc.returncode == 1
    assert re.fullmatch(r".*iim\.conf:\d+: iim_server\.maxstanzasize: expected a size in "
                        r"bytes, at least 10000, got \"tiny\"", proc.stderr.strip())
    assert not instance.pidfile("server").exists()


def test_the_multiplexor_alone_is_not_ready_without_its_server(instance):
    proc = instance.admin("start", "multiplexor", "--timeout", "3")

    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"multiplexor: not started: not ready within 3 s (0 of 2 links to the server up; "
        f"link to 127.0.0.1:{instance.dev.link_port}: Connection refused); stopped it again")
    assert not instance.pidfile("mux").exists()


# -- refresh ---------------------------------------------------------------------------------------

def test_refresh_renews_the_server_certificate_without_dropping_a_session(running):
    inst = running
    old = inst.server_cert

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/kept", inst.password("alice"),
                             inst.bundle).online(inst.server_port)
        bob = await LegacyClient(f"bob@{DOMAIN}/kept", inst.password("bob"),
                                 inst.bundle).online(inst.mux_port)
        renewed = await asyncio.to_thread(inst.renew_server_certificate, 400)
        refreshed = await ask_async(inst, "refresh")
        seen = await asyncio.to_thread(starttls_certificate, inst.server_port, inst.bundle)
        alice.send_message(mto=f"bob@{DOMAIN}/kept", mbody="after the refresh", mtype="chat")
        got = await next_item(bob.received)
        status = json.loads((await ask_async(inst, "status", "--json")).stdout)
        await alice.offline()
        await bob.offline()
        return renewed, refreshed, seen, got["body"], status

    renewed, refreshed, seen, body, status = run(scenario())

    assert refreshed.returncode == 0, refreshed.stderr
    assert serial(renewed) != serial(old)
    assert seen.serial_number == renewed.serial_number         # new connections
    assert body == "after the refresh"                          # established sessions survive
    lines = refreshed.stdout.splitlines()
    assert lines[0].startswith("server: refreshed; certificate CN=localhost,O=iim tests; "
                               f"serial {serial(renewed)}; expires "
                               f"{renewed.not_valid_after_utc:%Y-%m-%d}")
    assert lines[1].startswith("multiplexor: refreshed")
    server = status["server"]["status"]
    assert server["certificate"]["serial"] == serial(renewed)
    assert server["sessions"]["tls"] == 1 and server["sessions"]["legacy-ssl"] == 1


def test_refresh_reloads_the_multiplexor_nss_certificate_for_new_clients(running):
    inst = running
    before = legacy_certificate(inst.mux_port, inst.bundle)

    async def scenario():
        kept = await LegacyClient(f"alice@{DOMAIN}/kept", inst.password("alice"),
                                  inst.bundle).online(inst.mux_port)
        renewed = await asyncio.to_thread(inst.renew_mux_certificate)
        refreshed = await ask_async(inst, "refresh", "multiplexor")
        seen = await asyncio.to_thread(legacy_certificate, inst.mux_port, inst.bundle)
        pong = await kept.plugin["xep_0199"].ping(jid=DOMAIN, timeout=10)
        await kept.offline()
        return renewed, refreshed, seen, pong

    renewed, refreshed, seen, pong = run(scenario())

    assert refreshed.returncode == 0, refreshed.stderr
    assert seen.serial_number == renewed.serial_number != before.serial_number
    assert pong is not None                                     # the old session still works
    assert refreshed.stdout.startswith(f"multiplexor: refreshed; certificate "
                                       f"CN=localhost,O=iim tests; serial {serial(renewed)}")


def test_refresh_applies_live_parameters_and_names_those_that_need_a_restart(running):
    inst = running
    new_port = free_port()

    async def scenario():
        before = await RawClient(f"alice@{DOMAIN}/before", inst.password("alice"), inst.bundle,
                                 tls=TLSMode.NEVER).connect(inst.server_port)
        offered_before = await asyncio.to_thread(stream_features, inst.server_port)
        inst.set(**{"iim_server.port": f"127.0.0.1:{new_port}",
                    "iim_server.requiressl": "true",
                    "iim_server.stanza_timeout": "45",
                    "iim.log.iim_server.severity": "DEBUG",
                    "iim_mux.maxsessions": "100"})
        refreshed = await ask_async(inst, "refresh")
        offered_after = await asyncio.to_thread(stream_features, inst.server_port)
        await asyncio.to_thread(legacy_certificate, inst.mux_port, inst.bundle)
        pong = await ping(before)
        await before.close()
        return refreshed, offered_before, offered_after, pong

    refreshed, offered_before, offered_after, pong = run(scenario())

    assert refreshed.returncode == 0, refreshed.stderr
    lines = refreshed.stdout.splitlines()
    assert lines[1:5] == ["server: iim_server.requiressl: applied",
                          "server: iim_server.stanza_timeout: applied",
                          "server: iim.log.iim_server.severity: applied",
                          "server: iim_server.port: changed in iim.conf; needs a restart of "
                          "the server"]
    assert lines[5].startswith("multiplexor: refreshed")
    assert lines[6:] == ["multiplexor: iim_mux.maxsessions: changed in iim.conf; needs a "
                         "restart of the multiplexor"]
    log = (inst.folder / "server.log").read_text()
    before, after = log.split("refresh: iim.conf and the certificates re-read")
    assert " DEBUG " not in before
    wait_for(lambda: " DEBUG " in (inst.folder / "server.log").read_text(),
             "a DEBUG line once the severity is DEBUG")
    assert "<starttls" in offered_before and "<required" not in offered_before
    assert re.search(r"<starttls[^>]*><required\s*/></starttls>", offered_after)  # new ones
    assert pong.get("type") == "result"         # the plaintext session from before is kept
    status = inst.status("server")["server"]["status"]
    assert status["listening"] == [f"127.0.0.1:{inst.server_port}"]   # until a restart
    assert status["requiressl"] is True
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", new_port), timeout=2).close()


def wait_for(predicate, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def stream_features(port: int) -> str:
    """The <stream:features/> a new client stream is offered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                     .encode())
        received = b""
        while b"</stream:features>" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    text = received.decode()
    return text[text.index("<stream:features"):]


async def ping(client: RawClient):
    """XEP-0199 ping to the server over an established RawClient session."""
    from xml.etree.ElementTree import Element, SubElement
    iq = Element("{jabber:client}iq", {"type": "get", "id": "admin-ping", "to": DOMAIN})
    SubElement(iq, "{urn:xmpp:ping}ping")
    client.send(iq)
    for _ in range(200):
        answer = next((s for s in client.stanzas if s.get("id") == "admin-ping"), None)
        if answer is not None:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError("no answer to the ping")


def test_refresh_with_a_broken_iim_conf_is_refused_and_the_server_keeps_running(running):
    inst = running
    inst.set(**{"iim_server.negotiation_timeout": "soon"})

    proc = inst.ask("refresh")

    assert proc.returncode == 1
    errors = proc.stderr.splitlines()
    assert re.fullmatch(r".*iim\.conf:\d+: iim_server\.negotiation_timeout: expected a number "
                        r"of seconds, at least 1, got \"soon\"", errors[0])
    assert errors[1] == ("refresh refused: iim.conf has errors; the running components keep "
                         "their settings")
    assert proc.stdout == ""
    assert starttls_certificate(inst.server_port, inst.bundle).serial_number == \
        inst.server_cert.serial_number
    assert inst.ask("status").returncode == 0


def test_refresh_with_an_unreadable_keystore_is_refused_by_the_server_which_keeps_its_own(
        running):
    inst = running
    inst.keystore.write_bytes(b"not a keystore at all")

    proc = inst.ask("refresh", "server")

    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(
        "server: refresh refused, running settings kept: iim_server.sslkeystore")
    assert inst.dev.store_password not in line
    async def login():
        client = await Client(f"alice@{DOMAIN}/later", inst.password("alice"),
                              inst.bundle).online(inst.server_port)
        await client.offline()
    run(login())                                                 # the old certificate serves
    assert starttls_certificate(inst.server_port, inst.bundle).serial_number == \
        inst.server_cert.serial_number


# -- stop -------------------------------------------------------------------------------------------

def test_stop_closes_every_stream_cleanly_then_both_are_gone(running):
    inst = running
    pids = inst.pid("server"), inst.pid("mux")

    async def scenario():
        direct = await WatchedClient(f"alice@{DOMAIN}/direct", inst.password("alice"),
                                     inst.bundle).online(inst.server_port)
        via_mux = await WatchedLegacyClient(f"bob@{DOMAIN}/mux", inst.password("bob"),
                                            inst.bundle).online(inst.mux_port)
        gone = [client.disconnected for client in (direct, via_mux)]   # replaced when set
        stopped = await admin_async(inst, "stop")
        await asyncio.wait_for(asyncio.gather(*gone), 10)
        return stopped, direct.stream_errors, via_mux.stream_errors

    stopped, direct_errors, mux_errors = run(scenario())

    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [f"server stopped (pid {pids[0]})",
                                           f"multiplexor stopped (pid {pids[1]})"]
    assert direct_errors == ["system-shutdown"]
    assert mux_errors == ["system-shutdown"]         # through the multiplexor, before it went
    assert not any(alive(pid) for pid in pids)
    for stem in ("server", "mux"):
        assert not inst.pidfile(stem).exists() and not inst.socket_path(stem).exists()
    again = inst.ask("stop")
    assert again.returncode == 0
    assert again.stdout.splitlines() == ["server: not running", "multiplexor: not running"]


def test_stop_works_while_iim_conf_is_broken(running):
    pid = running.pid("server")
    running.set(**{"iim_server.port": "not a port"})

    proc = running.admin("stop", "server")

    assert proc.returncode == 0
    assert proc.stdout.strip() == f"server stopped (pid {pid})"
    assert not alive(pid)


def test_stop_falls_back_to_sigterm_when_the_control_socket_is_gone(running):
    pid = running.pid("mux")
    running.socket_path("mux").unlink()

    proc = running.admin("stop", "multiplexor")

    assert proc.returncode == 0
    assert proc.stdout.strip() == (f"multiplexor stopped (pid {pid}; its control socket did "
                                   "not answer, SIGTERM sent)")
    assert not alive(pid) and not running.pidfile("mux").exists()


# -- the control socket -----------------------------------------------------------------------------

def test_another_user_gets_no_answer_even_with_access_to_the_socket(instance, tmp_path):
    import tempfile
    rundir = Path(tempfile.mkdtemp(prefix="iim-run-"))      # outside pytest's 0700 folders
    try:
        os.chmod(rundir, 0o711)
        instance.set(**{"iim.instancevardir": str(rundir)})
        assert instance.ask("start", "server").returncode == 0
        path = rundir / "server.sock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        os.chmod(path, 0o666)                   # defeat the file mode: SO_PEERCRED remains
        answer = _connect_as_nobody(path)
    finally:
        stopped = instance.ask("stop").returncode == 0        # even when a check above failed
        for leftover in rundir.iterdir():
            leftover.unlink()
        rundir.rmdir()

    assert stopped
    assert answer == "closed"                    # without a word
    assert "control: connection from another user refused" in \
        (instance.folder / "server.log").read_text()


def _connect_as_nobody(path: Path) -> str:
    """Ask for the status from a process running as nobody (a forked child: the
    virtual environment's interpreter may not be executable by nobody)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: nobody, one request, the answer
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                try:
                    sock.sendall(b'{"op": "status"}\n')
                    answer = sock.recv(100)
                except (BrokenPipeError, ConnectionResetError):   # closed before we asked
                    answer = b""
                os.write(write_end, (repr(answer) if answer else "closed").encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, f"error: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


# -- help and version --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["start", "stop", "refresh", "status"])
def test_every_command_has_a_manual_page_in_its_help(command):
    proc = admin(command, "--help")

    assert proc.returncode == 0
    text = proc.stdout
    assert text.startswith(f"usage: python -m iim.admin {command} [-h]")
    for section in ("positional arguments:", "examples:", "exit status:", "files:"):
        assert section in text, section
    assert "COMPONENT" in text and "iim.instancevardir" in text
    assert f"python -m iim.admin {command}" in text.split("examples:")[1]
    assert re.search(r"^  0  \S", text, re.MULTILINE) and re.search(r"^  1  \S", text,
                                                                   re.MULTILINE)


def test_version_names_the_package_python_openssl_and_nss():
    import importlib.metadata
    import platform

    proc = admin("version")

    nss = subprocess.run(["pkg-config", "--modversion", "nss"], capture_output=True,
                         text=True).stdout.strip()
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0
    assert lines[0] == f"iim {importlib.metadata.version('iim')}"
    assert lines[1].startswith(f"Python {platform.python_version()} (CPython")
    assert lines[2] == f"{ssl.OPENSSL_VERSION} (Python's ssl module: the server)"
    assert lines[3].startswith("OpenSSL 3.") and "iim._fastmux" in lines[3]
    assert lines[4].startswith(f"NSS {nss}")


# -- federation peers in status ----------------------------------------------------------------------

def test_status_lists_s2s_peers_with_their_tls_state(tmp_path, ca):
    from fedlive import federated
    servers = federated(tmp_path, ca, {"a.example": {"host": "127.0.0.1"},
                                       "b.example": {"host": "127.0.0.2"}})
    for server in servers.values():
        server.add_users()
        assert admin_here("start", "server", "-c", str(server.conf)).returncode == 0
    a, b = servers["a.example"], servers["b.example"]
    try:
        async def chat():
            alice = await Client("alice@a.example", a.users["alice"], a.ca_file).online(
                a.port, host=a.host)
            bob = await Client("bob@b.example", b.users["bob"], b.ca_file).online(
                b.port, host=b.host)
            alice.send_message(mto="bob@b.example", mbody="across", mtype="chat")
            got = await next_item(bob.received, 20)
            human = await asyncio.to_thread(admin_here, "status", "server", "-c", str(a.conf))
            report = json.loads((await asyncio.to_thread(
                admin_here, "status", "server", "--json", "-c", str(a.conf))).stdout)
            await alice.offline()
            await bob.offline()
            return got["body"], human, report

        body, human, report = run(chat())
    finally:
        for server in servers.values():
            admin_here("stop", "server", "-c", str(server.conf))

    assert body == "across"
    peers = report["server"]["status"]["s2s"]
    out = [p for p in peers if p["direction"] == "out"]
    assert [p["domain"] for p in out] == ["b.example"]
    assert out[0]["tls"].startswith("TLSv1.3 ") and out[0]["state"] == "established"
    assert "external" in out[0]["auth"].lower()     # XEP-0178: the CA-issued certificate
    assert re.search(rf"^    b\.example out: TLS TLSv1\.3 \S+, authenticated by "
                     rf"{re.escape(out[0]['auth'])}, established$", human.stdout,
                     re.MULTILINE), human.stdout


# -- dev-setup and the runtime files in its folder -------------------------------------------------

def test_dev_setup_force_refuses_while_the_instance_runs_and_cleans_up_after_it(tmp_path):
    folder = tmp_path / "dev"
    assert admin("dev-setup", "--dir", str(folder)).returncode == 0
    conf = folder / "iim.conf"
    conf.write_text(relocate(conf.read_text())[0])     # the log stays on stderr
    assert admin("start", "-c", str(conf)).returncode == 0
    try:
        pid = int((folder / "server.pid").read_text())
        refused = admin("dev-setup", "--dir", str(folder), "--force")
    finally:
        stopped = admin("stop", "-c", str(conf))
    leftovers = sorted(p.name for p in folder.glob("*.stderr"))
    redone = admin("dev-setup", "--dir", str(folder), "--force")

    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"dev-setup: the server of {folder} is running (pid "
                                      f"{pid}); stop it first: python -m iim.admin stop -c "
                                      f"{conf}")
    assert stopped.returncode == 0
    assert leftovers == ["mux.stderr", "server.stderr"]
    assert redone.returncode == 0, redone.stderr
    assert not list(folder.glob("*.stderr"))
