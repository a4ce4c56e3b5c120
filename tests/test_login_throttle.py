"""Login throttling (issue 11, item 7).

The counting in memory with time passed in (iim/server/logins.py); the SASL
core refusing a throttled login with <temporary-auth-failure/> (RFC 6120
§6.5.11) before it looks anything up; then a real server: a failed login is
answered after iim_server.auth_failure_delay while another client's valid
login is answered at once, and a guessed account is refused from the
guessing address only.
"""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

from iim.conf.limits import ServerLimits
from iim.server.logins import ACCOUNT_CEILING, MAX_ENTRIES, LoginThrottle
from iim.xmpp import sasl
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.events import AuthenticationFailed, SessionEstablished, StreamEnded
from iim.xmpp.jid import JID
from iim.xmpp.sasl import Failure, SASLFailure
from iim.xmpp.server_stream import ServerStream, ServerPolicy
from live import LiveServer
from xmpp_pair import DOMAIN, lookup

LIMITS = ServerLimits(auth_failures_per_account=3, auth_failures_per_source=5,
                      auth_failure_window=60)
PER_ACCOUNT = "iim_server.auth_failures_per_account"
PER_SOURCE = "iim_server.auth_failures_per_source"


# --- counting ---------------------------------------------------------------------

def test_an_account_guessed_from_one_source_is_refused_there_only():
    throttle = LoginThrottle(LIMITS)
    for _ in range(3):
        assert throttle.refusal("alice", "198.51.100.9", 10.0) is None
        throttle.failed("alice", "198.51.100.9", 10.0)
    assert throttle.refusal("alice", "198.51.100.9", 11.0) == PER_ACCOUNT
    assert throttle.refusal("alice", "192.0.2.7", 11.0) is None     # alice's own device
    assert throttle.refusal("bob", "198.51.100.9", 11.0) is None


def test_a_source_failing_on_many_accounts_is_refused_for_all():
    throttle = LoginThrottle(LIMITS)
    for n in range(5):
        throttle.failed(f"user{n}", "198.51.100.9", 10.0)
    assert throttle.refusal("carol", "198.51.100.9", 10.0) == PER_SOURCE
    assert throttle.refusal("carol", "192.0.2.7", 10.0) is None


def test_the_window_moves_on():
    throttle = LoginThrottle(LIMITS)
    for _ in range(3):
        throttle.failed("alice", "198.51.100.9", 10.0)
    assert throttle.refusal("alice", "198.51.100.9", 69.9) == PER_ACCOUNT
    assert throttle.refusal("alice", "198.51.100.9", 70.0) is None


def test_a_guess_spread_over_sources_meets_the_account_ceiling_but_not_the_owner():
    throttle = LoginThrottle(LIMITS)
    throttle.succeeded("alice", "192.0.2.7")                # where alice logs in from
    for n in range(ACCOUNT_CEILING * 3):                     # 3 per source, 10 sources
        throttle.failed("alice", f"198.51.100.{n // 3}", 10.0)
    assert throttle.refusal("alice", "203.0.113.1", 11.0) == PER_ACCOUNT
    assert throttle.refusal("alice", "192.0.2.7", 11.0) is None


def test_expired_windows_are_dropped_and_tables_stay_bounded():
    throttle = LoginThrottle(LIMITS)
    for n in range(1000):
        throttle.failed(f"user{n}", f"10.0.{n // 256}.{n % 256}", 10.0)
    assert len(throttle) == 3000
    throttle.failed("late", "10.9.9.9", 100.0)              # the window of the others is over
    assert len(throttle) == 3
    assert MAX_ENTRIES <= 100_000


# --- the SASL core ----------------------------------------------------------------------

class CountingLookup:
    def __init__(self):
        self.asked = []

    def __call__(self, username):
        self.asked.append(username)
        return lookup(username)


@pytest.mark.parametrize("mechanism,first", [
    ("PLAIN", b"\0juliet\0r0m30myr0m30"),
    ("SCRAM-SHA-256", b"n,,n=juliet,r=abcdefgh"),
])
def test_a_refused_login_is_temporary_auth_failure_without_a_lookup(mechanism, first):
    looked_up = CountingLookup()
    auth = sasl.ServerAuth(looked_up, DOMAIN, tls=True, admit=lambda user: user != "juliet")
    step = auth.start(mechanism, first)
    assert step == Failure(SASLFailure.TEMPORARY_AUTH_FAILURE,
                           "too many failed logins: try again later")
    assert step.username == "juliet" and looked_up.asked == []


