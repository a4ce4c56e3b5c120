"""The multiplexor under stress, with the real server: real processes, real sockets.

``python -m iim.server`` (tests/live.LiveServer) and ``python -m iim.mux`` run
as child processes on 127.0.0.1; clients are raw TCP sockets that send an
XMPP stream header and read the server's answer through the multiplexor, and
slixmpp clients where a full login matters.

1. iim_mux.maxsessions + 1: the extra client is closed at once, the others
   are untouched, and the refusal is counted in the final statistics;
2. the server is killed (SIGKILL) under 500 sessions and restarted: the mux
   survives, closes its clients, refuses new ones quickly meanwhile, and
   reconnects;
3. a worker killed under --instances 2: exactly its clients lose their
   connection, the other worker's keep talking, the supervisor restarts it;
4. 5,000 concurrent sessions on one mux process, then no descriptor leak and
   the memory comes back;
5. a client that never reads while others chat: the mux holds at most about
   a window for it, and everything arrives in order once it reads again.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from iim.limits import raise_nofile
from live import DOMAIN, Client, LiveMux, LiveServer, next_item
from support import eventually
from support.process import DEADLINE

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
FEATURES_END = b"</stream:features>"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
SERVER_EXTRA = ('iim_server.negotiation_timeout = "120"\n'
                'iim_server.max_unauthenticated = "10000"\n'
                # every client here comes from 127.0.0.1: no per-source limit in the way
                'iim_server.max_unauthenticated_per_source = "100000"\n'
                'iim_server.accept_rate_per_source = "100000"\n'
                # the non-reading client (part 5) is sent 12 MB: the mux's cost is measured,
                # not the server's backlog bound (iim_server.max_backlog, issue 11.5)
                'iim_server.max_backlog = "64M"\n')
#: The same for the multiplexors (tests/test_per_source_limits.py tests these limits).
MUX_PER_SOURCE = {"maxsessions_per_source": "1000000", "accept_rate_per_source": "1000000"}
USERS = (("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"),
         ("dave", "dave-pw-4"))


# --- processes -------------------------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def mux_side_inode(mux_port: int, client_port: int) -> int | None:
    """The inode of the multiplexor's end of the connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == mux_port and \
                int(remote.split(":")[1], 16) == client_port and inode:
            return inode
    return None


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """``predicate()``'s first true value; ``timeout`` only bounds a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def final_stats(log: str) -> list[str]:
    return re.findall(r"worker \d+ stopped; final stats: (.*)", log)


# --- raw clients -----------------------------------------------------------------------

class Raw:
    """A TCP client that sends a stream header and reads the server's answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port = writer.get_extra_info("sockname")[1]

    @classmethod
    async def connect(cls, port: int) -> "Raw":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def until(self, marker: bytes, timeout: float = 30) -> bytes:
        data = b""
        while marker not in data:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise ConnectionError(f"EOF before {marker!r} after {data[:200]!r}")
            data += chunk
        return data

    async def open_stream(self, timeout: float = 30) -> bytes:
        """Send the header; return the server's header and features."""
        self.writer.write(HEADER)
        await self.writer.drain()
        return await self.until(FEATURES_END, timeout)

    async def starttls_proceeds(self, timeout: float = 10) -> bool:
        """Ask for STARTTLS (a request/answer on an open stream)."""
        self.writer.write(STARTTLS)
        await self.writer.drain()
        return b"<proceed" in await self.until(b"proceed", timeout)

    async def eof(self, timeout: float) -> bytes | None:
        """The bytes read before EOF (or a reset) within ``timeout``; None if none came."""
        data = b""
        try:
            while True:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not chunk:
                    return data
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return data
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.writer.close()


async def open_many(port: int, count: int, parallel: int = 400) -> list[Raw]:
    """``count`` raw clients, each with its stream header answered; all stay open."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Raw:
        async with gate:
            client = await Raw.connect(port)
            answer = await client.open_stream(60)
            assert answer.startswith(b"<?xml") and b"<stream:stream" in answer, answer[:200]
            return client

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in results:
        if isinstance(r, Raw) and failed:
            r.close()
    if failed:
        raise AssertionError(f"{len(failed)}/{count} sessions failed, e.g. {failed[0]!r}")
    return results


def refused_at_once(port: int, timeout: float = DEADLINE) -> tuple[bytes, float]:
    """Connect, send nothing, read: (bytes before EOF, seconds it took); not
    closed within ``timeout`` (a bound on a failure) is a failure."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError(f"not closed within {timeout} s (read {data[:100]!r})")
    return data, time.monotonic() - started


