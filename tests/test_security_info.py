"""The security query (``urn:xmpp:iim:security:0``, iim/server/security_info.py):
a session asks the server how its own connection is protected.

Transcripts over real ``ClientSession``s and a real router, in memory: the
client is the project's sans-I/O ``ClientStream``; over STARTTLS, real TLS runs
between it and the session over memory BIOs (the session's TLS code is the one
a socket of ``iim_server.port`` feeds: a carrier only moves bytes). The
legacy-SSL case is the carrier a mux link gives such a session
(``transport_tls`` from the OPEN frame's version and cipher).
"""

from __future__ import annotations

import asyncio
import logging
from xml.etree.ElementTree import Element

import pytest

from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.server.c2s import ClientSession, SessionContext
from iim.server.router import Router
from iim.server.security_info import CarrierTLS, Layer, TLSEnd
from iim.server.storage import Storage
from iim.tlsbio import TLSLayer
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.events import SessionEstablished, StartTLS
from iim.xmpp.jid import JID
from iim.xmpp.server_stream import ServerPolicy
from iim.xmpp.xml import ElementReceived, StreamParser
from support.carrier import MemoryCarrier

DOMAIN = "example.com"
SEC = "{urn:xmpp:iim:security:0}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
QUERY = b"<security xmlns='urn:xmpp:iim:security:0'/>"


class Client:
    """One client connection: a session, its carrier, the client stream, its TLS."""

    def __init__(self, ctx, jid: str, *, ca=None, carrier_tls: CarrierTLS | None = None,
                 declared_secure: bool = False):
        self.carrier = MemoryCarrier()
        self.carrier.transport_tls = carrier_tls
        declared_secure = declared_secure or carrier_tls is not None
        self.session = ClientSession(ctx, self.carrier, secure_transport=declared_secure)
        mode = TLSMode.REQUIRED if ca is not None else TLSMode.NEVER
        # With a CA the client runs STARTTLS, inside legacy SSL too (verify's --inner-starttls)
        self.stream = ClientStream(JID.parse(jid), "secret-" + jid.split("@")[0], tls=mode,
                                   secure_transport=declared_secure and ca is None)
        self.tls: TLSLayer | None = None
        self._ca = ca
        self.stream.start()
        for _ in range(60):
            if any(isinstance(e, SessionEstablished) for e in self._round()):
                return
        raise AssertionError("no session")

    def _round(self) -> list:
        self._send(self.stream.data_to_send())
        events = self.stream.receive_data(self._receive())
        if any(isinstance(e, StartTLS) for e in events):
            self.tls = TLSLayer(client_context(None, anchors=[self._ca.cert]),
                                server_side=False, server_hostname=DOMAIN)
            self.session.data_received(self.tls.start())
            while not self.tls.handshake_done:
                self._receive()
            self.stream.tls_established()
        return events

    def _send(self, plain: bytes) -> None:
        data = self.tls.send(plain) if self.tls else plain
        if data:
            self.session.data_received(data)

    def _receive(self) -> bytes:
        data = self.carrier.take()
        if self.tls is None:
            return data
        plain, back = self.tls.receive(data)
        if back:
            self.session.data_received(back)
        return plain

    def ask(self, payload: bytes = QUERY, *, to: str | None = None, type: str = "get") -> Element:
        to_attr = f" to='{to}'" if to else ""
        self._send(f"<iq type='{type}' id='q1'{to_attr}>".encode() + payload + b"</iq>")
        header = b"<stream:stream xmlns='jabber:client' " \
                 b"xmlns:stream='http://etherx.jabber.org/streams'>"
        [reply] = [e.element for e in StreamParser().feed(header + self._receive())
                   if isinstance(e, ElementReceived)]
        assert reply.get("id") == "q1"
        return reply


def layers(reply: Element) -> list[dict]:
    assert reply.get("type") == "result", reply.attrib
    return [dict(t.attrib) for t in reply.find(SEC + "security").findall(SEC + "tls")]


def error_condition(reply: Element) -> str:
    assert reply.get("type") == "error"
    return reply.find("{jabber:client}error")[0].tag.removeprefix(STANZAS)


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue(DOMAIN)


