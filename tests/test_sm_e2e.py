"""XEP-0198 end to end: slixmpp's own stream-management plugin (xep_0198)
resumes its session through the multiplexor after its TCP connection is cut,
and no message is lost either way.

alice logs in through one multiplexor process and enables stream management
with resumption. bob writes to her; her connection is reset (RST, as when a
phone changes networks) just after she writes to him; bob goes on writing.
She reconnects through *another* multiplexor process (the session lives in
the server; the multiplexors only relay bytes) and resumes: she gets every
message of bob's exactly once, he gets hers exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from live import DOMAIN, Client, LiveMux, LiveServer, next_item
from support import eventually


@pytest.fixture(scope="module")
def system(tmp_path_factory, ca):
    folder = tmp_path_factory.mktemp("sm")
    server = LiveServer(folder, ca, extra='iim_server.sm_resume_timeout = "120"\n')
    server.add_users()
    server.start()
    muxes = [LiveMux(folder, server, "mux-a"), LiveMux(folder, server, "mux-b")]
    yield server, muxes
    for mux in muxes:
        assert mux.stop() == 0
    assert server.stop() == 0


class ManagedClient(Client):
    """live.Client with slixmpp's XEP-0198 plugin, and events for its steps."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.register_plugin("xep_0198")
        self.sm_enabled = asyncio.Event()
        self.resumed = asyncio.Event()
        self.cut = asyncio.Event()
        self.add_event_handler("sm_enabled", lambda _: self.sm_enabled.set())
        self.add_event_handler("session_resumed", lambda _: self.resumed.set())
        self.add_event_handler("disconnected", lambda _: self.cut.set())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def bodies(queue: asyncio.Queue, count: int) -> list[str]:
    return [(await next_item(queue, 30))["body"] for _ in range(count)]


def test_slixmpp_resumes_through_another_mux_after_a_reset_and_nothing_is_lost(system):
    server, (mux_a, mux_b) = system

    async def scenario():
        alice = ManagedClient(f"alice@{DOMAIN}/phone", "alice-pw-1", server.ca_file)
        await alice.online(mux_a.port)
        await asyncio.wait_for(alice.sm_enabled.wait(), 20)
        bob = await Client(f"bob@{DOMAIN}/desk", "bob-pw-2", server.ca_file).online(mux_a.port)

        for n in range(5):
            bob.send_message(mto=f"alice@{DOMAIN}", mbody=f"bob {n}", mtype="chat")
        first = await bodies(alice.received, 5)

        alice.send_message(mto=f"bob@{DOMAIN}/desk", mbody="alice before the cut", mtype="chat")
        alice.transport.abort()                     # RST: no </stream>, no last <a/>
        await asyncio.wait_for(alice.cut.wait(), 10)

        await eventually(lambda: "kept 120s for resumption" in server.log(),
                         "the server detaches alice's session")
        for n in range(5, 10):                      # while she is away: queued for her
            bob.send_message(mto=f"alice@{DOMAIN}", mbody=f"bob {n}", mtype="chat")
        await bob.plugin["xep_0199"].ping(DOMAIN)          # answered after the five were routed

        alice.connect("127.0.0.1", mux_b.port)      # another multiplexor process
        await asyncio.wait_for(alice.resumed.wait(), 20)
        second = await bodies(alice.received, 5)
        from_alice = await bodies(bob.received, 1)
        alice.send_message(mto=f"bob@{DOMAIN}/desk", mbody="alice after", mtype="chat")
        from_alice += await bodies(bob.received, 1)
        await asyncio.sleep(0)
        extra = alice.received.qsize() + bob.received.qsize()
        await alice.offline()
        await bob.offline()
        return first, second, from_alice, extra

    first, second, from_alice, extra = run(scenario())
    assert first + second == [f"bob {n}" for n in range(10)]        # none lost, in order
    assert from_alice == ["alice before the cut", "alice after"]     # hers, exactly once
    assert extra == 0                                                # and nothing twice
    log = server.log()
    assert "for resumption" in log and " resumed (" in log
    assert "c2s mux:" in log