async def small_buffer_client(client, port: int, rcvbuf: int = 16384):
    """Log ``client`` (a rawclient.RawClient) in over a socket whose receive buffer
    is set small before connecting, so the kernel holds little of what it does not read."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    client.reader, client.writer = await asyncio.open_connection(sock=sock)
    client.stream.start()                          # as RawClient.connect does
    client._flush()
    client._reading = asyncio.ensure_future(client._read_loop())
    await asyncio.wait_for(client.established.wait(), 20)
    return client


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """(send queue, receive queue) in bytes of the 127.0.0.1 socket local_port -> remote_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port and \
                int(fields[2].split(":")[1], 16) == remote_port:
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket {local_port} -> {remote_port}")


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def chat_once(server: LiveServer, port: int, body: str,
                    a=("alice", "alice-pw-1"), b=("bob", "bob-pw-2")) -> str:
    sender = await Client(f"{a[0]}@{DOMAIN}/r", a[1], server.ca_file).online(port)
    receiver = await Client(f"{b[0]}@{DOMAIN}/r", b[1], server.ca_file).online(port)
    try:
        sender.send_message(mto=f"{b[0]}@{DOMAIN}/r", mbody=body, mtype="chat")
        return (await next_item(receiver.received))["body"]
    finally:
        await sender.offline()
        await receiver.offline()


# --- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, ca):
    raise_nofile()
    live = LiveServer(tmp_path_factory.mktemp("muxrobust"), ca, extra=SERVER_EXTRA, users=USERS)
    live.add_users()
    live.start()
    yield live
    if live.proc is not None and live.proc.poll() is None:
        assert live.stop() == 0


@pytest.fixture
def mux_factory(server, tmp_path):
    made: list[LiveMux] = []

    def make(name: str, instances: int = 1, threads: int = 2, **params) -> LiveMux:
        """A multiplexor whose per-source limits stay out of the way: these
        floods come from 127.0.0.1 like their users."""
        mux = LiveMux(tmp_path, server, name, instances=instances, threads=threads,
                      params={**MUX_PER_SOURCE, **params})
        made.append(mux)
        return mux

    yield make
    for mux in made:
        mux.kill()


# --- 1. maxsessions + 1 ------------------------------------------------------------------

def test_one_client_over_maxsessions_is_closed_at_once_and_the_others_go_on(server,
                                                                          mux_factory):
    mux = mux_factory("mux-max", maxsessions=20)
    worker = mux.workers()[0]
    fds_idle = fd_count(worker)

    async def scenario():
        clients = await open_many(mux.port, 20)
        extra = await Raw.connect(mux.port)
        refused = await extra.eof(20)              # closed before a byte (the bound: a failure)
        extra.close()
        answers = await asyncio.gather(*(c.starttls_proceeds() for c in clients))
        for c in clients:
            c.close()
        # The mux sees the EOFs and frees the slots: each session's descriptor goes
        # with its slot, so that is waited for (the deadline only bounds a failure).
        await eventually(lambda: fd_count(worker) <= fds_idle, "the sessions' descriptors closed")
        body = await chat_once(server, mux.port, "after the limit")
        return refused, answers, body

    refused, answers, body = run(scenario())
    assert refused == b"", f"the 21st client got {refused!r} (None: not closed)"
    assert all(answers)                            # the 20 still talk to the server
    assert body == "after the limit"               # slots come back when clients leave
    assert mux.stop() == 0
    stats = final_stats(mux.log())
    assert len(stats) == 1 and ", refused 1 (per source 0, rate 0)," in stats[0], stats
    assert "Traceback" not in mux.log() + mux.stderr.read_text()


# --- 2. the server killed and restarted under 500 sessions ---------------------------------

def test_server_killed_and_restarted_under_500_sessions(server, mux_factory):
    mux = mux_factory("mux-restart")
    worker = mux.workers()[0]

    async def kill_and_watch():
        clients = await open_many(mux.port, 500)
        server.proc.kill()                         # SIGKILL: no LINKCLOSE, no goodbye
        server.proc.wait(10)
        started = time.monotonic()
        ends = await asyncio.gather(*(c.eof(DEADLINE) for c in clients))
        closed_in = time.monotonic() - started
        for c in clients:
            c.close()
        return ends, closed_in

    ends, closed_in = run(kill_and_watch())
    server.proc = None
    assert all(e is not None for e in ends), f"{ends.count(None)} clients never closed"
    assert mux.proc.poll() is None and mux.workers() == {0: worker}     # it survived
    wait_until(lambda: mux.log().count(" lost: ") >= mux.threads, DEADLINE, "both links lost")
    retry_failed = f"link to 127.0.0.1:{server.link_port}: Connection refused"
    tried = mux.log().count(retry_failed)
    probes = [refused_at_once(mux.port) for _ in range(5)]     # before a reconnection fails
    wait_until(lambda: mux.log().count(retry_failed) > tried, DEADLINE,
               "a reconnection attempt to fail")
    probes += [refused_at_once(mux.port) for _ in range(5)]    # and after
    assert all(data == b"" for data, _ in probes), probes       # refused, not held
    links_before = mux.links_up()
    server.start()
    mux.wait_links(links_before + mux.threads)
    assert run(chat_once(server, mux.port, "after the restart")) == "after the restart"
    assert mux.workers() == {0: worker}
    print(f"\n500 clients closed {closed_in:.2f} s after the kill; "
          f"refusals took {max(t for _, t in probes) * 1000:.0f} ms at most")
    assert mux.stop() == 0
    log = mux.log()
    assert "refusing clients meanwhile" in log and "Traceback" not in log
    assert int(re.search(r"refused (\d+)", final_stats(log)[0]).group(1)) >= len(probes)


