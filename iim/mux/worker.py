"""One multiplexor process: ``iim_mux.maxthreads`` relay threads, their links, statistics.

Theory of operation. Each relay thread owns one listening socket (all of
them bound to ``iim_mux.listenport`` with SO_REUSEPORT, in this process and
in the other instances, so the kernel spreads new clients over them; the
supervisor made sure first that nobody else listens there, iim/mux/port.py)
and one link to the server at a time. Its life is a loop:

    connect + set up the link (iim.mux.link)  ->  Relay(...).run()  ->  link lost
        ^                                                                  |
        +--- wait 0.5 s, 1 s, 2 s ... 30 s, refusing clients meanwhile <----+

``Relay.run()`` is the compiled relay core (iim._fastmux); it releases the
GIL, so the threads of a process relay in parallel and this module only
sees them start and end. While a thread has no link, clients that reach its
listener are accepted and closed at once (``refuse_for``): they learn at
once that the service is away, instead of waiting in a backlog.

The relays of a process share one SessionLimit (``iim_mux.maxsessions`` is
per process), one SourceLimit (``iim_mux.maxsessions_per_source`` and
``iim_mux.accept_rate_per_source``: a client over them is closed as soon as
accepted, counted in the statistics line, and logged at most once a minute
per limit) and one TLS context; SIGHUP builds a new context, which new
clients get, while connected clients keep theirs. A legacy-SSL client that
has not finished its handshake ``iim_mux.handshake_timeout`` seconds after
it connected is closed by its relay. The main thread only waits for signals
and writes a statistics line every ``iim_mux.stat_frequency`` seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

from iim import _fastmux
from iim.conf import Config, HostPort
from iim.conf.limits import MuxLimits
from iim.keys.errors import KeyMaterialError

from . import link as muxlink
from . import ticketkeys
from . import tls as muxtls
from .port import bind_address

__all__ = ["Backoff", "RelayThread", "Worker", "WorkerSettings", "StartupError",
           "open_listener", "stats_line"]

#: Seconds between reconnection attempts: first, then doubling up to the last.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Link set-up (connect, HELLO..READY) gives up after this many seconds.
CONNECT_TIMEOUT = 10.0
#: How often a thread without a link looks at its stop flag.
REFUSE_SLICE = 0.1
#: Link keepalive (docs/muxlink.md): PING after this many idle seconds.
KEEPALIVE = 30.0
#: How often the main thread looks for a failed relay thread.
FAILURE_CHECK = 1.0
#: Counters added up over relays (the rest are levels, taken from live relays).
TOTALS = ("opened", "closed", "refused", "bytes_client_to_server", "bytes_server_to_client",
          "handshakes_ok", "handshakes_failed", "refused_per_source", "refused_rate")
#: Seconds between two log lines about the same per-source limit.
LIMIT_LOG_INTERVAL = 60.0
#: The per-source refusal counters and the limit each one is about.
SOURCE_LIMITS = (("refused_per_source", "iim_mux.maxsessions_per_source"),
                 ("refused_rate", "iim_mux.accept_rate_per_source"))
LEVELS = ("sessions_plain", "sessions_tls", "handshaking")


class StartupError(Exception):
    """The worker cannot start (a port, the key material): one line for the log."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs, taken from ``iim_mux.*`` (see iim.conf.MuxSettings)."""

    instance: int
    listen: HostPort
    server_host: str
    server_port: int
    threads: int
    maxsessions: int
    stat_frequency: float
    usessl: bool
    secret: bytes | None = None
    link_tls: str = "auto"
    link_cafile: str | None = None
    maxsessions_per_source: int = MuxLimits.maxsessions_per_source
    accept_rate_per_source: int = MuxLimits.accept_rate_per_source
    handshake_timeout: float = MuxLimits.handshake_timeout
    link_flush_delay_us: int = MuxLimits.link_flush_delay_us
    keepalive: float = KEEPALIVE
    backoff_first: float = BACKOFF_FIRST
    backoff_max: float = BACKOFF_MAX

    @classmethod
    def from_config(cls, config: Config, instance: int, secret: bytes | None) -> "WorkerSettings":
        mux = config.mux
        return cls(instance=instance, listen=mux.listenport,
                   server_host=mux.serverport.host or "127.0.0.1",
                   server_port=mux.serverport.port, threads=mux.maxthreads,
                   maxsessions=mux.maxsessions, stat_frequency=mux.stat_frequency,
                   usessl=mux.usessl, secret=secret, link_tls=mux.muxlink_tls,
                   link_cafile=str(mux.muxlink_cafile) if mux.muxlink_cafile else None,
                   maxsessions_per_source=mux.limits.maxsessions_per_source,
                   accept_rate_per_source=mux.limits.accept_rate_per_source,
                   handshake_timeout=mux.limits.handshake_timeout,
                   link_flush_delay_us=mux.limits.link_flush_delay_us)


