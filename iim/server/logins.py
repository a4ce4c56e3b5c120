"""Login throttling (issue 11, item 7): failed authentications counted, and
logins refused unchecked once there were too many.

Theory of operation
-------------------
A failed SASL exchange on credentials (``not-authorized``) is counted under
three keys, each in a fixed window of ``auth_failure_window`` seconds that
starts with the key's first failure:

- the *source* (``iim.server.quota.source_of``: an IPv4 address, an IPv6
  /64): past ``auth_failures_per_source`` failures, every login from that
  source is refused, whatever the account;
- the *account from that source*: past ``auth_failures_per_account``
  failures, that account is refused from that source;
- the *account from anywhere*: past ``ACCOUNT_CEILING`` times
  ``auth_failures_per_account``, that account is refused from every source
  but the few it last logged in from successfully (``KNOWN_SOURCES``).

"Refused" means ``temporary-auth-failure`` (RFC 6120 §6.5.11) as soon as
the peer names the account, before any lookup or password check
(``ServerAuth(admit=...)``), until the window moves on.

Why not a plain per-account lockout. Prosody (mod_limit_auth) and ejabberd
(mod_fail2ban) both throttle by source and never lock an account, because a
lock anyone can trigger is a denial of service against the account's owner:
ten wrong passwords from anywhere would keep alice out. Here one source can
only lock itself out (of that account, or of everything); a guessing attack
spread over many sources is still capped by the account-wide ceiling, ten
times higher, which in turn cannot lock out the owner's own devices, known
from their last successful logins. A guesser thus gets at most
``auth_failures_per_account`` tries per account and source, and
``ACCOUNT_CEILING`` times that per account in all, per window.

Memory. Each table holds one entry per key that failed within the window,
in the order the windows started; expired entries are dropped from the front
as new failures come (amortized O(1)), and no table grows past
``MAX_ENTRIES`` (the oldest go first). Known sources: ``KNOWN_SOURCES`` per
account that ever logged in. Time is passed in (``now``, monotonic seconds):
no clock here.
"""

from __future__ import annotations

from dataclasses import dataclass

from iim.conf.limits import ServerLimits

__all__ = ["ACCOUNT_CEILING", "LoginThrottle"]

ACCOUNT_CEILING = 10           # times auth_failures_per_account: the account-wide ceiling
KNOWN_SOURCES = 4              # sources remembered per account (successful logins)
MAX_ENTRIES = 100_000          # per table

PER_SOURCE = "iim_server.auth_failures_per_source"
PER_ACCOUNT = "iim_server.auth_failures_per_account"


@dataclass
class _Window:
    start: float
    failures: int


class _Counts:
    """Failures per key within a fixed window each; oldest windows first."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._entries: dict[object, _Window] = {}

    def add(self, key: object, now: float) -> None:
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = _Window(now, 1)
        else:
            entry.failures += 1

    def count(self, key: object, now: float) -> int:
        entry = self._entries.get(key)
        if entry is None or now - entry.start >= self.window:
            return 0
        return entry.failures

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if now - entries[key].start < self.window:
                return
            del entries[key]


class LoginThrottle:
    """``refusal`` before a login is checked; ``failed`` / ``succeeded`` after."""

    def __init__(self, limits: ServerLimits) -> None:
        self.per_source = limits.auth_failures_per_source
        self.per_account = limits.auth_failures_per_account
        self._sources = _Counts(limits.auth_failure_window)
        self._pairs = _Counts(limits.auth_failure_window)
        self._accounts = _Counts(limits.auth_failure_window)
        self._known: dict[str, tuple[str, ...]] = {}

    def refusal(self, account: str, source: str, now: float) -> str | None:
        """The limit (its parameter name) that refuses this login now, or None."""
        if self._sources.count(source, now) >= self.per_source:
            return PER_SOURCE
        if self._pairs.count((account, source), now) >= self.per_account:
            return PER_ACCOUNT
        if (self._accounts.count(account, now) >= ACCOUNT_CEILING * self.per_account
                and source not in self._known.get(account, ())):
            return PER_ACCOUNT
        return None

    def failed(self, account: str | None, source: str, now: float) -> None:
        """A login failed on its credentials (``account`` None: never named)."""
        self._sources.add(source, now)
        if account is not None:
            self._pairs.add((account, source), now)
            self._accounts.add(account, now)

    def succeeded(self, account: str, source: str) -> None:
        """Remember ``source`` as one of the account's own (most recent first)."""
        known = self._known.get(account, ())
        if known[:1] != (source,):
            self._known[account] = (source, *(s for s in known if s != source))[:KNOWN_SOURCES]

    def __len__(self) -> int:
        """Entries held (for tests and status)."""
        return len(self._sources) + len(self._pairs) + len(self._accounts)
