"""Ports for test servers, safe with several pytest workers (pytest-xdist).

Binding port 0 and closing the socket hands back a port the kernel may give
again at once: to another worker's ``free_port``, or as the source port of any
outgoing connection, before the server the test starts has bound it. So the
ports come instead from below the kernel's ephemeral range, and each worker has
a slice of its own (gw0, gw1... by PYTEST_XDIST_WORKER), handed out in turn
from a random start (another run on the machine starts elsewhere). A port is
handed out only if it can be bound now, so one held by anything else is
skipped.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
import threading

LOW = 10000                          # the slices share LOW .. the ephemeral range's start


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker() -> tuple[int, int]:
    """(this worker's index, the number of workers); (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    return index % max(count, 1), max(count, 1)


def _slice() -> range:
    index, count = _worker()
    high = _ephemeral_start()
    size = (high - LOW) // count
    return range(LOW + index * size, LOW + (index + 1) * size)


_lock = threading.Lock()
_ports = None                        # the cycle over this worker's slice


def _next_candidate() -> int:
    global _ports
    with _lock:
        if _ports is None:
            ports = _slice()
            start = random.randrange(len(ports))
            _ports = itertools.cycle([*ports[start:], *ports[:start]])
        return next(_ports)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of this worker's slice that nothing holds on ``host`` now."""
    if _ephemeral_start() <= LOW + 1000:             # no room below the ephemeral range
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    for _ in range(len(_slice())):
        port = _next_candidate()
        if _bindable(host, port):
            return port
    raise RuntimeError(f"no free port left in {_slice()}")


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host``:``port`` now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


_LOOPBACK_PORT = re.compile(r'"127\.0\.0\.1:(\d+)"')


def relocate(conf_text: str) -> tuple[str, dict[int, int]]:
    """``conf_text`` with every ``"127.0.0.1:PORT"`` value moved to a free port.

    A configuration written by ``dev-setup`` listens on fixed ports (5222,
    5269, 5280, 15222) that ``./dev run`` or another worker's test may hold:
    a test that starts it moves all of them, including any added later.
    Returns the new text and {old port: new port}.
    """
    moved: dict[int, int] = {}

    def move(match: re.Match) -> str:
        old = int(match.group(1))
        moved.setdefault(old, free_port())
        return f'"127.0.0.1:{moved[old]}"'

    return _LOOPBACK_PORT.sub(move, conf_text), moved