class Backoff:
    """0.5 s, 1 s, 2 s ... 30 s; back to the start after a link that lasted."""

    def __init__(self, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX) -> None:
        self.first, self.maximum = first, maximum
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def link_lasted(self, seconds: float) -> None:
        if seconds >= self.maximum:
            self.delay = self.first


def open_listener(where: HostPort) -> socket.socket:
    """A non-blocking listening socket with SO_REUSEPORT; a host of None
    means every address (IPv6 and IPv4 when the host has IPv6)."""
    family, address, dual = bind_address(where)      # as the supervisor's claim probed it
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if dual:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class RelayThread(threading.Thread):
    """One listener; one link and Relay at a time, reconnecting with backoff."""

    def __init__(self, worker: "Worker", index: int, listener: socket.socket) -> None:
        super().__init__(name=f"relay-{worker.settings.instance}.{index}", daemon=True)
        self.worker = worker
        self.index = index
        self.listener = listener
        self.relay: _fastmux.Relay | None = None
        self.retired: Counter = Counter()       # counters of the relays that ended
        self.refused_while_down = 0
        self.last_refused = ""                  # the source its relays last refused
        self.last_error: str | None = None     # why the link last failed (for status)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._setting_up: socket.socket | None = None

    @property
    def name_for_log(self) -> str:
        return f"link {self.worker.settings.instance}.{self.index}"

    @property
    def link_up(self) -> bool:
        return self.relay is not None

    def stop(self) -> None:
        """Stop relaying (any thread); run() returns soon after."""
        self._stopping.set()
        with self._lock:
            relay, sock = self.relay, self._setting_up
        if relay is not None:
            relay.stop()
        if sock is not None:
            _shutdown(sock)

    def set_tls_context(self, ctx: _fastmux.TlsContext) -> None:
        with self._lock:
            relay = self.relay
        if relay is not None:
            relay.set_tls_context(ctx)

    def stats(self) -> Counter:
        with self._lock:
            relay, total = self.relay, Counter(self.retired)
        total["refused"] += self.refused_while_down
        if relay is not None:
            live = relay.stats()
            total.update({k: live[k] for k in TOTALS + LEVELS})
            self.last_refused = live["last_refused"] or self.last_refused
        return total

    def run(self) -> None:
        try:
            self._relay_forever()
        except Exception:                   # a bug: end the worker, the supervisor restarts it
            self.worker.log.exception("%s: relay thread failed", self.name_for_log)
            self.worker.failed.set()

    def _relay_forever(self) -> None:
        backoff = Backoff(self.worker.settings.backoff_first, self.worker.settings.backoff_max)
        log = self.worker.log
        while not self._stopping.is_set():
            relay = self._connect(log)
            if relay is None:
                self._refuse_for(backoff.next())
                continue
            started = time.monotonic()
            code = relay.run()
            self._retire(relay)
            if self._stopping.is_set():
                break
            backoff.link_lasted(time.monotonic() - started)
            delay = backoff.next()
            log.warning("%s lost: %s%s; reconnecting in %.1f s, refusing clients meanwhile",
                        self.name_for_log, _fastmux.EXIT_NAMES[code],
                        f" ({relay.exit_detail})" if relay.exit_detail else "", delay)
            self._refuse_for(delay)

    def _connect(self, log: logging.Logger) -> _fastmux.Relay | None:
        s = self.worker.settings
        try:
            up = muxlink.connect(s.server_host, s.server_port, instance=s.instance,
                                 thread=self.index, secret=s.secret, timeout=CONNECT_TIMEOUT,
                                 tls_mode=s.link_tls, tls_context=self.worker.link_tls,
                                 register=self._register)
        except muxlink.LinkError as exc:
            if not self._stopping.is_set():
                log.warning("%s: %s", self.name_for_log, exc)
                self.last_error = str(exc)
            return None
        finally:
            self._register(None)
        ctx = self.worker.tls_context
        tls = f", {up.tls.version} {up.tls.cipher}" if up.tls is not None else ""
        try:
            relay = _fastmux.Relay(self.listener.fileno(), up.sock.detach(), up.window,
                                   self.worker.limit, tls=ctx,
                                   handshake_timeout=s.handshake_timeout, instance=s.instance,
                                   thread=self.index, keepalive=s.keepalive,
                                   sources=self.worker.sources, link_tls=up.tls,
                                   flush_delay=s.link_flush_delay_us / 1e6)
        except (OSError, MemoryError) as exc:   # out of descriptors or memory; link closed
            log.error("%s: cannot start relaying: %s", self.name_for_log,
                      getattr(exc, "strerror", None) or exc)
            return None
        with self._lock:
            self.relay = relay
        if self.worker.tls_context is not ctx:     # reloaded meanwhile (SIGHUP)
            relay.set_tls_context(self.worker.tls_context)
        if self._stopping.is_set():
            relay.stop()
        log.info("%s up to %s:%d (window %d%s%s)", self.name_for_log, s.server_host,
                 s.server_port, up.window, ", shared secret proved" if up.secret_proved else "",
                 tls)
        return relay

    def _register(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._setting_up = sock
        if sock is not None and self._stopping.is_set():
            _shutdown(sock)

    def _retire(self, relay: _fastmux.Relay) -> None:
        final = relay.stats()
        with self._lock:
            self.retired.update({k: final[k] for k in TOTALS})
            self.relay = None

    def _refuse_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        fd = self.listener.fileno()
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            slice_ms = int(min(left, REFUSE_SLICE) * 1000) + 1
            self.refused_while_down += _fastmux.refuse_for(fd, slice_ms)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Worker:
    """The relay threads of one process, and what they share."""

    def __init__(self, settings: WorkerSettings, log: logging.Logger,
                 tls_loader=None) -> None:
        self.settings = settings
        self.log = log
        self.limit = _fastmux.SessionLimit(settings.maxsessions)
        self.sources = _fastmux.SourceLimit(settings.maxsessions_per_source,
                                            settings.accept_rate_per_source,
                                            settings.maxsessions)
        self.limit_log = SourceLimitLog(log)
        self.tls_context: _fastmux.TlsContext | None = None
        self.link_tls: _fastmux.LinkTlsContext | None = None
        self._tls_loader = tls_loader      # () -> TlsContext, for start and SIGHUP
        self.threads: list[RelayThread] = []
        self.failed = threading.Event()    # a relay thread died of an unexpected error

    def start(self) -> None:
        """Load the key material, open the listeners, start the threads (StartupError)."""
        if self.settings.usessl:
            self.tls_context = self._load_tls()
        if self.settings.link_tls != "off":
            self.link_tls = link_tls_context(self.settings.link_cafile)
        listeners = []
        try:
            for _ in range(self.settings.threads):
                listeners.append(open_listener(self.settings.listen))
        except OSError as exc:
            for sock in listeners:
                sock.close()
            raise StartupError(f"iim_mux.listenport: cannot listen on {self.settings.listen}: "
                               f"{exc.strerror or exc}") from None
        self.threads = [RelayThread(self, i, sock) for i, sock in enumerate(listeners)]
        for thread in self.threads:
            thread.start()

    def _load_tls(self) -> _fastmux.TlsContext:
        try:
            return self._tls_loader()
        except KeyMaterialError as exc:
            raise StartupError(str(exc)) from None

    def reload_certificate(self, why: str = "SIGHUP") -> bool:
        """SIGHUP (or a refresh): a new TLS context for new clients; False (logged)
        on failure."""
        if not self.settings.usessl:
            self.log.info("%s: iim_mux.usessl is off; no certificate to reload", why)
            return False
        try:
            ctx = self._tls_loader()
        except KeyMaterialError as exc:
            self.log.error("%s: certificate not reloaded, keeping the current one: %s", why, exc)
            return False
        self.tls_context = ctx
        for thread in self.threads:
            thread.set_tls_context(ctx)
        self.log.info("%s: certificate reloaded; new clients get it, connected ones "
                      "keep theirs", why)
        return True

    def rotate_ticket_keys(self, now: float) -> None:
        """Step the session ticket keys to the period of `now` (iim/mux/ticketkeys.py);
        every worker does, on the same clock, so they stay in step."""
        if self.tls_context is not None:
            self.tls_context.rotate_ticket_keys(ticketkeys.period(now))

    def last_refused(self) -> str:
        """The source a per-source limit refused last (as far as the threads know)."""
        latest = [t.last_refused for t in self.threads if t.last_refused]
        return latest[-1] if latest else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every relay (their clients are closed), join, close the listeners."""
        for thread in self.threads:
            thread.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self.threads:
            if not thread.is_alive():
                thread.listener.close()

    def stats(self) -> Counter:
        total = Counter()
        for thread in self.threads:
            total.update(thread.stats())
        total["links_up"] = sum(thread.link_up for thread in self.threads)
        total["links"] = len(self.threads)
        return total


class SourceLimitLog:
    """One warning per per-source limit per LIMIT_LOG_INTERVAL, counting the
    refusals since the previous one (the server's LimitLog, fed with totals)::

        limit iim_mux.maxsessions_per_source: refused 17 since the last report
        (latest: 192.0.2.7)
    """

    def __init__(self, log: logging.Logger, interval: float = LIMIT_LOG_INTERVAL) -> None:
        self.log, self.interval = log, interval
        self._reported = Counter()             # refusals already logged, per counter
        self._last: dict[str, float] = {}

    def check(self, stats: Counter, latest: str, now: float) -> None:
        """Log what the counters in ``stats`` (totals) refused since the last line."""
        for counter, param in SOURCE_LIMITS:
            new = stats.get(counter, 0) - self._reported[counter]
            last = self._last.get(counter)
            if new <= 0 or (last is not None and now - last < self.interval):
                continue
            self._reported[counter] += new
            self._last[counter] = now
            self.log.warning("limit %s: refused %d %s%s", param, new,
                             "so far" if last is None else "since the last report",
                             f" (latest: {latest})" if latest else "")


def stats_line(stats: Counter) -> str:
    """The statistics line a worker logs every iim_mux.stat_frequency seconds."""
    g = stats.get
    sessions = g("sessions_plain", 0) + g("sessions_tls", 0)
    return (f"sessions {sessions} (plain {g('sessions_plain', 0)}, TLS {g('sessions_tls', 0)}, "
            f"handshaking {g('handshaking', 0)}), opened {g('opened', 0)}, "
            f"closed {g('closed', 0)}, refused {g('refused', 0)} (per source "
            f"{g('refused_per_source', 0)}, rate {g('refused_rate', 0)}), "
            f"bytes client->server {g('bytes_client_to_server', 0)}, "
            f"server->client {g('bytes_server_to_client', 0)}, "
            f"handshakes ok {g('handshakes_ok', 0)} failed {g('handshakes_failed', 0)}, "
            f"links up {g('links_up', 0)}/{g('links', 0)}")


def link_secret(config: Config) -> bytes | None:
    """The link secret from iim_mux.muxlink_secretfile, or None."""
    path = config.mux.muxlink_secretfile
    if path is None:
        return None
    try:
        return muxlink.load_secret(path, "iim_mux.muxlink_secretfile")
    except KeyMaterialError as exc:
        raise StartupError(str(exc)) from None


def link_tls_context(cafile: str | None) -> _fastmux.LinkTlsContext:
    """The TLS client context of the links: the server's certificate must chain to
    ``cafile`` (iim_mux.muxlink_cafile), or to the system's trust store."""
    try:
        pem = None if cafile is None else open(cafile, "rb").read()
        return _fastmux.LinkTlsContext(server=False, ca_pem=pem)
    except OSError as exc:
        raise StartupError(f"iim_mux.muxlink_cafile: {cafile}: {exc.strerror or exc}") from None
    except _fastmux.LinkTlsError as exc:
        where = f"iim_mux.muxlink_cafile: {cafile}" if cafile else "iim_mux.muxlink_tls"
        raise StartupError(f"{where}: {exc}") from None


def unauthenticated_warning(settings: WorkerSettings) -> str | None:
    """The one line a mux without a link secret logs at start (None: it has one)."""
    if settings.secret is not None:
        return None
    return ("mux links are not authenticated (no iim_mux.muxlink_secretfile): linking to a "
            "loopback server address only")


def serve(config: Config, instance: int, log: logging.Logger,
          ticket_keys: bytes | None = None, control=None) -> int:
    """The worker process: relay until SIGTERM/SIGINT; SIGHUP reloads the certificate.

    ``control`` (iim.mux.control.WorkerControl), when given, supplies the
    certificate loader and answers the supervisor once the worker runs."""
    wake, flags = threading.Event(), set()

    def on_signal(signum, _frame):
        flags.add(signum)
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        settings = WorkerSettings.from_config(config, instance, link_secret(config))
        worker = Worker(settings, log, control.loader if control is not None else
                        lambda: _tls_loader(config, ticket_keys, log))
        worker.start()
    except StartupError as exc:
        log.critical("worker %d: %s", instance, exc)
        print(exc, file=sys.stderr)         # the one line iim.admin start reports
        return 2
    if control is not None:
        control.attach(worker)
    log.info("worker %d (pid %d): %d relay threads on %s, server %s:%d%s", instance, os.getpid(),
             settings.threads, settings.listen, settings.server_host, settings.server_port,
             ", legacy SSL" if settings.usessl else "")
    if (warning := unauthenticated_warning(settings)) is not None:
        log.warning("%s", warning)
    next_stats = time.monotonic() + settings.stat_frequency
    while True:
        wake.wait(min(max(0.0, next_stats - time.monotonic()), FAILURE_CHECK))
        wake.clear()
        if flags & {signal.SIGTERM, signal.SIGINT} or worker.failed.is_set():
            break
        if signal.SIGHUP in flags:
            flags.discard(signal.SIGHUP)
            worker.reload_certificate()
        worker.limit_log.check(worker.stats(), worker.last_refused(), time.monotonic())
        worker.rotate_ticket_keys(time.time())
        if time.monotonic() >= next_stats:
            log.info("worker %d stats: %s", instance, stats_line(worker.stats()))
            next_stats += settings.stat_frequency
    worker.stop()
    log.info("worker %d stopped; final stats: %s", instance, stats_line(worker.stats()))
    return 1 if worker.failed.is_set() else 0


def _tls_loader(config: Config, ticket_keys: bytes | None, log: logging.Logger):
    ctx, warnings = muxtls.load_context(config.mux, ticket_keys)
    for warning in warnings:
        log.warning("%s", warning)
    return ctx
