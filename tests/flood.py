"""A flooding client in its own process (so its work does not slow the test's
own event loop): ``python tests/flood.py PORT CA JID PASSWORD TO COUNT SIZE``.
Sends COUNT chat messages of SIZE bytes to TO, waits for the server to answer
a ping (so every message was routed), counts the error bounces it got back
within a few seconds, and prints that count."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from live import Client  # noqa: E402


async def main(port, ca, jid, password, to, count, size):
    client = await Client(jid, password, Path(ca)).online(int(port))
    for n in range(int(count)):
        client.send_message(mto=to, mtype="chat", mbody=f"{n:04d} " + "y" * int(size))
    await client.plugin["xep_0199"].ping(jid=jid.split("@")[1].split("/")[0], timeout=120)
    bounced, quiet = 0, 0
    while quiet < 3:
        try:
            message = await asyncio.wait_for(client.received.get(), 1.0)
            bounced += message["type"] == "error"
            quiet = 0
        except asyncio.TimeoutError:
            quiet += 1
    await client.offline()
    print(bounced)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