def test_a_wrong_password_names_its_account():
    auth = sasl.ServerAuth(lookup, DOMAIN, tls=True)
    step = auth.start("PLAIN", b"\0juliet\0wrong")
    assert step == Failure(SASLFailure.NOT_AUTHORIZED) and step.username == "juliet"


HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>")


def plain(user: str, password: str) -> bytes:
    payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return (f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            f"{payload}</auth>").encode()


def test_the_stream_reports_a_credential_failure_for_the_adapter_to_delay():
    def authenticator(tls):
        return sasl.ServerAuth(lookup, DOMAIN, tls=True, admit=lambda user: user != "romeo")
    srv = ServerStream(ServerPolicy(DOMAIN), authenticator, secure_transport=True)
    srv.receive_data(HEADER)
    srv.data_to_send()
    assert srv.receive_data(plain("juliet", "wrong")) == \
        [AuthenticationFailed("juliet", "not-authorized")]
    assert srv.data_to_send() == b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" \
                                 b"<not-authorized /></failure>".replace(b" /", b"/")
    assert srv.receive_data(plain("romeo", "anything")) == \
        [AuthenticationFailed("romeo", "temporary-auth-failure")]
    assert b"<temporary-auth-failure/>" in srv.data_to_send()


# --- a real server ------------------------------------------------------------------------

async def login(port: int, user: str, password: str, *, source: str = "127.0.0.1",
                timeout: float = 30) -> str:
    """Log in with the project's client core (SCRAM-SHA-256, no TLS) from
    ``source``: "bound", or the SASL failure condition the server answered."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    stream = ClientStream(JID.parse(f"{user}@localhost/t"), password, tls=TLSMode.NEVER)
    stream.start()
    try:
        return await asyncio.wait_for(_converse(stream, reader, writer), timeout)
    finally:
        writer.close()


async def _converse(stream, reader, writer) -> str:
    while True:
        writer.write(stream.data_to_send())
        data = await reader.read(65536)
        if not data:
            return "connection closed"
        for event in stream.receive_data(data):
            if isinstance(event, SessionEstablished):
                return "bound"
            if isinstance(event, StreamEnded):
                return str(event.error.text).removeprefix("SASL failure: ")


@pytest.fixture(scope="module")
def live(ca, tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("throttle"), ca, extra="\n".join([
        'iim_server.auth_failure_delay = "6"',      # bob logs in well within it
        'iim_server.auth_failures_per_account = "3"',
        'iim_server.auth_failures_per_source = "50"',
        'iim_server.max_auth_attempts = "1"', ""]))
    server.add_users()
    server.start()
    yield server
    server.stop()


def test_a_failed_login_waits_and_a_valid_one_does_not(live):
    """While alice's wrong password waits out auth_failure_delay (6 s), bob logs
    in and gets bound: the delay holds one stream, not the server."""
    async def run():
        wrong = asyncio.ensure_future(login(live.port, "alice", "wrong", source="127.0.0.5"))
        bob = await login(live.port, "bob", live.users["bob"], source="127.0.0.6")
        return bob, wrong.done(), await wrong
    bob, wrong_answered_before_bob, wrong = asyncio.run(run())
    assert bob == "bound"
    assert not wrong_answered_before_bob
    assert wrong == "not-authorized"


def test_a_guessed_account_is_refused_from_the_guessing_address_only(live):
    async def run():
        guesses = await asyncio.gather(*(login(live.port, "alice", f"guess-{n}",
                                               source="127.0.0.9") for n in range(3)))
        right_password_there = await login(live.port, "alice", live.users["alice"],
                                           source="127.0.0.9")
        right_password_elsewhere = await login(live.port, "alice", live.users["alice"],
                                               source="127.0.0.10")
        return guesses, right_password_there, right_password_elsewhere
    guesses, there, elsewhere = asyncio.run(run())
    assert guesses == ["not-authorized"] * 3
    assert there == "temporary-auth-failure"
    assert elsewhere == "bound"
    assert "limit iim_server.auth_failures_per_account: refused 1 so far" in live.log()
