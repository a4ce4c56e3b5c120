"""Interop: clients on other TLS stacks log in through the multiplexor (issue 10, part 6).

Two clients nobody here wrote (tests/extclients.py): go-sendxmpp (Go's
crypto/tls) and nbxmpp (GnuTLS through GLib). Each logs in (as alice to send,
as an account of its own per mode to receive) through a real ``python -m
iim.mux`` in front of a real ``python -m iim.server``, in both of the
multiplexor's modes:

* ``starttls``: ``iim_mux.usessl = "off"``; the client says STARTTLS, the
  multiplexor relays the bytes untouched and the server terminates TLS with
  its keytool-made keystore;
* ``legacy-ssl``: ``iim_mux.usessl = "on"``; the client speaks TLS from the
  first byte and the multiplexor terminates it with the certificate of an
  NSS database made by the real certutil/pk12util.

The other end is bob, a slixmpp client on the STARTTLS multiplexor (so only
the client under test crosses the mode being tested). A message of more than
40 KB (UTF-8, with markup characters, tabs and newlines) goes each way and is
compared byte for byte; the server's log says which way TLS was carried.
(Before the multiplexor delivered legacy-SSL writes over one TLS record
without waiting for the client, issue 10 part 3, go-sendxmpp, which sends
nothing while it listens, never got bob's message there and its test failed;
nbxmpp got it late, once its own whitespace keepalive, 5 s after its last
read, woke the session.)
Each client also trusts only another CA once: it must refuse the certificate
and never log in.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from extclients import CLIENTS, Account, Endpoint
from live import DOMAIN, Client, LiveMux, LiveServer, next_item
from nsstools import NSSDatabase
from test_mux_e2e import NSS_PASSWORD

MODES = ("starttls", "legacy-ssl")
ALICE = Account(f"alice@{DOMAIN}", "alice-pw-1")
BOB = Account(f"bob@{DOMAIN}", "bob-pw-2")
WAIT = 30                   # seconds any one step may take


def receiver(client, mode: str) -> Account:
    """The account that receives bob's message in one client's mode: its own, so
    that what an earlier test left to it cannot come first. (A client that ends
    its XEP-0198 stream without acknowledging what it got, as nbxmpp does, has it
    kept in offline storage, rightly: the server cannot know it arrived.)"""
    return Account(f"{client.name}-{mode}@{DOMAIN}", f"{client.name}-{mode}-pw-4")


RECEIVERS = [receiver(client, mode) for client in CLIENTS for mode in MODES]


class System:
    """A server, a STARTTLS multiplexor and a legacy-SSL one, and two CA files."""

    def __init__(self, folder: Path, ca) -> None:
        self.server = LiveServer(folder, ca, users=[(a.jid.split("@")[0], a.password)
                                                    for a in (ALICE, BOB, *RECEIVERS)])
        self.server.add_users()
        self._nss_database(folder, ca)
        self.server.start()
        self.muxes: dict[str, LiveMux] = {}
        try:
            self.muxes["starttls"] = LiveMux(folder, self.server, "mux-starttls")
            self.muxes["legacy-ssl"] = LiveMux(folder, self.server, "mux-legacy", usessl=True)
        except BaseException:
            self.stop()
            raise
        self.other_ca_file = folder / "other-ca.pem"
        self.other_ca_file.write_bytes(pki.CA.root("another CA").cert.public_bytes(
            serialization.Encoding.PEM))

    @staticmethod
    def _nss_database(folder: Path, ca) -> None:
        db = NSSDatabase.create(folder / "nssdb", NSS_PASSWORD)
        db.import_pkcs12(ca.issue(DOMAIN, "127.0.0.1"), "Multiplexor-Cert", roots=[ca.cert])
        db.add_cert(ca.cert, "iim test CA", "C,,")
        password_file = folder / "nsspassword.conf"
        password_file.write_text(f"Internal (Software) Token:{NSS_PASSWORD}\n")
        os.chmod(password_file, 0o600)

    def endpoint(self, mode: str, *, trusting_another_ca: bool = False) -> Endpoint:
        cafile = self.other_ca_file if trusting_another_ca else self.server.ca_file
        return Endpoint(self.muxes[mode].port, mode == "legacy-ssl", cafile)

    def stop(self) -> list[int]:
        return [mux.stop() for mux in self.muxes.values()] + [self.server.stop()]


@pytest.fixture(scope="module")
def system(tmp_path_factory, ca):
    system = System(tmp_path_factory.mktemp("clients"), ca)
    yield system
    assert system.stop() == [0, 0, 0]


@pytest.fixture(params=CLIENTS, ids=lambda client: client.name)
def client(request):
    missing = request.param.installed()
    assert missing is None, missing
    return request.param


def payload(seed: str, size: int = 48_000) -> bytes:
    """More than ``size`` bytes of UTF-8 text: markup characters, tabs, newlines,
    two- to four-byte characters; no whitespace at either end (go-sendxmpp drops
    the final newline of its message file)."""
    rng = random.Random(seed)
    pieces = ["plain words", "<b>not markup</b>", "&amp; &lt; ]]> <!-- -->", "'quoted' \"too\"",
              "tab\there", "é ü ß", "漢字かな", "😀🚀", "\n", "\n\n"]
    out, length = ["begin"], 0
    while length < size:
        out.append(rng.choice(pieces) + str(rng.randrange(10_000)))
        length += len(out[-1].encode("utf-8"))
    return ("".join(out) + "end").encode("utf-8")


def session_since(server: LiveServer, offset: int, account: Account):
    """(resource, how TLS was carried) of the first session ``account`` got after
    ``offset`` characters of the server's log, or None."""
    pattern = re.compile(rf"c2s mux:\S+: session {re.escape(account.jid)}/(\S+) \((.*)\)$",
                         re.MULTILINE)
    match = pattern.search(server.log(), offset)
    return (match[1], match[2]) if match else None


