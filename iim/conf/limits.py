"""The bounds on what a peer can make iim hold or do: one table, read once.

Every limit a connection, a user or a remote server runs into is a parameter
here, with a default an operator can live with and a *sane range*: a value
outside it is accepted (the operator may know better) but ``iim.admin check``
and the startup log warn about it, naming the line. The defaults follow what
Prosody and ejabberd operators know (``limits``, ``max_*``, quotas), scaled to
this server's own costs (bench/README.md).

"Source" means one IPv4 address, or one IPv6 /64 (a host usually owns a
whole /64, so counting single IPv6 addresses would bound nothing). Through
the multiplexor the source is the client's own address, which the link's
OPEN carries (docs/muxlink.md), never the multiplexor's.

Older limits keep their own places in ``settings.py`` (``maxstanzasize``,
``negotiation_timeout``, ``stanza_timeout``, ``max_unauthenticated``,
``s2s_queue_limit``, ``iim_mux.maxsessions``): they are read as they always
were.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from .values import at_least, parse_size, positive

__all__ = ["Limit", "MuxLimits", "ServerLimits", "MUX_LIMITS", "SERVER_LIMITS", "defaults"]

_seconds = at_least(0, "expected a number of seconds")
_seconds_min_1 = at_least(1, "expected a number of seconds, at least 1")
_microseconds = at_least(0, "expected a number of microseconds")


@dataclass(frozen=True)
class Limit:
    """One limit parameter: its name after the section prefix, its converter
    and the range outside which check warns. Its default is the field of the
    same name in ``ServerLimits`` / ``MuxLimits``."""

    name: str
    convert: Callable[[str], int]
    sane: tuple[int, int]


SERVER_LIMITS = (
    # -- what an unauthenticated stream can make the server hold (issue 11.1)
    Limit("max_xmlns_per_stanza", positive, (4, 1024)),
    Limit("max_auth_attempts", positive, (1, 20)),
    Limit("max_pending_verifies", positive, (1, 256)),
    Limit("max_pending_verifies_total", positive, (8, 100_000)),
    # -- one source against everyone else (11.2)
    Limit("max_unauthenticated_per_source", positive, (2, 100_000)),
    Limit("accept_rate_per_source", positive, (1, 100_000)),
    # -- federation: what one stream can make the server do elsewhere (11.3)
    Limit("s2s_connect_rate", positive, (1, 10_000)),
    Limit("s2s_retry_delay", _seconds, (1, 3600)),
    # -- offline storage (11.4)
    Limit("offline_max_messages", positive, (10, 1_000_000)),
    Limit("offline_quota", parse_size, (64 * 1024, 1 << 34)),
    Limit("offline_quota_per_sender", parse_size, (16 * 1024, 1 << 34)),
    Limit("offline_batch", positive, (1, 10_000)),
    # -- sessions and rosters (11.5, 11.6)
    Limit("max_backlog", parse_size, (64 * 1024, 1 << 30)),
    Limit("max_resources", positive, (1, 1000)),
    Limit("max_roster_items", positive, (10, 100_000)),
    Limit("max_roster_item_size", parse_size, (512, 1 << 20)),
    Limit("sm_resume_timeout", _seconds, (0, 3600)),
    # -- logins (11.7)
    Limit("auth_failure_delay", _seconds, (0, 10)),
    Limit("auth_failure_window", _seconds_min_1, (10, 86_400)),
    Limit("auth_failures_per_account", positive, (3, 10_000)),
    Limit("auth_failures_per_source", positive, (5, 100_000)),
    # -- one multiplexor link (issue 12): an OPEN flood closes that link only
    Limit("muxlink_max_sessions", positive, (100, 1_000_000)),
    Limit("muxlink_open_rate", positive, (10, 1_000_000)),
    # -- the log line a limit writes when it refuses something
    Limit("limit_log_interval", _seconds_min_1, (1, 3600)),
)

MUX_LIMITS = (
    Limit("maxsessions_per_source", positive, (2, 1_000_000)),
    Limit("accept_rate_per_source", positive, (1, 1_000_000)),
    Limit("handshake_timeout", _seconds_min_1, (2, 300)),
    Limit("link_flush_delay_us", _microseconds, (0, 5000)),
)


@dataclass(frozen=True)
class ServerLimits:
    """``iim_server.*`` limits (conf/iim.conf says the same, for operators)."""

    max_xmlns_per_stanza: int = 64
    """Namespace declarations in one stanza (all its elements together), and
    on one stream header; more end the stream with policy-violation."""
    max_auth_attempts: int = 3
    """SASL attempts on one connection, failures and aborts alike; then the
    stream ends with policy-violation."""
    max_pending_verifies: int = 8
    """Dialback verifications (XEP-0220 db:result/db:verify) one incoming s2s
    stream may have waiting; more are answered with an error, not sent on."""
    max_pending_verifies_total: int = 512
    """The same, all s2s streams together."""
    max_unauthenticated_per_source: int = 50
    """Connections still negotiating from one source (direct or through the
    multiplexor); more are refused with policy-violation."""
    accept_rate_per_source: int = 20
    """New connections per second from one source (bursts of twice that)."""
    s2s_connect_rate: int = 20
    """New outgoing s2s connection attempts per second, all domains together;
    stanzas beyond wait in their domain's queue."""
    s2s_retry_delay: int = 30
    """Seconds after a failed connection to a domain during which it is not
    tried again: stanzas for it bounce with remote-server-not-found."""
    offline_max_messages: int = 1000
    """Messages stored for one user while offline."""
    offline_quota: int = 10 * 1024 * 1024
    """Bytes stored for one user while offline."""
    offline_quota_per_sender: int = 1024 * 1024
    """Bytes one sender may have in one user's offline store."""
    offline_batch: int = 50
    """Offline messages delivered per batch at login; the next batch waits for
    the client to read (and for other users' turn)."""
    max_backlog: int = 1024 * 1024
    """Bytes waiting for a client that does not read before its session ends
    (what it had not received goes to offline storage)."""
    max_resources: int = 10
    """Sessions (resources) of one account at once; one more is refused with
    resource-constraint (RFC 6120 §7.6.2.1)."""
    sm_resume_timeout: int = 300
    """Seconds a XEP-0198 session whose connection was lost stays (available,
    its stanzas queued within max_backlog) for the client to resume; then what
    it had not acknowledged goes to offline storage. 0: no resumption (acks
    only). Its detached sessions count within max_resources."""
    max_roster_items: int = 1000
    """Contacts in one roster."""
    max_roster_item_size: int = 4096
    """Bytes of one roster item (name and groups included)."""
    auth_failure_delay: int = 1
    """Seconds before a failed authentication is answered (valid logins are
    never delayed)."""
    auth_failure_window: int = 600
    """Seconds over which failed authentications are counted."""
    auth_failures_per_account: int = 10
    """Failed authentications for one account within the window; then its
    logins get temporary-auth-failure until the window moves on."""
    auth_failures_per_source: int = 50
    """Failed authentications from one source within the window, likewise."""
    muxlink_max_sessions: int = 10_000
    """Sessions one multiplexor link may hold at once; an OPEN beyond closes that
    link with LINKCLOSE overload (its sessions end; other links are unaffected).
    One link carries at most its mux process's iim_mux.maxsessions (2000 by
    default, shared by iim_mux.maxthreads links): keep this above it."""
    muxlink_open_rate: int = 1000
    """OPENs per second on one multiplexor link (bursts of twice that, so a whole
    default mux process may reconnect at once); beyond, the link is closed with
    LINKCLOSE overload."""
    limit_log_interval: int = 60
    """Seconds between two log lines about the same limit (each line counts
    the refusals since the last)."""


