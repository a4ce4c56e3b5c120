"""A message the server accepted survives a restart (XEP-0160 offline storage)."""

import asyncio

from live import DOMAIN, Client, LiveServer, next_item


def test_offline_message_is_delivered_after_a_server_restart(tmp_path, ca):
    live = LiveServer(tmp_path / "srv", ca)
    live.add_users()
    live.start()

    async def alice_writes():
        alice = await Client(f"alice@{DOMAIN}", "alice-pw-1", live.ca_file).online(live.port)
        for n in range(3):
            alice.send_message(mto=f"bob@{DOMAIN}", mbody=f"while you were out {n}",
                               mtype="chat")
        await alice.plugin["xep_0199"].ping(jid=DOMAIN, timeout=10)   # the server has them
        await alice.offline()

    asyncio.run(asyncio.wait_for(alice_writes(), 60))
    assert live.stop() == 0
    live.start()

    async def bob_reads():
        bob = await Client(f"bob@{DOMAIN}", "bob-pw-2", live.ca_file).online(live.port)
        got = [await next_item(bob.received) for _ in range(3)]
        await bob.offline()
        return got

    try:
        got = asyncio.run(asyncio.wait_for(bob_reads(), 60))
    finally:
        assert live.stop() == 0
    assert [m["body"] for m in got] == [f"while you were out {n}" for n in range(3)]
    assert all(m["delay"]["stamp"] is not None for m in got)       # XEP-0203 stamp
    assert all(str(m["from"].bare) == f"alice@{DOMAIN}" for m in got)
