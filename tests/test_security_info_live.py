"""The security query (``urn:xmpp:iim:security:0``) against the real daemons of
``./dev run``'s configuration, asked by slixmpp: over a direct STARTTLS
connection to ``iim_server.port``, and through the multiplexor, where STARTTLS
still ends at the server (the relay passes it untouched). The in-memory
transcripts of every case are in tests/test_security_info.py.
"""

from __future__ import annotations

import asyncio
from xml.etree.ElementTree import Element

import pytest
from cryptography import x509

from devsystem import DevSystem
from live import Client
from support.process import DEADLINE

SEC = "{urn:xmpp:iim:security:0}"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    system = DevSystem(tmp_path_factory.mktemp("security") / "dev")
    system.start_server()
    system.start_mux()
    yield system
    system.stop_all()


async def ask(system: DevSystem, port: int) -> tuple[Element, dict]:
    """Bob's answer to the query on ``port``, and what his own end of TLS saw."""
    bob = await Client("bob@localhost", system.users["bob"],
                       system.folder / "ca.pem").online(port)
    try:
        iq = bob.Iq(stype="get")
        iq.append(Element(SEC + "security"))
        reply = await iq.send(timeout=DEADLINE)
        tls = bob.socket
        seen = {"version": tls.version(), "cipher": tls.cipher(),
                "certificate": x509.load_der_x509_certificate(tls.getpeercert(True))}
        return reply.xml, seen
    finally:
        await bob.offline()


@pytest.mark.parametrize("where", ["server port", "multiplexor"])
def test_starttls_is_described_as_this_sessions_and_ending_at_the_server(system, where):
    port = system.server_port if where == "server port" else system.mux_port
    reply, seen = asyncio.run(asyncio.wait_for(ask(system, port), 60))
    security = reply.find(SEC + "security")
    assert security is not None and security.get("secure") == "true"
    [tls] = security.findall(SEC + "tls")
    cipher, _, bits = seen["cipher"]
    assert tls.attrib == {"layer": "starttls", "ends": "server", "version": seen["version"],
                          "cipher": cipher, "bits": str(bits)}
    served = seen["certificate"]
    ca = x509.load_pem_x509_certificate((system.folder / "ca.pem").read_bytes())
    cert = tls.find(SEC + "certificate")
    assert cert.get("subject") == served.subject.rfc4514_string()
    assert cert.get("issuer") == ca.subject.rfc4514_string() == served.issuer.rfc4514_string()
    assert cert.get("not-after") == served.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