@pytest.fixture
def world(tmp_path, ca, leaf):
    """``world(scenario)``: run it with (ctx) inside a loop; STARTTLS offered."""
    storage = Storage.open(tmp_path / "iim.db")
    for user in ("juliet", "romeo"):
        storage.add_user(user, "secret-" + user)
    material = KeyMaterial(leaf.key, leaf.chain, (ca.cert,))

    def run(scenario, *, tls: bool = True):
        async def main():
            log = logging.getLogger("test.security")
            router = Router(DOMAIN, storage, log=log,
                            server_certificate=lambda: material.certificate if tls else None)
            ctx = SessionContext(policy=ServerPolicy(DOMAIN, tls_offered=tls),
                                 tls_context=server_context(material) if tls else None,
                                 router=router, storage=storage, log=log)
            return scenario(ctx)
        return asyncio.run(main())
    yield run
    storage.close()


def test_over_starttls_the_answer_is_this_sessions_tls_and_the_servers_certificate(
        world, ca, leaf):
    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/balcony", ca=ca)
        reply = juliet.ask()
        security = reply.find(SEC + "security")
        assert security.get("secure") == "true"
        [tls] = security.findall(SEC + "tls")
        info = juliet.tls.info()                    # what the client's own end saw
        assert tls.attrib == {"layer": "starttls", "ends": "server", "version": info.version,
                              "cipher": info.cipher, "bits": str(info.bits)}
        assert info.version in ("TLSv1.2", "TLSv1.3")
        [cert] = tls.findall(SEC + "certificate")
        assert cert.get("subject") == leaf.cert.subject.rfc4514_string()
        assert cert.get("issuer") == ca.cert.subject.rfc4514_string()
        assert cert.get("not-after") == leaf.cert.not_valid_after_utc.strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        assert reply.get("to") == "juliet@example.com/balcony" and reply.get("from") is None
    world(scenario)


def test_over_a_plain_carrier_the_answer_is_not_encrypted(world):
    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/balcony")
        security = juliet.ask().find(SEC + "security")
        assert security.get("secure") == "false"
        assert [child.tag for child in security] == [SEC + "not-encrypted"]
    world(scenario, tls=False)


def test_legacy_ssl_ends_at_the_multiplexor_and_starttls_inside_it_at_the_server(world, ca):
    legacy = CarrierTLS(Layer.LEGACY_SSL, TLSEnd.MULTIPLEXOR, "TLSv1.3", "TLS_AES_128_GCM_SHA256")

    def scenario(ctx):
        outer_only = Client(ctx, "juliet@example.com/mux", carrier_tls=legacy)
        assert layers(outer_only.ask()) == [{
            "layer": "legacy-ssl", "ends": "multiplexor", "version": "TLSv1.3",
            "cipher": "TLS_AES_128_GCM_SHA256", "bits": "0"}]
        both = Client(ctx, "romeo@example.com/mux", carrier_tls=legacy, ca=ca)
        assert [(t["layer"], t["ends"]) for t in layers(both.ask())] == [
            ("legacy-ssl", "multiplexor"), ("starttls", "server")]
        assert both.ask().find(SEC + "security").get("secure") == "true"
    world(scenario)


def test_an_old_tls_version_reported_by_a_carrier_is_not_called_secure(world):
    old = CarrierTLS(Layer.LEGACY_SSL, TLSEnd.MULTIPLEXOR, "TLSv1", "AES128-SHA")

    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/old", carrier_tls=old)
        assert juliet.ask().find(SEC + "security").get("secure") == "false"
    world(scenario, tls=False)


