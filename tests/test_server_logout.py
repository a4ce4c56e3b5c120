"""A client that sends </stream:stream> and drops the connection at once is
still logged out: its presence goes unavailable, its session is forgotten."""

import asyncio

import pytest

from iim.xmpp.client_stream import TLSMode
from live import DOMAIN, LiveServer
from rawclient import RawClient
from support import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    live = LiveServer(tmp_path_factory.mktemp("logout"), ca, tls=False,
                      extra='iim_server.max_resources = "200"\n'    # 100 of alice's at once,
                      'iim_server.accept_rate_per_source = "1000"\n')   # from one address
    live.add_users()
    live.start()
    yield live
    assert live.stop() == 0


def test_close_right_after_the_closing_tag_still_logs_out(server):
    count = 100

    async def scenario():
        clients = [await RawClient(f"alice@{DOMAIN}/quick{n}", "alice-pw-1", server.ca_file,
                                   tls=TLSMode.OPTIONAL).connect(server.port)
                   for n in range(count)]
        for client in clients:                 # closing tag, then close at once (RFC 6120
            client.stream.close()              # §4.4 asks clients to wait; many do not)
            client._flush()
            client._reading.cancel()
            client.writer.close()
        await asyncio.gather(*(client.writer.wait_closed() for client in clients),
                             return_exceptions=True)       # gone from this end

    def missing() -> list[int]:
        log = server.log()
        return [n for n in range(count) if f"logout alice@localhost/quick{n}\n" not in log]

    asyncio.run(asyncio.wait_for(scenario(), 60))
    # Each logout is waited for (on a busy machine the server may take a while
    # to log a hundred); the deadline only bounds a failure.
    try:
        wait_until(lambda: not missing(), "every quick session logged out")
    except AssertionError:
        assert missing() == []