@dataclass(frozen=True)
class MuxLimits:
    """``iim_mux.*`` limits."""

    maxsessions_per_source: int = 500
    """Client connections from one source per multiplexor process (mind NAT:
    a whole office may come from one address)."""
    accept_rate_per_source: int = 50
    """New client connections per second from one source (bursts of twice that)."""
    handshake_timeout: int = 10
    """Seconds a legacy-SSL client (``iim_mux.usessl``) has from its connection
    to the end of its TLS handshake, its first byte included; then it is closed
    and nothing has gone to the server. It holds one of maxsessions and of
    maxsessions_per_source meanwhile. Unused when usessl is off."""
    link_flush_delay_us: int = 1000
    """Microseconds a busy relay thread lets pass between its event-loop turns,
    so that one wakeup serves what many clients and the server sent meanwhile
    and their bytes leave for the server in one send(): the most a byte waits
    per hop. Only while the thread is busy enough for the pause to pay (a few
    round trips per delay, not bulk transfers: iim/_fastmux.pyx, "Pacing"); a
    quiet or lightly loaded relay relays at once. 0: never pause."""


def defaults(dataclass_) -> dict[str, str]:
    """Each limit's default as iim.conf would spell it."""
    return {f.name: str(f.default) for f in fields(dataclass_)}
