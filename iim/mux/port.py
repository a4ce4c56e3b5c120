"""The listening port, claimed once per multiplexor by its supervisor.

Theory of operation. Every relay thread of every worker binds its own
listening socket to ``iim_mux.listenport`` with SO_REUSEPORT, and the kernel
spreads new clients over them (iim/mux/worker.py). SO_REUSEPORT lets any
process of the same user join that group, so on its own it would let a
second multiplexor (a stale one, another instance's iim.conf) bind the same
port without an error and take a share of the clients. Before any worker
starts, the supervisor therefore claims the port, in two steps:

1. A lock: an abstract Unix socket named after the address (its own
   namespace, per network namespace like ports; released by the kernel when
   the supervisor dies, however it dies). A second multiplexor claiming the
   same address fails here, even when both start at the same instant.
2. A probe: a TCP socket bound to the address *without* SO_REUSEPORT (with
   SO_REUSEADDR, so that TIME_WAIT connections of a previous run do not
   count), then closed. Such a bind fails when anything listens there, with
   or without SO_REUSEPORT: an older multiplexor, its orphaned workers, any
   other program.

A failure is one line naming the port and, where /proc shows it, the holder
(pid and command line). The workers then bind as before, and so does a
worker the supervisor restarts after a crash: the claim is the supervisor's
and lasts its whole life, so restarts never probe (their siblings listen).

Rejected designs, for the record. One listening socket made by the
supervisor and inherited by every worker: no SO_REUSEPORT at all, but every
relay thread of every process would wait on the same socket (no kernel
balancing, thundering herd), and a thread whose link is down, which refuses
the clients of its own listener, would refuse clients the others could
serve. Listening sockets made by the supervisor with SO_REUSEPORT and handed
to the workers: a crashed worker's sockets stay open while it restarts, so
the clients the kernel queues on them wait (up to 30 s of restart backoff)
instead of going to the surviving workers.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from iim.conf import HostPort

__all__ = ["CannotListen", "PortClaim", "PortInUse", "holder_of_port"]


class CannotListen(Exception):
    """iim_mux.listenport cannot be listened on (one line for the operator)."""


class PortInUse(CannotListen):
    """Another process listens on iim_mux.listenport."""


class PortClaim:
    """``PortClaim(where)``: the lock and the probe; raises PortInUse.
    Hold the object for the multiplexor's life; ``close()`` gives the port up."""

    def __init__(self, where: HostPort) -> None:
        self.where = where
        try:
            family, address, dual = bind_address(where)
        except OSError as exc:                  # a host name that does not resolve
            raise CannotListen(f"iim_mux.listenport: cannot listen on {where}: "
                               f"{exc.strerror or exc}") from None
        self._lock = _lock(where, family, address)
        try:
            _probe(where, family, address, dual)
        except BaseException:
            self._lock.close()
            raise

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> "PortClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bind_address(where: HostPort) -> tuple[int, tuple, bool]:
    """(family, sockaddr, dual-stack) for a listener on ``where``; a host of
    None means every address (IPv6 and IPv4 when the host has IPv6)."""
    if where.host is None:
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, ("::", where.port), True
        return socket.AF_INET, ("0.0.0.0", where.port), False
    info = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0]
    return info[0], info[4], False


def _lock(where: HostPort, family: int, address: tuple) -> socket.socket:
    name = f"\0iim.mux listening on {family}/{address[0]}/{address[1]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        holder = _describe(_pids_of(_unix_inodes(name[1:])))
        raise PortInUse(f"iim_mux.listenport: cannot listen on {where}: another multiplexor "
                        f"already serves it" + (f", {holder}" if holder else "")) from None
    return sock


def _probe(where: HostPort, family: int, address: tuple, dual: bool) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:       # not an address of this host, say
                raise CannotListen(f"iim_mux.listenport: cannot listen on {where}: "
                                   f"{exc.strerror}") from None
            holder = holder_of_port(where.port) or "a process this user cannot see"
            raise PortInUse(f"iim_mux.listenport: cannot listen on {where}: Address already "
                            f"in use by {holder}") from None


def holder_of_port(port: int) -> str:
    """"pid N (command)" of a process listening on TCP ``port``, as far as
    /proc lets this user see; "" when it cannot tell."""
    return _describe(_pids_of(_tcp_listen_inodes(port)))


def _describe(pids: list[int]) -> str:
    if not pids:
        return ""
    pid = pids[0]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command = " ".join(b" ".join(argv).decode("utf-8", "replace").split())   # one line
    except OSError:
        command = ""
    if len(command) > 120:
        command = command[:117] + "..."
    more = f" and {len(pids) - 1} other process(es)" if len(pids) > 1 else ""
    return f"pid {pid}" + (f" ({command})" if command else "") + more


def _tcp_listen_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on TCP ``port`` (/proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                found.add(inode)
    return found


def _unix_inodes(abstract_name: str) -> set[str]:
    """Inodes of the Unix sockets bound to the abstract ``abstract_name``."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    want = "@" + abstract_name
    return {f[6] for f in (line.split(None, 7) for line in lines)
            if len(f) == 8 and f[7] == want}


def _pids_of(inodes: set[str]) -> list[int]:
    """Processes holding any socket of ``inodes`` (those this user may look at)."""
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    return sorted(int(e.name) for e in os.scandir("/proc")
                  if e.name.isdigit() and _holds(e.name, targets))


def _holds(pid: str, targets: set[str]) -> bool:
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return False                                # gone, or not ours to look at
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path) in targets:
                    return True
            except OSError:
                continue
    return False
