"""What the server keeps across restarts: accounts, rosters, offline messages.

    storage = Storage.open("/var/lib/iim/iim.db")
    storage.add_user("alice", "correct horse")
    auth = ServerAuth(storage.credentials, "example.com", secret=storage.server_secret())

Theory of operation
-------------------
One SQLite file (stdlib ``sqlite3``). Accounts hold SCRAM credentials for
SCRAM-SHA-1 and SCRAM-SHA-256 (``iim.xmpp.sasl``), never a password: PLAIN is
verified against them too. Rosters follow RFC 6121 §2 with a version per user
for roster versioning (XEP-0237). Offline messages (XEP-0160) are the stanza
bytes exactly as the server will send them, oldest first, at most
``offline_limit`` per user.

Usernames are prepared localparts (``iim.xmpp.jid.prepare_localpart``): the
caller prepares, this module only checks that ``username`` is already in
canonical form and refuses it otherwise, so "Alice" can never become a second
account beside "alice".

Durability. The journal is a write-ahead log (WAL): readers never block the
writer, so ``python -m iim.admin user add`` works while the server runs (each
side waits up to ``BUSY_TIMEOUT_MS`` for the other's lock). ``synchronous`` is
FULL, not NORMAL: with NORMAL a WAL commit reaches the disk only at the next
checkpoint, and a power cut could lose an offline message the server has
already taken off the sender's stream, which nobody would ever resend. FULL
costs one fsync per write transaction; writes here are rare next to reads.
Offline message ids come from AUTOINCREMENT, so an id is never reused: a
``delete_offline`` with a stale id list cannot delete a newer message.

Roster versions come from one counter shared by all users, stored in the
database. A user deleted and created again therefore never sees a version he
had before, so a client's cached roster cannot be mistaken for the new one.

Threads. A ``Storage`` belongs to the thread that opened it (the server's
asyncio thread; sqlite3 enforces this). Each call is one short transaction and
blocks that thread for its duration: milliseconds, except ``add_user`` and
``set_password``, which run PBKDF2 twice (before taking the write lock).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from iim.xmpp.jid import InvalidJID, prepare_localpart
from iim.xmpp.sasl import SCRAM_MECHANISMS, Mechanism, ScramCredentials, derive_credentials

SCHEMA_VERSION = 1
DEFAULT_OFFLINE_LIMIT = 1000
BUSY_TIMEOUT_MS = 5000


class StorageError(Exception):
    """The database cannot do what was asked; the message is one line."""


class UserExists(StorageError):
    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} already exists")


class NoSuchUser(StorageError):
    def __init__(self, username: str) -> None:
        super().__init__(f"no such user {username!r}")


class StorageFull(StorageError):
    """The user's offline store holds ``limit`` messages already (XEP-0160 §3)."""

    def __init__(self, username: str, limit: int) -> None:
        super().__init__(f"offline storage of {username!r} is full ({limit} messages)")


class InvalidUsername(StorageError, ValueError):
    """Not a prepared localpart."""


class InvalidPassword(StorageError, ValueError):
    """Empty, or refused by SASLprep; the message never contains the password."""


class Subscription(enum.Enum):
    """The roster item's subscription state (RFC 6121 §2.1.2.5)."""

    NONE = "none"
    TO = "to"
    FROM = "from"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class RosterItem:
    """One contact in a user's roster (RFC 6121 §2.1.2).

    ``jid`` is the contact's prepared bare JID; ``ask`` is True while an
    outbound subscription request is pending (``ask='subscribe'``).
    """

    jid: str
    name: str | None = None
    subscription: Subscription = Subscription.NONE
    ask: bool = False
    groups: tuple[str, ...] = ()


_SCHEMA_V1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    """CREATE TABLE users (
        username TEXT PRIMARY KEY,
        roster_version INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE credentials (
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        mechanism TEXT NOT NULL,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key BLOB NOT NULL,
        server_key BLOB NOT NULL,
        PRIMARY KEY (username, mechanism))""",
    """CREATE TABLE roster_items (
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        jid TEXT NOT NULL,
        name TEXT,
        subscription TEXT NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
        ask INTEGER NOT NULL CHECK (ask IN (0, 1)),
        groups TEXT NOT NULL,
        PRIMARY KEY (username, jid))""",
    """CREATE TABLE offline_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        stanza BLOB NOT NULL)""",
    "CREATE INDEX offline_by_user ON offline_messages (username, id)",
    "INSERT INTO meta VALUES ('roster_sequence', 0)",
    "INSERT INTO schema_version VALUES (1)",
)

#: _MIGRATIONS[n] takes a database from schema version n to n + 1.
_MIGRATIONS = (_SCHEMA_V1,)


