"""An independent WebSocket client: xmpp.js (@xmpp/client) under Node, against the gateway.

xmpp.js is installed, pinned, by ``./dev setup`` into .venv/node (see
``node_setup`` in ./dev); Node 20 gives it a WebSocket with
``--experimental-websocket``. It logs in over wss:// (RFC 7395, SASL SCRAM
or PLAIN as it chooses, resource binding) and talks with a slixmpp user who
is connected through the multiplexor (``python -m iim.mux``) with STARTTLS
end to end: the two carriers meet in the server's router.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from live import Client, LiveMux, next_item
from webgw import WebServer, run

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / ".venv" / "node" / "node_modules"
SCRIPT = Path(__file__).parent / "data" / "xmppjs_client.mjs"
NODE = shutil.which("node") or "/usr/bin/node"


def _installed() -> None:
    if not (MODULES / "@xmpp" / "client").is_dir():
        pytest.fail("xmpp.js is not installed: run ./dev setup (it installs @xmpp/client "
                    "into .venv/node)")


async def _lines(proc: asyncio.subprocess.Process):
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            return
        yield json.loads(line)


def test_xmppjs_over_websocket_and_slixmpp_through_the_mux_exchange_messages(tmp_path, ca):
    _installed()

    async def scenario():
        async with WebServer(tmp_path, ca, mux=True) as server:
            # LiveMux waits for its links, which this loop's server must answer
            mux = await asyncio.to_thread(LiveMux, tmp_path, server, "mux")
            proc = None
            try:
                romeo = Client("romeo@example.com/mux", "secret", server.ca_file)
                await romeo.online(mux.port)
                env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.ca_file),
                       "XMPPJS_MODULES": str(MODULES)}
                proc = await asyncio.create_subprocess_exec(
                    NODE, "--experimental-websocket", "--no-warnings", str(SCRIPT),
                    f"wss://127.0.0.1:{server.http_port}/ws", "example.com", "juliet",
                    "secret", "romeo@example.com", "ay me", env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                reports = _lines(proc)
                online = await reports.__anext__()
                assert online == {"event": "online", "jid": "juliet@example.com/xmppjs"}, online
                romeo.send_message(mto="juliet@example.com", mbody="she speaks", mtype="chat")
                got = await reports.__anext__()
                assert got == {"event": "message", "from": "romeo@example.com/mux",
                               "body": "she speaks"}, got
                assert await reports.__anext__() == {"event": "sent"}
                answer = await next_item(romeo.received)
                assert answer["body"] == "ay me"
                assert str(answer["from"]) == "juliet@example.com/xmppjs"
                assert await asyncio.wait_for(proc.wait(), 20) == 0
                await romeo.offline()
            finally:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await asyncio.to_thread(mux.stop)
    run(scenario)
