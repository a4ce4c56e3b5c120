"""Session tickets at the multiplexor: shared by its workers, keys rotated hourly.

iim/mux/ticketkeys.py (the supervisor's ring, pure Python) and iim/_tickets.pyx
(the workers' copy, which OpenSSL calls) step one ratchet: seed(n+1) =
HMAC-SHA256(seed(n), "iim-mux ticket ratchet"). A ticket sealed in period n opens
in periods n, n+1 and n+2, never later; contexts built from the same ring agree
whatever period they were built in. Clients are Python's ssl (OpenSSL), TLS 1.3
and 1.2; the relay is the real one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import struct

import pytest

from iim.mux import tls as muxtls
from iim.mux.ticketkeys import PERIOD, RING, SERIALIZED_BYTES, TicketKeys, ratchet
from muxpeer import RelayHarness
from test_mux_tls import (client_context, mux_settings, nssdir, peer,  # noqa: F401
                          tls_client, tls_echo)

N = 498_888                            # a period in 2026
NOW = float(N * PERIOD)                # its first second


def test_the_ring_steps_one_ratchet_and_forgets_what_it_stepped_past():
    keys = TicketKeys(NOW)
    first = keys.serialize(NOW)
    assert len(first) == SERIALIZED_BYTES and struct.unpack(">q", first[:8])[0] == N
    seeds = [first[8 + 32 * i:40 + 32 * i] for i in range(RING)]
    assert keys.serialize(NOW + PERIOD - 1) == first                  # same period
    later = keys.serialize(NOW + PERIOD)
    assert struct.unpack(">q", later[:8])[0] == N + 1
    assert later[8:] == b"".join(seeds[1:]) + hmac.new(
        seeds[-1], b"iim-mux ticket ratchet", hashlib.sha256).digest()
    much_later = keys.serialize(NOW + 10 * PERIOD)
    newest = seeds[-1]
    for _ in range(10):
        newest = ratchet(newest)
    assert much_later[-32:] == newest and seeds[0] not in much_later
    assert keys.serialize(NOW) == much_later                          # never back


@pytest.fixture(scope="module")
def material(nssdir):  # noqa: F811
    return muxtls.load_material(mux_settings(nssdir))[0]


def relay_with(peer, material, serialized: bytes, period: int, thread: int = 0):
    ctx = muxtls.context_from_material(material, serialized, now=period * PERIOD)
    assert ctx.rotate_ticket_keys(period) == period
    return RelayHarness(peer, tls=ctx, thread=thread), ctx


def ticket_from(relay, ca, version):
    ctx = client_context(ca)
    ctx.maximum_version = version
    with tls_client(relay, ctx) as c:
        assert tls_echo(c, b"ticket please") == b"ticket please"
        return ctx, c.session


def resumes(relay, ctx, session) -> bool:
    with tls_client(relay, ctx, session=session) as c:
        assert tls_echo(c, b"hello") == b"hello"
        return c.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("later, reused", [(0, True), (1, True), (2, True), (3, False)])
def test_a_ticket_opens_for_two_rotations_after_its_own_period_and_not_three(
        peer, material, ca, version, later, reused):
    serialized = TicketKeys(NOW).serialize(NOW)
    relay, ctx = relay_with(peer, material, serialized, N)
    try:
        client, session = ticket_from(relay, ca, version)
        ctx.rotate_ticket_keys(N + later)
        assert resumes(relay, client, session) is reused
    finally:
        relay.stop()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_every_resumption_brings_a_fresh_ticket_that_resumes_in_turn(peer, material, ca,
                                                                    version):
    """RFC 8446 C.4: a client uses each ticket once, so a resumed session must get a
    new one (the session id OpenSSL gives a ticket is its hash: it changes)."""
    relay, _ = relay_with(peer, material, TicketKeys(NOW).serialize(NOW), N)
    try:
        client, session = ticket_from(relay, ca, version)
        for _ in range(3):
            with tls_client(relay, client, session=session) as c:
                assert c.session_reused
                assert tls_echo(c, b"next ticket") == b"next ticket"
                assert c.session.id != session.id
                session = c.session
    finally:
        relay.stop()


def test_workers_started_in_different_periods_agree(peer, material, ca):
    """Worker A started in period N and stepped to N+1 itself; worker B started in
    N+1 from the supervisor's ring: each opens the other's tickets."""
    supervisor = TicketKeys(NOW)
    a, a_ctx = relay_with(peer, material, supervisor.serialize(NOW), N)
    a_ctx.rotate_ticket_keys(N + 1)
    b, _ = relay_with(peer, material, supervisor.serialize(NOW + PERIOD), N + 1, thread=1)
    try:
        client, from_a = ticket_from(a, ca, ssl.TLSVersion.TLSv1_3)
        assert resumes(b, client, from_a)
        client, from_b = ticket_from(b, ca, ssl.TLSVersion.TLSv1_3)
        assert resumes(a, client, from_b)
    finally:
        a.stop()
        b.stop()


def test_another_multiplexors_tickets_do_not_open(peer, material, ca):
    a, _ = relay_with(peer, material, TicketKeys(NOW).serialize(NOW), N)
    b, _ = relay_with(peer, material, TicketKeys(NOW).serialize(NOW), N, thread=1)
    try:
        client, from_a = ticket_from(a, ca, ssl.TLSVersion.TLSv1_3)
        assert not resumes(b, client, from_a)
    finally:
        a.stop()
        b.stop()


def test_a_context_without_shared_keys_has_random_ones_and_rotates_too(peer, material, ca):
    relay, ctx = relay_with(peer, material, None, N)
    try:
        client, session = ticket_from(relay, ca, ssl.TLSVersion.TLSv1_3)
        assert resumes(relay, client, session)
        ctx.rotate_ticket_keys(N + 3)
        assert not resumes(relay, client, session)
    finally:
        relay.stop()


def test_bad_ring_bytes_are_one_clear_error(material):
    with pytest.raises(Exception, match="104 bytes .* not 80"):
        muxtls.context_from_material(material, os.urandom(80))
