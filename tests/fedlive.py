"""Two (or more) real iim servers federating on loopback, for end-to-end tests.

Each server has its own domain and loopback address (a.example on 127.0.0.1,
b.example on 127.0.0.2, ...) and a keystore made by the real keytool from one
test CA; ``iim_server.s2s_hosts`` tells each where the others listen, as a
split-horizon deployment would, since the test domains are not in DNS.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from live import LiveServer


def federated(tmp: Path, ca, specs: dict, common: str = "",
              more_hosts: str = "") -> dict[str, LiveServer]:
    """``specs``: domain -> dict(host=..., extra=..., **LiveServer kwargs);
    ``more_hosts``: further ``domain=host:port`` entries for every server."""
    servers = {}
    for domain, spec in specs.items():
        spec = dict(spec)
        extra = spec.pop("extra", "")
        servers[domain] = LiveServer(tmp / domain, ca, domain=domain, extra=common + extra,
                                     **spec)
    for domain, server in servers.items():
        hosts = ", ".join([f"{d}={s.host}:{s.port}" for d, s in servers.items() if d != domain]
                          + ([more_hosts] if more_hosts else []))
        with server.conf.open("a") as conf:
            conf.write(f'\niim_server.s2s_hosts = "{hosts}"\n')
    return servers


def start_all(servers: dict) -> None:
    """Every server started at once (each waited for until its port answers); if
    one fails, those that started are stopped and the first failure raised."""
    for server in servers.values():
        server.add_users()
    with ThreadPoolExecutor(len(servers)) as pool:
        started = [pool.submit(server.start) for server in servers.values()]
    failed = [f.exception() for f in started if f.exception() is not None]
    if failed:
        stop_all(servers)
        raise failed[0]


def stop_all(servers: dict) -> None:
    """Every server stopped at once; the first failure (one that did not stop) raised
    once all have ended."""
    with ThreadPoolExecutor(len(servers)) as pool:
        stopped = [pool.submit(server.stop) for server in servers.values()]
    for future in stopped:
        future.result()