def test_a_transport_declared_secure_but_not_described_is_neither_vouched_for_nor_denied(
        world, ca):
    """A carrier that marks its sessions secure without saying how (a gateway
    that keeps no TLS facts): no layer invented, no "not encrypted" either."""
    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/web", declared_secure=True)
        security = juliet.ask().find(SEC + "security")
        assert security.get("secure") == "false"
        assert [child.tag for child in security] == [SEC + "undescribed"]
        romeo = Client(ctx, "romeo@example.com/web", declared_secure=True, ca=ca)
        security = romeo.ask().find(SEC + "security")
        assert security.get("secure") == "false"
        assert [c.tag for c in security] == [SEC + "undescribed", SEC + "tls"]
        assert security.find(SEC + "tls").get("layer") == "starttls"
    world(scenario)


def test_only_the_asking_session_is_described(world, ca):
    """Romeo has STARTTLS, Juliet has not: each hears about their own
    connection; asking at Romeo's address gets nothing of his."""
    def scenario(ctx):
        romeo = Client(ctx, "romeo@example.com/orchard", ca=ca)
        juliet = Client(ctx, "juliet@example.com/balcony")
        assert layers(romeo.ask(to=DOMAIN))[0]["layer"] == "starttls"
        mine = juliet.ask(to=DOMAIN)
        assert mine.get("from") == DOMAIN and layers(mine) == []
        assert error_condition(juliet.ask(to="romeo@example.com")) == "service-unavailable"
        assert error_condition(juliet.ask(to="juliet@example.com")) == "service-unavailable"
    world(scenario)


def test_a_set_or_a_query_with_content_is_bad_request(world, ca):
    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/balcony", ca=ca)
        assert error_condition(juliet.ask(type="set")) == "bad-request"
        assert error_condition(juliet.ask(
            b"<security xmlns='urn:xmpp:iim:security:0'><x/></security>")) == "bad-request"
    world(scenario)


def test_disco_lists_the_feature(world):
    def scenario(ctx):
        juliet = Client(ctx, "juliet@example.com/balcony")
        reply = juliet.ask(b"<query xmlns='http://jabber.org/protocol/disco#info'/>", to=DOMAIN)
        features = {f.get("var") for f in
                    reply.iter("{http://jabber.org/protocol/disco#info}feature")}
        assert "urn:xmpp:iim:security:0" in features
    world(scenario, tls=False)


def test_a_legacy_ssl_session_of_a_mux_link_is_described_from_its_open_frame(tmp_path, ca):
    """Over a real mux link (127.0.0.1): the OPEN frame says the multiplexor
    ended legacy SSL with TLSv1.3 and a cipher; the session's answer says the
    same, ending at the multiplexor, with no certificate (the mux's is not
    the server's to read)."""
    from iim.server.muxlink import start_mux_listener
    from iim.xmpp.events import StanzaReceived
    from test_muxlink_server import DOMAIN as MUX_DOMAIN, USERS, TestMux

    async def scenario():
        storage = Storage.open(tmp_path / "mux.db")
        for user, password in USERS.items():
            storage.add_user(user, password)
        log = logging.getLogger("test.security.mux")
        ctx = SessionContext(policy=ServerPolicy(MUX_DOMAIN), tls_context=None,
                             router=Router(MUX_DOMAIN, storage, log=log), storage=storage,
                             log=log)
        listener = await start_mux_listener(ctx, "127.0.0.1", 0)
        try:
            mux = await TestMux.connect(listener.sockets[0].getsockname()[1])
            await mux.handshake()
            carol = await mux.login("carol", ca, 40003, legacy_tls=True,
                                    tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
            iq = Element("{jabber:client}iq", {"type": "get", "id": "m1"})
            iq.append(Element(SEC + "security"))
            carol.stream.send_stanza(iq)
            carol.flush()
            reply = (await carol.next_event(StanzaReceived)).stanza
            await mux.close()
            return reply
        finally:
            listener.close()
            await listener.wait_closed()
            storage.close()

    reply = asyncio.run(asyncio.wait_for(scenario(), 30))
    security = reply.find(SEC + "security")
    assert security.get("secure") == "true"
    [tls] = security.findall(SEC + "tls")
    assert tls.attrib == {"layer": "legacy-ssl", "ends": "multiplexor", "version": "TLSv1.3",
                          "cipher": "TLS_AES_128_GCM_SHA256", "bits": "0"}
    assert tls.find(SEC + "certificate") is None