# --- 3. one worker killed under --instances 2 ----------------------------------------------

def test_a_killed_worker_takes_only_its_clients_and_is_restarted(server, mux_factory):
    mux = mux_factory("mux-two", instances=2)
    pids = wait_until(lambda: len(mux.workers()) == 2 and mux.workers(), DEADLINE,
                      "two workers")

    def worker_of(client: Raw) -> int:
        def find():
            inode = mux_side_inode(mux.port, client.port)
            if inode is None:
                return None
            for instance, pid in pids.items():
                if inode in socket_inodes(pid):
                    return instance + 1
        return wait_until(find, DEADLINE, f"the worker of client port {client.port}") - 1

    async def scenario():
        by_worker: dict[int, list[Raw]] = {0: [], 1: []}
        while min(map(len, by_worker.values())) < 3:
            client = await Raw.connect(mux.port)
            await client.open_stream()
            by_worker[worker_of(client)].append(client)
            assert sum(map(len, by_worker.values())) < 80, "SO_REUSEPORT chose one worker"
        os.kill(pids[0], signal.SIGKILL)
        lost = await asyncio.gather(*(c.eof(DEADLINE) for c in by_worker[0]))
        still = await asyncio.gather(*(c.starttls_proceeds() for c in by_worker[1]))
        for c in by_worker[0] + by_worker[1]:
            c.close()
        return lost, still

    lost, still = run(scenario())
    assert all(e is not None for e in lost), "a client of the killed worker stayed connected"
    assert all(still)                              # the other worker's clients kept talking
    new = wait_until(lambda: len(mux.workers()) == 2 and mux.workers(), DEADLINE,
                     "the restart")
    assert new[1] == pids[1] and new[0] != pids[0]
    mux.wait_links(2 * mux.threads + mux.threads)               # the new worker's links
    assert run(chat_once(server, mux.port, "after the restart")) == "after the restart"
    assert mux.stop() == 0
    log = mux.log() + mux.stderr.read_text()
    assert "worker 0 was killed by SIGKILL" in log
    assert "Traceback" not in log


# --- 4. 5,000 concurrent sessions ----------------------------------------------------------

def test_five_thousand_sessions_then_no_descriptor_or_memory_leak(server, mux_factory):
    soft, _ = raise_nofile()
    assert soft >= 5000 + 200, f"RLIMIT_NOFILE hard limit {soft} is too low for 5,000 clients"
    mux = mux_factory("mux-5000", maxsessions=6000)
    worker = mux.workers()[0]
    fds_idle = fd_count(worker)
    limits = Path(f"/proc/{worker}/limits").read_text()
    assert int(re.search(r"Max open files\s+(\d+)", limits).group(1)) >= 5000 + 100, \
        "the worker cannot hold 5,000 client descriptors here"
    numbers = {}

    async def warm_up():                           # allocate what any first session does
        clients = await open_many(mux.port, 50)
        for c in clients:
            c.close()

    run(warm_up())
    # the warm-up's sessions are gone when their descriptors are (they go together)
    wait_until(lambda: fd_count(worker) <= fds_idle, DEADLINE, "the warm-up's sessions freed",
               interval=0.2)
    numbers["fd_before"], numbers["rss_before"] = fd_count(worker), rss_kb(worker)

    async def scenario():
        started = time.monotonic()
        clients = await open_many(mux.port, 5000, parallel=500)
        numbers["open_seconds"] = time.monotonic() - started
        numbers["fd_open"], numbers["rss_open"] = fd_count(worker), rss_kb(worker)
        for c in clients:
            c.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in clients),
                             return_exceptions=True)

    run(scenario(), timeout=120)
    wait_until(lambda: fd_count(worker) <= numbers["fd_before"] + 4, DEADLINE,
               "the worker's descriptors to come back", interval=0.2)
    numbers["fd_after"], numbers["rss_after"] = fd_count(worker), rss_kb(worker)
    print(f"\n5,000 sessions: opened in {numbers['open_seconds']:.1f} s; worker fds "
          f"{numbers['fd_before']} -> {numbers['fd_open']} -> {numbers['fd_after']}; RSS KB "
          f"{numbers['rss_before']} -> {numbers['rss_open']} -> {numbers['rss_after']}")
    assert numbers["fd_open"] >= numbers["fd_before"] + 5000    # one descriptor per session
    assert numbers["fd_after"] <= numbers["fd_before"] + 4
    assert numbers["rss_after"] - numbers["rss_before"] < 50_000
    assert mux.workers() == {0: worker}
    assert mux.stop() == 0
    stats = final_stats(mux.log())
    assert "sessions 0 " in stats[0] and ", refused 0 (per source 0, rate 0)," in stats[0], stats
    assert "Traceback" not in mux.log()