class Storage:
    """The server's database. Build one with ``Storage.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, offline_limit: int) -> None:
        self._db = connection
        self.path = path
        self.offline_limit = offline_limit

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True,
             offline_limit: int = DEFAULT_OFFLINE_LIMIT) -> "Storage":
        """Open (with ``create``, create) the database and bring its schema up to date."""
        path = Path(path)
        if not create and not path.exists():
            raise StorageError(f"{path}: no such database")
        try:
            storage = cls(_connect(path), path, offline_limit)
        except sqlite3.Error as err:
            raise StorageError(f"{path}: cannot open the database: {err}") from None
        try:
            storage._migrate()
        except BaseException as err:
            storage.close()
            if isinstance(err, sqlite3.Error):
                raise StorageError(f"{path}: cannot use the database: {err}") from None
            raise
        return storage

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Schema --------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write():
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise StorageError(f"{self.path}: schema version {version} is newer than "
                                   f"this program's ({SCHEMA_VERSION}); upgrade iim")
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            if version == 0:
                self._set_meta("sasl_secret", secrets.token_bytes(32))

    def _schema_version(self) -> int:
        if not self._one("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'"):
            return 0
        return self._one("SELECT version FROM schema_version")[0]

    def server_secret(self) -> bytes:
        """32 random bytes made with the database: ``ServerAuth(secret=...)``."""
        return self._one("SELECT value FROM meta WHERE key = 'sasl_secret'")[0]

    # Users ---------------------------------------------------------------

    def add_user(self, username: str, password: str) -> None:
        """Create an account; raises ``UserExists``, ``InvalidUsername``, ``InvalidPassword``."""
        _check_username(username)
        credentials = _derive_all(password)
        with self._write():
            if self.user_exists(username):
                raise UserExists(username)
            self._db.execute("INSERT INTO users (username) VALUES (?)", (username,))
            self._put_credentials(username, credentials)

    def set_password(self, username: str, password: str) -> None:
        """Replace the credentials (fresh salts); raises ``NoSuchUser``."""
        _check_username(username)
        credentials = _derive_all(password)
        with self._write():
            self._require_user(username)
            self._db.execute("DELETE FROM credentials WHERE username = ?", (username,))
            self._put_credentials(username, credentials)

    def delete_user(self, username: str) -> None:
        """Remove the account with its roster and offline messages."""
        with self._write():
            cursor = self._db.execute("DELETE FROM users WHERE username = ?", (username,))
            if cursor.rowcount == 0:
                raise NoSuchUser(username)

    def list_users(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT username FROM users ORDER BY username")]

    def user_exists(self, username: str) -> bool:
        return self._one("SELECT 1 FROM users WHERE username = ?", username) is not None

    def credentials(self, username: str) -> dict[Mechanism, ScramCredentials] | None:
        """The user's SCRAM credentials by mechanism; None when there is no such user.

        This is the ``lookup`` of ``iim.xmpp.sasl.ServerAuth``.
        """
        rows = self._db.execute(
            "SELECT mechanism, salt, iterations, stored_key, server_key FROM credentials "
            "WHERE username = ?", (username,)).fetchall()
        if not rows and not self.user_exists(username):
            return None
        return dict(_credentials_from_row(row) for row in rows if _known_mechanism(row[0]))

    def _put_credentials(self, username: str, credentials: Iterable[ScramCredentials]) -> None:
        self._db.executemany(
            "INSERT INTO credentials VALUES (?, ?, ?, ?, ?, ?)",
            [(username, c.mechanism.value, c.salt, c.iterations, c.stored_key, c.server_key)
             for c in credentials])

    def _require_user(self, username: str) -> None:
        if not self.user_exists(username):
            raise NoSuchUser(username)

    # Rosters (RFC 6121 §2, XEP-0237) ------------------------------------

    def roster(self, username: str) -> list[RosterItem]:
        """The user's roster items, ordered by JID."""
        self._require_user(username)
        rows = self._db.execute(
            "SELECT jid, name, subscription, ask, groups FROM roster_items "
            "WHERE username = ? ORDER BY jid", (username,))
        return [_roster_item_from_row(row) for row in rows]

    def roster_version(self, username: str) -> int:
        """The XEP-0237 version of the user's roster: it changes with every change."""
        row = self._one("SELECT roster_version FROM users WHERE username = ?", username)
        if row is None:
            raise NoSuchUser(username)
        return row[0]

    def set_roster_item(self, username: str, item: RosterItem) -> int:
        """Add or replace the item with ``item.jid``; return the new roster version."""
        with self._write():
            self._require_user(username)
            self._db.execute(
                "INSERT OR REPLACE INTO roster_items VALUES (?, ?, ?, ?, ?, ?)",
                (username, item.jid, item.name, Subscription(item.subscription).value,
                 int(bool(item.ask)), json.dumps(list(item.groups))))
            return self._bump_roster_version(username)

    def remove_roster_item(self, username: str, jid: str) -> int | None:
        """Remove the item; return the new version, or None when there was none."""
        with self._write():
            self._require_user(username)
            cursor = self._db.execute(
                "DELETE FROM roster_items WHERE username = ? AND jid = ?", (username, jid))
            if cursor.rowcount == 0:
                return None
            return self._bump_roster_version(username)

    def _bump_roster_version(self, username: str) -> int:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'roster_sequence'")
        version = self._one("SELECT value FROM meta WHERE key = 'roster_sequence'")[0]
        self._db.execute("UPDATE users SET roster_version = ? WHERE username = ?",
                         (version, username))
        return version

    # Offline messages (XEP-0160) -----------------------------------------

    def store_offline(self, username: str, stanza: bytes) -> int:
        """Keep ``stanza`` for ``username``; return its id. Raises ``StorageFull``."""
        with self._write():
            self._require_user(username)
            count = self._one("SELECT count(*) FROM offline_messages WHERE username = ?",
                              username)[0]
            if count >= self.offline_limit:
                raise StorageFull(username, self.offline_limit)
            cursor = self._db.execute(
                "INSERT INTO offline_messages (username, stanza) VALUES (?, ?)",
                (username, bytes(stanza)))
            return cursor.lastrowid

    def store_offline_many(self, username: str, stanzas: list[bytes]) -> int:
        """Keep as many of ``stanzas`` as the limit allows, in order, in one
        transaction (one disk sync for a whole backlog); return how many."""
        with self._write():
            self._require_user(username)
            count = self._one("SELECT count(*) FROM offline_messages WHERE username = ?",
                              username)[0]
            room = max(0, self.offline_limit - count)
            self._db.executemany(
                "INSERT INTO offline_messages (username, stanza) VALUES (?, ?)",
                [(username, bytes(stanza)) for stanza in stanzas[:room]])
            return min(room, len(stanzas))

    def offline_messages(self, username: str, prefix: bytes = b"") -> list[tuple[int, bytes]]:
        """The user's stored stanzas as (id, stanza), oldest first; with
        ``prefix``, only those starting with it, filtered in SQLite (so asking
        for the few stored ``<presence`` requests never loads the messages)."""
        self._require_user(username)
        rows = self._db.execute(
            "SELECT id, stanza FROM offline_messages WHERE username = ? "
            "AND substr(stanza, 1, ?) = ? ORDER BY id",
            (username, len(prefix), prefix))
        return [(row[0], bytes(row[1])) for row in rows]

    def delete_offline(self, username: str, ids: Iterable[int]) -> int:
        """Delete those of ``ids`` that belong to ``username``; return how many."""
        with self._write():
            before = self._db.total_changes
            self._db.executemany(
                "DELETE FROM offline_messages WHERE username = ? AND id = ?",
                [(username, int(message_id)) for message_id in ids])
            return self._db.total_changes - before

    # Plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _one(self, query: str, *parameters) -> tuple | None:
        return self._db.execute(query, parameters).fetchone()

    def _set_meta(self, key: str, value) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _connect(path: Path) -> sqlite3.Connection:
    """Autocommit mode (transactions are explicit), WAL, FULL sync, foreign keys."""
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        db.close()
        raise
    return db


def _check_username(username: str) -> None:
    try:
        prepared = prepare_localpart(username)
    except InvalidJID as err:
        raise InvalidUsername(f"bad username {username!r}: {err}") from None
    if prepared != username:
        raise InvalidUsername(f"bad username {username!r}: not in canonical form "
                              f"(that would be {prepared!r})")


def _derive_all(password: str) -> list[ScramCredentials]:
    try:
        return [derive_credentials(password, mechanism) for mechanism in SCRAM_MECHANISMS]
    except ValueError as err:
        raise InvalidPassword(f"password not usable: {err}") from None


def _known_mechanism(name: str) -> bool:
    return name in {mechanism.value for mechanism in SCRAM_MECHANISMS}


def _credentials_from_row(row: tuple) -> tuple[Mechanism, ScramCredentials]:
    mechanism = Mechanism(row[0])
    return mechanism, ScramCredentials(mechanism, bytes(row[1]), row[2], bytes(row[3]),
                                       bytes(row[4]))


def _roster_item_from_row(row: tuple) -> RosterItem:
    jid, name, subscription, ask, groups = row
    return RosterItem(jid, name, Subscription(subscription), bool(ask), tuple(json.loads(groups)))
