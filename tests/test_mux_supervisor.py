"""``python -m iim.mux`` as an administrator runs it: real processes, real signals.

The server end is tests/muxpeer.LinkPeer; clients connect to the shared
SO_REUSEPORT port, and the peer tells which worker (HELLO instance) relays
each of them.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from muxpeer import LinkPeer, closed_by_peer, recv_exact
from support import Process, StartFailed, free_port, wait_until


def write_conf(tmp_path: Path, listen: int, server: int, **extra) -> Path:
    lines = [f'iim_mux.listenport = "127.0.0.1:{listen}"',
             f'iim_mux.serverport = "127.0.0.1:{server}"',
             'iim_mux.maxthreads = "2"']
    lines += [f'iim_mux.{k} = "{v}"' for k, v in extra.items()]
    path = tmp_path / "iim.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(conf: Path, *args: str) -> tuple[Process, Path]:
    """The multiplexor on ``conf``; the file of its stderr (where it logs here)."""
    proc = Process([sys.executable, "-m", "iim.mux", "-c", str(conf), *args], conf.parent, "mux",
                   cwd=conf.parent)
    return proc, proc.stderr_file


def workers(supervisor: int) -> dict[int, int]:
    """{instance: pid} of the supervisor's worker processes."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    found = {}
    for pid in map(int, children):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--worker" in argv:
            found[int(argv[argv.index(b"--worker") + 1])] = pid
    return found


def instance_of(peer: LinkPeer, client: socket.socket) -> int:
    port = client.getsockname()[1]

    def find():
        for link in peer.links:
            if link.session_for_port(port) is not None:
                return link.hello[0] + 1           # +1: instance 0 is falsy
    return wait_until(find, what=f"the OPEN of client port {port}") - 1


def echo(client: socket.socket, data: bytes) -> bytes:
    client.sendall(data)
    return recv_exact(client, len(data))


@pytest.fixture
def peer():
    p = LinkPeer()
    yield p
    p.close()


def test_two_instances_restart_a_killed_worker_and_stop_on_sigterm(tmp_path, peer):
    port = free_port()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    big = hard // 2 + 100                           # more sessions than the limit allows
    conf = write_conf(tmp_path, port, peer.port, maxsessions=big)
    proc, log = start(conf, "--instances", "2")
    try:
        links = peer.wait_links(4, timeout=60)
        assert sorted(ln.hello for ln in links) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        clients = {0: [], 1: []}
        while min(len(v) for v in clients.values()) < 2:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients[instance_of(peer, c)].append(c)
            assert len(clients[0]) + len(clients[1]) < 60, "SO_REUSEPORT never chose one worker"
        pids = wait_until(lambda: len(workers(proc.pid)) == 2 and workers(proc.pid))
        survivors = [ln for ln in links if ln.hello[0] == 1]

        os.kill(pids[0], signal.SIGKILL)
        for c in clients[0]:
            assert closed_by_peer(c, 5)             # its clients lose their connection
            c.close()
        for c in clients[1]:
            assert echo(c, b"untouched") == b"untouched"
        assert not any(ln.ended.is_set() for ln in survivors)
        wait_until(lambda: len([ln for ln in peer.live_links()
                                if ln.hello[0] == 0 and ln not in links]) == 2,
                   what="the restarted worker's links")
        assert all(ln.ended.is_set() for ln in links if ln.hello[0] == 0)
        new = wait_until(lambda: len(workers(proc.pid)) == 2 and workers(proc.pid))
        assert new[1] == pids[1] and new[0] != pids[0]
        served = set()
        while served != {0, 1}:                     # both workers serve new clients
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                assert echo(c, b"new") == b"new"
                served.add(instance_of(peer, c))

        assert proc.stop() == 0
        for c in clients[1]:
            assert closed_by_peer(c, 5)
            c.close()
        wait_until(lambda: all(ln.linkclose == (4, "multiplexor stopping")
                               for ln in peer.links if ln.hello[0] == 1 or ln not in links))
    finally:
        proc.kill()
    text = log.read_text()
    assert (f"iim_mux.maxsessions = {big} needs about {big * 2 + 100} open files; "
            f"the hard limit here is {hard}") in text
    assert "worker 0 was killed by SIGKILL" in text
    assert "worker 1 stopped; final stats: sessions 0 (plain 0, TLS 0" in text
    assert "Traceback" not in text
    assert all(ln.errors == [] for ln in peer.links)