# --- 5. a client that never reads -------------------------------------------------------------

def test_a_client_that_never_reads_costs_the_mux_about_a_window(server, mux_factory):
    from rawclient import RawClient
    # one relay thread: bob's bytes and the others' messages share one link, so a
    # message that comes out of the mux after bob's proves the mux has read all of
    # bob's that the server had sent before it
    mux = mux_factory("mux-slow", threads=1)
    worker = mux.workers()[0]
    count, size = 400, 30_000      # 12 MB: more than the kernel buffers (wmem max 4 MB) hold

    async def scenario():
        bob = await small_buffer_client(RawClient(f"bob@{DOMAIN}/stalled", "bob-pw-2",
                                                  server.ca_file), mux.port)
        bob_port = bob.writer.get_extra_info("sockname")[1]
        bob.stop_reading()
        alice = await Client(f"alice@{DOMAIN}/a", "alice-pw-1", server.ca_file).online(mux.port)
        carol = await Client(f"carol@{DOMAIN}/c", "carol-pw-3", server.ca_file).online(mux.port)
        dave = await Client(f"dave@{DOMAIN}/d", "dave-pw-4", server.ca_file).online(mux.port)
        alice.send_message(mto=f"dave@{DOMAIN}/d", mtype="chat", mbody="logged in")
        assert (await next_item(dave.received, DEADLINE))["body"] == "logged in"
        rss_before = rss_kb(worker)
        for n in range(count):
            alice.send_message(mto=f"bob@{DOMAIN}/stalled", mtype="chat",
                               mbody=f"{n:04d} " + "x" * size)
        # the server takes alice's stanzas in order: when this one reaches dave, all
        # 400 were routed to bob, and what of them the server sent has passed the mux
        alice.send_message(mto=f"dave@{DOMAIN}/d", mtype="chat", mbody="all sent")
        assert (await next_item(dave.received, DEADLINE))["body"] == "all sent"
        chatted = []
        for n in range(20):                        # others chat meanwhile, through this mux
            carol.send_message(mto=f"dave@{DOMAIN}/d", mtype="chat", mbody=f"c{n}")
            chatted.append((await next_item(dave.received, DEADLINE))["body"])
        rss_growth = rss_kb(worker) - rss_before
        in_kernel = tcp_queues(mux.port, bob_port)[0] + tcp_queues(bob_port, mux.port)[1]
        bob.resume_reading()
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while len([s for s in bob.stanzas if s.tag.endswith("message")]) < count:
            assert asyncio.get_running_loop().time() < deadline, \
                f"only {len(bob.stanzas)} of {count} messages after resuming"
            await asyncio.sleep(0.1)
        await bob.close()
        for c in (alice, carol, dave):
            await c.offline()
        return bob.stanzas, chatted, rss_growth, in_kernel

    stanzas, chatted, rss_growth, in_kernel = run(scenario(), timeout=90)
    bodies = [s.findtext("{jabber:client}body") for s in stanzas if s.tag.endswith("message")]
    print(f"\nnon-reading client: {count * size // 1000} KB sent to it; {in_kernel // 1000} KB "
          f"in the kernel's socket queues, mux worker RSS grew {rss_growth} KB")
    assert in_kernel < count * size // 2           # most of it really waited upstream
    assert [b[:4] for b in bodies] == [f"{n:04d}" for n in range(count)]
    assert chatted == [f"c{n}" for n in range(20)]
    assert rss_growth < 2_000          # KB; about one 64 KiB window, not megabytes
    assert mux.stop() == 0
    assert "Traceback" not in mux.log()
