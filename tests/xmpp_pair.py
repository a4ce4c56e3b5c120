"""A client stream and a server stream wired back to back, in memory.

This is the tests' adapter: it moves bytes between the two sans-I/O cores
and, when both sides have said StartTLS, runs real TLS between them over
memory BIOs (iim.tlsbio.TLSLayer). No sockets, no event loop.
"""

from __future__ import annotations

from iim.keys.context import client_context, server_context
from iim.keys.material import KeyMaterial
from iim.tlsbio import TLSLayer
from iim.xmpp import sasl
from iim.xmpp.events import StartTLS
from iim.xmpp.server_stream import ServerPolicy, ServerStream

DOMAIN = "example.com"
USERS = {"juliet": "r0m30myr0m30", "romeo": "j-u-l-i-e-t"}


def lookup(username):
    password = USERS.get(username)
    if password is None:
        return None
    return {m: sasl.derive_credentials(password, m)
            for m in (sasl.Mechanism.SCRAM_SHA_256, sasl.Mechanism.SCRAM_SHA_1)}


def authenticator(tls: bool) -> sasl.ServerAuth:
    return sasl.ServerAuth(lookup, DOMAIN, tls=tls, secret=b"s" * 32)


def server(policy: ServerPolicy | None = None, **kw) -> ServerStream:
    return ServerStream(policy or ServerPolicy(DOMAIN, **kw), authenticator)


class Pair:
    """Pump bytes between ``client`` and ``server`` until both are quiet."""

    def __init__(self, client, server, ca=None, leaf=None):
        self.client, self.server = client, server
        self.client_events, self.server_events = [], []
        self._ca, self._leaf = ca, leaf
        self._client_tls = self._server_tls = None
        self.client_starttls = self.server_starttls = False

    def run(self, rounds: int = 50):
        for _ in range(rounds):
            if not self._step():
                return self
        raise AssertionError("the streams never went quiet")

    def _step(self) -> bool:
        moved = False
        out = self.client.data_to_send()
        if out:
            moved = True
            self._to_server(self._client_wire(out))
        out = self.server.data_to_send()
        if out:
            moved = True
            self._to_client(self._server_wire(out))
        return moved

    # plaintext until each side has said StartTLS, TLS after
    def _client_wire(self, data):
        return self._client_tls.send(data) if self._client_tls else data

    def _server_wire(self, data):
        return self._server_tls.send(data) if self._server_tls else data

    def _to_server(self, wire):
        if self.server_starttls and self._server_tls is None:
            self._start_tls()
        if self._server_tls is not None:
            plain, back = self._server_tls.receive(wire)
            if back:
                self._to_client(back)
            if self._server_tls.handshake_done and self.server.phase.name == "TLS_PENDING":
                self.server.tls_established()
            if not plain:
                return
            wire = plain
        self._collect(self.server.receive_data(wire), self.server_events, "server")

    def _to_client(self, wire):
        if self._client_tls is not None:
            plain, back = self._client_tls.receive(wire)
            if back:
                self._to_server(back)
            if self._client_tls.handshake_done and self.client.phase.name == "TLS_PENDING":
                self.client.tls_established()
            if not plain:
                return
            wire = plain
        self._collect(self.client.receive_data(wire), self.client_events, "client")

    def _collect(self, events, into, side):
        into.extend(events)
        for event in events:
            if isinstance(event, StartTLS):
                setattr(self, f"{side}_starttls", True)
        if side == "client" and self.client_starttls and self._client_tls is None:
            self._client_tls = TLSLayer(client_context(None, anchors=[self._ca.cert]),
                                        server_side=False, server_hostname=DOMAIN)
            self._to_server(self._client_tls.start())

    def _start_tls(self):
        material = KeyMaterial(self._leaf.key, self._leaf.chain, (self._ca.cert,))
        self._server_tls = TLSLayer(server_context(material), server_side=True)