def refusal(proc: Process, log: Path) -> str:
    """The one line of a multiplexor that refused to start (exit status 1)."""
    try:
        status = proc.wait()                        # killed if it does not end: nothing is left
    except StartFailed as e:
        raise AssertionError(f"the multiplexor started instead of refusing: {e}") from None
    assert status == 1
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and "Traceback" not in text
    assert all("iim_mux.listenport: cannot listen on" in ln for ln in lines), lines
    return lines[-1]


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "SO_REUSEPORT"])
def test_a_port_another_program_listens_on_stops_the_multiplexor(tmp_path, peer, reuseport):
    with socket.socket() as taken:
        if reuseport:                               # it would share the port with our workers
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, log = start(write_conf(tmp_path, port, peer.port))
        line = refusal(proc, log)
    assert (f"iim_mux.listenport: cannot listen on 127.0.0.1:{port}: Address already in use "
            f"by pid {os.getpid()} (") in line      # this test process holds it
    assert peer.links == []                         # no worker ever started


def test_a_second_multiplexor_on_the_port_refuses_and_the_first_serves_everyone(tmp_path):
    first_peer, second_peer = LinkPeer(), LinkPeer()
    port = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first, _ = start(write_conf(tmp_path / "first", port, first_peer.port), "--instances", "2")
    second = None
    try:
        first_peer.wait_links(4, timeout=60)
        second, log = start(write_conf(tmp_path / "second", port, second_peer.port),
                            "--instances", "2")
        line = refusal(second, log)
        assert (f"iim_mux.listenport: cannot listen on 127.0.0.1:{port}: another multiplexor "
                f"already serves it, pid {first.pid} (") in line
        assert second_peer.links == []
        # Every client still reaches the first multiplexor, and all its workers accept.
        served, clients = set(), []
        while served != {0, 1} or len(clients) < 8:
            assert len(clients) < 60, "SO_REUSEPORT never chose one worker"
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
            assert echo(c, b"which one?") == b"which one?"
            served.add(instance_of(first_peer, c))
        assert second_peer.links == []
        # Stopped (its clients' connections left in TIME_WAIT), the port is free again.
        assert first.stop() == 0
        for c in clients:
            c.close()
        second, _ = start(write_conf(tmp_path / "second", port, second_peer.port))
        second_peer.wait_links(2, timeout=60)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert echo(c, b"now this one") == b"now this one"
            instance_of(second_peer, c)
        assert second.stop() == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
        first_peer.close()
        second_peer.close()


def test_bad_configuration_is_one_line_and_nothing_starts(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_text('iim_mux.maxthreads = "lots"\n')
    proc = subprocess.run([sys.executable, "-m", "iim.mux", "-c", str(conf)],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert "iim_mux.maxthreads" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("listen,why", [
    ("192.0.2.1", "Cannot assign requested address"),      # not an address of this host
    ("no-such-host.invalid", ""),                            # a name that does not resolve
])
def test_a_listen_address_that_cannot_be_used_is_one_line(tmp_path, listen, why):
    conf = tmp_path / "iim.conf"
    conf.write_text(f'iim_mux.listenport = "{listen}:{free_port()}"\n'
                    f'iim_mux.serverport = "127.0.0.1:{free_port()}"\n')
    proc = subprocess.run([sys.executable, "-m", "iim.mux", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"iim_mux.listenport: cannot listen on {listen}:") and why in last
