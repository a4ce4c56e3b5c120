"""Offline store abuse (issue 11, item 4): what one user's flood costs everyone.

    python bench/offline_abuse.py [--messages 1000] [--size 245000] [--tree DIR]

A real server (tests/live.py, TLS) with alice, bob, carol and dave. alice
sends ``--messages`` chat messages of ``--size`` bytes to bob, who is
offline (the issue's 239 MiB); then carol sends dave a message every 10 ms
and the latency of each (send to arrival, one process, one clock) is taken:
2 s before bob logs in (baseline), and from bob's initial presence until he
has received everything stored for him (during). Printed: what the flood
stored and bounced, how long bob's delivery took, and carol-to-dave latency
p50 / p99 / max in both phases.

``--tree DIR`` runs the server from another checkout (for before/after:
``git archive <commit> | tar -x -C DIR``); the clients stay this tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from xml.etree.ElementTree import fromstring

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pki                                  # noqa: E402
from live import DOMAIN, LiveServer         # noqa: E402
from rawclient import RawClient             # noqa: E402

C = "{jabber:client}"
USERS = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"),
         ("dave", "dave-pw-4"))


class Timed(RawClient):
    """Notes the arrival time of each message by id."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrived: dict[str, float] = {}
        self.messages = 0

    def _handle(self, event):
        stanza = getattr(event, "stanza", None)
        if stanza is not None and stanza.tag == C + "message" and stanza.get("type") != "error":
            self.arrived[stanza.get("id")] = time.monotonic()
            self.messages += 1
        super()._handle(event)


def stanza(xml: str):
    """A jabber:client element from XML written as on the wire (tag, then a space)."""
    if xml == "<presence/>":
        xml = "<presence />"
    return fromstring(xml.replace(" ", " xmlns='jabber:client' ", 1))


async def login(live, user: str) -> Timed:
    client = await Timed(f"{user}@{DOMAIN}", live.users[user], live.ca_file).connect(live.port)
    client.send(stanza("<presence/>"))
    return client


async def settled(client: Timed, tag: str) -> None:
    client.send(stanza(f"<iq type='get' id='{tag}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"))
    while not any(s.get("id") == tag for s in client.stanzas):
        await asyncio.sleep(0.01)


async def chat(carol: Timed, dave: Timed, sent: dict, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        mid = f"c{n}"
        sent[mid] = time.monotonic()
        carol.send(stanza(f"<message to='dave@{DOMAIN}' type='chat' id='{mid}'>"
                          f"<body>meanwhile {n}</body></message>"))
        n += 1
        await asyncio.sleep(0.01)


def latencies(sent: dict, dave: Timed, start: float, end: float) -> list[float]:
    return [dave.arrived.get(mid, float("inf")) - t for mid, t in sent.items() if start <= t < end]


def describe(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"n={len(values)} p50={statistics.median(ordered) * 1000:.1f} ms "
            f"p99={p99 * 1000:.1f} ms max={ordered[-1] * 1000:.1f} ms")


async def scenario(live, args) -> None:
    alice = await login(live, "alice")
    body = "x" * args.size
    started = time.monotonic()
    for n in range(args.messages):
        alice.send(stanza(f"<message to='bob@{DOMAIN}' type='chat' id='a{n}'>"
                          f"<body>{n} {body}</body></message>"))
        if n % 20 == 19:
            await asyncio.sleep(0)
    await settled(alice, "flood-done")
    flood = time.monotonic() - started
    bounced = sum(1 for s in alice.stanzas if s.get("type") == "error")
    stored = args.messages - bounced
    print(f"flood: {args.messages} x {args.size} B in {flood:.1f} s: "
          f"{stored} stored ({stored * args.size / 2**20:.1f} MiB), {bounced} bounced")

    carol, dave = await login(live, "carol"), await login(live, "dave")
    sent: dict[str, float] = {}
    stop = asyncio.Event()
    chatting = asyncio.ensure_future(chat(carol, dave, sent, stop))
    await asyncio.sleep(2)
    login_at = time.monotonic()
    bob = await login(live, "bob")
    while bob.messages < stored:
        await asyncio.sleep(0.005)
    done_at = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await chatting
    await asyncio.sleep(1)
    print(f"bob: login to last stored message {done_at - login_at:.2f} s")
    print(f"carol->dave before bob's login: {describe(latencies(sent, dave, 0, login_at))}")
    print(f"carol->dave during bob's login: {describe(latencies(sent, dave, login_at, done_at))}")
    for client in (alice, bob, carol, dave):
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=245_000)
    parser.add_argument("--tree", help="run the server from this checkout")
    args = parser.parse_args()
    if args.tree:
        os.environ["PYTHONPATH"] = str(Path(args.tree).resolve())
    with tempfile.TemporaryDirectory() as folder:
        live = LiveServer(Path(folder), pki.CA.root(), users=USERS,
                          extra=f'iim_server.maxstanzasize = "{args.size + 10000}"\n')
        live.add_users()
        live.start()
        try:
            asyncio.run(asyncio.wait_for(scenario(live, args), 600))
        finally:
            live.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