def assert_carried(transport: str, mode: str) -> None:
    if mode == "legacy-ssl":
        assert transport == "TLS at the multiplexor", transport
    else:
        assert re.fullmatch(r"TLSv1\.[23] \S+", transport), transport


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 2 * WAIT + 20))


async def wait_for_session(server: LiveServer, offset: int, account: Account, child):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (found := session_since(server, offset, account)) is None:
        if child.proc.returncode is not None or loop.time() > deadline:
            finished = await child.stop()
            raise AssertionError(f"{account.jid} never got a session: {finished.describe()}")
        await asyncio.sleep(0.05)
    return found


@pytest.mark.parametrize("mode", MODES)
def test_client_sends_a_large_message(system, client, mode, tmp_path):
    body = payload(f"send {client.name} {mode}")
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(body)
    offset = len(system.server.log())

    async def scenario():
        bob = await Client(f"{BOB.jid}/reader", BOB.password,
                           system.server.ca_file).online(system.muxes["starttls"].port)
        try:
            child = await client.send(ALICE, system.endpoint(mode), f"{BOB.jid}/reader",
                                      body_file, tmp_path)
            try:
                finished = await child.wait(WAIT)
            finally:
                await child.stop()
            assert client.sent(finished), finished.describe()
            try:
                return await next_item(bob.received, WAIT)
            except asyncio.TimeoutError:
                raise AssertionError(f"bob got nothing: {finished.describe()}") from None
        finally:
            await bob.offline()

    got = run(scenario())
    assert got["from"].bare == ALICE.jid
    assert got["body"].encode("utf-8") == body
    _resource, transport = session_since(system.server, offset, ALICE)
    assert_carried(transport, mode)


@pytest.mark.parametrize("mode", MODES)
def test_client_receives_a_large_message(system, client, mode, tmp_path):
    body = payload(f"receive {client.name} {mode}")
    to = receiver(client, mode)
    offset = len(system.server.log())

    async def scenario():
        bob = await Client(f"{BOB.jid}/writer", BOB.password,
                           system.server.ca_file).online(system.muxes["starttls"].port)
        try:
            child = await client.listen(to, system.endpoint(mode), BOB.jid, tmp_path)
        except BaseException:
            await bob.offline()
            raise
        try:
            resource, transport = await wait_for_session(system.server, offset, to, child)
            bob.send_message(mto=f"{to.jid}/{resource}", mbody=body.decode("utf-8"),
                             mtype="chat")

            def arrived(c):
                return client.received(c, BOB.jid, len(body), tmp_path) is not None
            complete = await child.until(arrived, WAIT)
            got = client.received(child, BOB.jid, len(body), tmp_path)
            finished = await child.stop()
            return complete, got, transport, finished
        finally:
            await child.stop()
            await bob.offline()

    complete, got, transport, finished = run(scenario())
    assert complete, (f"{client.name} did not get the whole {len(body)}-byte message in "
                      f"{WAIT} s: {finished.describe()}")
    assert got == body
    assert_carried(transport, mode)


@pytest.mark.parametrize("mode", MODES)
def test_client_trusting_another_ca_refuses_the_certificate(system, client, mode, tmp_path):
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(b"never sent")
    offset = len(system.server.log())

    async def scenario():
        endpoint = system.endpoint(mode, trusting_another_ca=True)
        child = await client.send(ALICE, endpoint, f"{BOB.jid}/nobody", body_file, tmp_path)
        try:
            return await child.wait(WAIT)
        finally:
            await child.stop()

    finished = run(scenario())
    assert client.certificate_refused(finished), finished.describe()
    assert session_since(system.server, offset, ALICE) is None
    assert "login alice" not in system.server.log()[offset:]
