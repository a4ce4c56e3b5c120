"""The whole system: python -m iim.server and python -m iim.mux, slixmpp clients.

(a) STARTTLS through the plain multiplexor: TLS runs end to end, the server
    terminates it, the multiplexor never touches it;
(b) legacy SSL: the multiplexor terminates TLS from the first byte with the
    certificate of an NSS database made by certutil, and the client verifies it;
(c) STARTTLS inside legacy SSL, relayed;
(d) two users chatting through two different multiplexor processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest
from cryptography import x509

from live import DOMAIN, Client, LiveMux, LiveServer, next_item
from nsstools import NSSDatabase

NSS_PASSWORD = "Nss-Mux-Pw-5"


@pytest.fixture(scope="module")
def system(tmp_path_factory, ca):
    folder = tmp_path_factory.mktemp("system")
    server = LiveServer(folder, ca)
    server.add_users()
    server.start()
    issued = ca.issue(DOMAIN, "127.0.0.1")
    db = NSSDatabase.create(folder / "nssdb", NSS_PASSWORD)
    db.import_pkcs12(issued, "Multiplexor-Cert", roots=[ca.cert])
    db.add_cert(ca.cert, "iim test CA", "C,,")
    password_file = folder / "nsspassword.conf"
    password_file.write_text(f"Internal (Software) Token:{NSS_PASSWORD}\n")
    os.chmod(password_file, 0o600)
    muxes = {"plain": LiveMux(folder, server, "mux-plain"),
             "second": LiveMux(folder, server, "mux-second"),
             "legacy": LiveMux(folder, server, "mux-legacy", usessl=True)}
    yield server, muxes, issued.cert
    for mux in muxes.values():
        assert mux.stop() == 0
    assert server.stop() == 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class LegacyClient(Client):
    """A client that speaks TLS from the first byte (legacy SSL, like port 5223)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.enable_direct_tls = True
        self.enable_starttls = False


def test_starttls_through_the_mux_is_terminated_by_the_server(system):
    server, muxes, _ = system

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/via-mux", "alice-pw-1",
                             server.ca_file).online(muxes["plain"].port)
        bob = await Client(f"bob@{DOMAIN}/via-mux", "bob-pw-2",
                           server.ca_file).online(muxes["plain"].port)
        alice.send_message(mto=f"bob@{DOMAIN}/via-mux", mbody="through the mux", mtype="chat")
        got = await next_item(bob.received)
        await alice.offline()
        await bob.offline()
        return got["body"]

    assert run(scenario()) == "through the mux"
    log = server.log()
    assert "c2s mux:127.0.0.1:" in log
    tls_lines = [line for line in log.splitlines()
                 if "c2s mux:" in line and "TLS established" in line]
    assert tls_lines, "the server did not terminate TLS for the mux sessions"
    assert "legacy SSL" not in muxes["plain"].log()      # the plain mux never does TLS


def test_legacy_ssl_certificate_comes_from_the_nss_database(system):
    server, muxes, nss_leaf = system
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.set_alpn_protocols(["xmpp-client"])
    with socket.create_connection(("127.0.0.1", muxes["legacy"].port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        alpn, version = tls.selected_alpn_protocol(), tls.version()
    assert leaf == nss_leaf
    assert alpn == "xmpp-client" and version in ("TLSv1.2", "TLSv1.3")


def test_legacy_ssl_login_and_chat(system):
    server, muxes, _ = system

    async def scenario():
        alice = await LegacyClient(f"alice@{DOMAIN}/legacy", "alice-pw-1",
                                   server.ca_file).online(muxes["legacy"].port)
        bob = await Client(f"bob@{DOMAIN}/plain", "bob-pw-2",
                           server.ca_file).online(muxes["plain"].port)
        alice.send_message(mto=f"bob@{DOMAIN}/plain", mbody="from legacy ssl", mtype="chat")
        got = await next_item(bob.received)
        await alice.offline()
        await bob.offline()
        return got["body"]

    assert run(scenario()) == "from legacy ssl"
    assert "session alice@localhost/legacy (TLS at the multiplexor)" in server.log()


def test_starttls_inside_legacy_ssl_is_relayed(system):
    from rawclient import RawClient
    server, muxes, _ = system
    outer = ssl.create_default_context(cafile=str(server.ca_file))

    async def scenario():
        client = RawClient(f"alice@{DOMAIN}/double", "alice-pw-1", server.ca_file)
        await client.connect(muxes["legacy"].port, outer_tls=outer)
        secure_inside = client.tls is not None and client.tls.handshake_done
        await client.close()
        return secure_inside

    assert run(scenario()) is True
    assert "inside TLS at the multiplexor)" in server.log()     # e.g. (TLSv1.3 ... inside ...)


def test_two_users_chat_through_two_multiplexors(system):
    server, muxes, _ = system

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/one", "alice-pw-1",
                             server.ca_file).online(muxes["plain"].port)
        bob = await Client(f"bob@{DOMAIN}/two", "bob-pw-2",
                           server.ca_file).online(muxes["second"].port)
        alice.send_message(mto=f"bob@{DOMAIN}/two", mbody="across muxes", mtype="chat")
        got = await next_item(bob.received)
        bob.send_message(mto=f"alice@{DOMAIN}/one", mbody="and back", mtype="chat")
        back = await next_item(alice.received)
        await alice.offline()
        await bob.offline()
        return got["body"], back["body"]

    assert run(scenario()) == ("across muxes", "and back")
    assert " up to 127.0.0.1:" in muxes["second"].log()
