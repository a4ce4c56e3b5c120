"""iim_server.requiressl = true: STARTTLS or nothing (docs/architecture.md, "TLS policy")."""

import asyncio
import socket

import pytest

from live import DOMAIN, Client, LiveServer

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
AUTH = (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
        b"AGFsaWNlAGFsaWNlLXB3LTE=</auth>")          # alice / alice-pw-1, in the clear


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("requiressl"), ca, requiressl=True)
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


def talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_auth_before_starttls_is_a_policy_violation_and_the_connection_closes(server):
    answer = talk(server.port, HEADER + AUTH)
    features = answer.split(b"<stream:features>")[1].split(b"</stream:features>")[0]
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in features
    assert b"mechanisms" not in features
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    assert answer.endswith(b"</stream:stream>")          # recv() saw EOF: closed
    assert b"<success" not in answer
    assert "login alice" not in server.log()


def test_a_message_before_starttls_is_not_delivered(server):
    answer = talk(server.port, HEADER + b"<message to='bob@localhost'><body>x</body></message>")
    assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer


def test_slixmpp_still_logs_in_over_starttls(server):
    async def scenario():
        client = await Client(f"alice@{DOMAIN}", "alice-pw-1", server.ca_file).online(server.port)
        await client.offline()
        return True

    assert asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "login alice (SCRAM-SHA-256)" in server.log()
