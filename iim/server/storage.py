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
bytes exactly as the server will send them, oldest first.

Offline quotas (issue 11). A user's offline store holds at most
``offline_max_messages`` messages and ``offline_quota`` bytes, of which one
sender (a bare JID) may hold ``offline_quota_per_sender``; a message beyond
any of them raises ``StorageFull`` naming the limit, and the router bounces
it. Checking must cost the same whatever is stored, so nothing is counted or
re-read per message: each row carries its ``size`` and ``sender``, and two
triggers keep the sums up to date on every insert and delete, per recipient
in ``users`` (``offline_count``, ``offline_bytes``) and per (recipient,
sender) in ``offline_senders``. Rows are never updated, only inserted and
deleted, so these two triggers are all the bookkeeping there is.

Pending subscription requests (RFC 6121 §3.1.3) are not messages: they live
in ``subscription_requests``, one row per (user, contact) by a unique key, so
a repeated request can never pile up and finding a contact's request is one
index lookup. They are bounded apart from the messages (at most
``offline_max_messages`` contacts and ``offline_quota`` bytes per user), so
requests can never crowd out messages, nor messages requests.

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

from xml.etree import ElementTree

from iim.conf.limits import ServerLimits
from iim.xmpp.jid import JID, InvalidJID, prepare_localpart
from iim.xmpp.sasl import SCRAM_MECHANISMS, Mechanism, ScramCredentials, derive_credentials

SCHEMA_VERSION = 2
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
    """Storing would take the user's offline store beyond a limit (XEP-0160 §2).

    ``param`` is the limit's name (``offline_max_messages``, ``offline_quota``,
    ``offline_quota_per_sender``), for the log line and the error text.
    """

    def __init__(self, username: str, param: str, detail: str) -> None:
        super().__init__(f"offline storage of {username!r} is full ({detail})")
        self.param = param


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


def _split_offline_rows(db: sqlite3.Connection) -> None:
    """Version 1 kept subscription requests among the messages and knew no
    senders: move each request to its own table (the first per contact stays,
    as the server kept only one), and give each message its sender."""
    rows = db.execute("SELECT id, username, stanza FROM offline_messages ORDER BY id").fetchall()
    for row_id, username, data in rows:
        tag, sender, kind = _outline(bytes(data))
        if tag == "presence" and kind == "subscribe" and sender:
            db.execute("INSERT OR IGNORE INTO subscription_requests (username, contact, stanza, "
                       "size) VALUES (?, ?, ?, ?)", (username, sender, data, len(data)))
        if tag == "presence":
            db.execute("DELETE FROM offline_messages WHERE id = ?", (row_id,))
        else:
            db.execute("UPDATE offline_messages SET sender = ? WHERE id = ?", (sender, row_id))


_SCHEMA_V2 = (
    "ALTER TABLE offline_messages ADD COLUMN sender TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE offline_messages ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    "UPDATE offline_messages SET size = length(stanza)",
    "ALTER TABLE users ADD COLUMN offline_count INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE users ADD COLUMN offline_bytes INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE offline_senders (
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        sender TEXT NOT NULL,
        messages INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (username, sender)) WITHOUT ROWID""",
    """CREATE TABLE subscription_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        contact TEXT NOT NULL,
        stanza BLOB NOT NULL,
        size INTEGER NOT NULL,
        UNIQUE (username, contact))""",
    "CREATE INDEX requests_by_user ON subscription_requests (username, size)",
    _split_offline_rows,
    """UPDATE users SET
        offline_count = (SELECT count(*) FROM offline_messages m WHERE m.username = users.username),
        offline_bytes = (SELECT total(size) FROM offline_messages m WHERE m.username = users.username)""",
    """INSERT INTO offline_senders SELECT username, sender, count(*), sum(size)
        FROM offline_messages GROUP BY username, sender""",
    """CREATE TRIGGER offline_added AFTER INSERT ON offline_messages BEGIN
        UPDATE users SET offline_count = offline_count + 1,
                         offline_bytes = offline_bytes + NEW.size
            WHERE username = NEW.username;
        INSERT INTO offline_senders VALUES (NEW.username, NEW.sender, 1, NEW.size)
            ON CONFLICT (username, sender) DO UPDATE
            SET messages = messages + 1, bytes = bytes + NEW.size;
    END""",
    """CREATE TRIGGER offline_removed AFTER DELETE ON offline_messages BEGIN
        UPDATE users SET offline_count = offline_count - 1,
                         offline_bytes = offline_bytes - OLD.size
            WHERE username = OLD.username;
        UPDATE offline_senders SET messages = messages - 1, bytes = bytes - OLD.size
            WHERE username = OLD.username AND sender = OLD.sender;
        DELETE FROM offline_senders
            WHERE username = OLD.username AND sender = OLD.sender AND messages <= 0;
    END""",
    "UPDATE schema_version SET version = 2",
)

#: _MIGRATIONS[n] takes a database from schema version n to n + 1; a step is
#: an SQL statement, or a function of the connection for what SQL cannot do.
_MIGRATIONS = (_SCHEMA_V1, _SCHEMA_V2)


class Storage:
    """The server's database. Build one with ``Storage.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, limits: ServerLimits) -> None:
        self._db = connection
        self.path = path
        self.limits = limits
        """The offline quotas (``offline_max_messages``, ``offline_quota``,
        ``offline_quota_per_sender``); replaceable while open."""

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True,
             limits: ServerLimits = ServerLimits()) -> "Storage":
        """Open (with ``create``, create) the database and bring its schema up to date."""
        path = Path(path)
        if not create and not path.exists():
            raise StorageError(f"{path}: no such database")
        if create:
            _create_private(path)
        try:
            storage = cls(_connect(path), path, limits)
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
                    if callable(statement):
                        statement(self._db)
                    else:
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

    def store_offline(self, username: str, stanza: bytes, sender: str = "") -> int:
        """Keep ``stanza`` from ``sender`` (a bare JID) for ``username``; return
        its id. Raises ``StorageFull`` when a quota would be exceeded."""
        with self._write():
            self._check_room(username, sender, len(stanza))
            return self._insert_offline(username, sender, stanza)

    def store_offline_many(self, username: str, stanzas: list[tuple[str, bytes]]) -> list[bool]:
        """Keep each (sender, stanza) that fits, in order, in one transaction
        (one disk sync for a whole backlog); return which were kept."""
        kept = []
        with self._write():
            for sender, stanza in stanzas:
                try:
                    self._check_room(username, sender, len(stanza))
                except StorageFull:
                    kept.append(False)
                    continue
                self._insert_offline(username, sender, stanza)
                kept.append(True)
        return kept

    def offline_messages(self, username: str) -> list[tuple[int, bytes]]:
        """All of the user's stored messages as (id, stanza), oldest first."""
        return self.offline_batch(username, limit=-1)

    def offline_batch(self, username: str, *, after: int = 0, limit: int,
                      max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """The oldest stored messages with an id above ``after``: at most
        ``limit`` (-1: all) and, past the first, at most ``max_bytes`` together."""
        self._require_user(username)
        rows = self._db.execute(
            "SELECT id, stanza FROM offline_messages WHERE username = ? AND id > ? "
            "ORDER BY id LIMIT ?", (username, after, limit))
        batch, total = [], 0
        for message_id, stanza in rows:
            total += len(stanza)
            if batch and max_bytes is not None and total > max_bytes:
                break
            batch.append((message_id, bytes(stanza)))
        return batch

    def offline_usage(self, username: str, sender: str | None = None) -> tuple[int, int]:
        """(messages, bytes) stored for the user; with ``sender``, from that sender."""
        if sender is None:
            row = self._one("SELECT offline_count, offline_bytes FROM users WHERE username = ?",
                            username)
        else:
            row = self._one("SELECT messages, bytes FROM offline_senders "
                            "WHERE username = ? AND sender = ?", username, sender)
        return (row[0], row[1]) if row else (0, 0)

    def delete_offline(self, username: str, ids: Iterable[int]) -> int:
        """Delete those of ``ids`` that belong to ``username``; return how many."""
        with self._write():
            cursor = self._db.executemany(   # rowcount: not the triggers' changes
                "DELETE FROM offline_messages WHERE username = ? AND id = ?",
                [(username, int(message_id)) for message_id in ids])
            return max(cursor.rowcount, 0)

    def _check_room(self, username: str, sender: str, size: int) -> None:
        row = self._one("SELECT offline_count, offline_bytes FROM users WHERE username = ?",
                        username)
        if row is None:
            raise NoSuchUser(username)
        limits = self.limits
        count, total = row
        if count >= limits.offline_max_messages:
            raise StorageFull(username, "offline_max_messages",
                              f"{limits.offline_max_messages} messages")
        if total + size > limits.offline_quota:
            raise StorageFull(username, "offline_quota", f"{limits.offline_quota} bytes")
        from_sender = self.offline_usage(username, sender)[1]
        if from_sender + size > limits.offline_quota_per_sender:
            raise StorageFull(username, "offline_quota_per_sender",
                              f"{limits.offline_quota_per_sender} bytes from {sender or '?'}")

    def _insert_offline(self, username: str, sender: str, stanza: bytes) -> int:
        cursor = self._db.execute(
            "INSERT INTO offline_messages (username, stanza, sender, size) VALUES (?, ?, ?, ?)",
            (username, bytes(stanza), sender, len(stanza)))
        return cursor.lastrowid

    # Pending subscription requests (RFC 6121 §3.1.3) --------------------------

    def put_subscription_request(self, username: str, contact: str, stanza: bytes) -> bool:
        """Keep ``contact``'s request to ``username`` until it is answered; True
        when stored, False when one from that contact is kept already (the
        first stays). Raises ``StorageFull`` when the user has no room for
        another contact's request."""
        with self._write():
            self._require_user(username)
            if self.subscription_request(username, contact) is not None:
                return False
            count, total = self._one("SELECT count(*), total(size) FROM subscription_requests "
                                     "WHERE username = ?", username)
            limits = self.limits
            if count >= limits.offline_max_messages:
                raise StorageFull(username, "offline_max_messages",
                                  f"{limits.offline_max_messages} subscription requests")
            if total + len(stanza) > limits.offline_quota:
                raise StorageFull(username, "offline_quota",
                                  f"{limits.offline_quota} bytes of subscription requests")
            self._db.execute("INSERT INTO subscription_requests (username, contact, stanza, size) "
                             "VALUES (?, ?, ?, ?)", (username, contact, bytes(stanza), len(stanza)))
            return True

    def subscription_request(self, username: str, contact: str) -> bytes | None:
        """The stored request from ``contact`` (a bare JID), if any."""
        row = self._one("SELECT stanza FROM subscription_requests "
                        "WHERE username = ? AND contact = ?", username, contact)
        return bytes(row[0]) if row else None

    def subscription_requests(self, username: str) -> list[tuple[str, bytes]]:
        """Every pending request to the user as (contact, stanza), oldest first."""
        self._require_user(username)
        rows = self._db.execute("SELECT contact, stanza FROM subscription_requests "
                                "WHERE username = ? ORDER BY id", (username,))
        return [(contact, bytes(stanza)) for contact, stanza in rows]

    def delete_subscription_request(self, username: str, contact: str) -> bool:
        """Forget ``contact``'s request (answered or withdrawn); True if there was one."""
        with self._write():
            cursor = self._db.execute("DELETE FROM subscription_requests "
                                      "WHERE username = ? AND contact = ?", (username, contact))
            return cursor.rowcount > 0

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


def _create_private(path: Path) -> None:
    """Make a new database file mode 0600 before SQLite opens it (SQLite would
    make it 0644 less the umask): it holds SCRAM verifiers, rosters and
    offline messages. SQLite gives its -wal, -shm and -journal files the
    database's mode, so they are 0600 too. An existing file is left as it is
    (a wider mode draws the start-up warning of passwords.secret_file_warnings)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return                          # there already, or SQLite says why it cannot open it
    os.close(fd)


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


def _outline(stanza: bytes) -> tuple[str, str, str | None]:
    """(element name, sender's bare JID or "", type) of a stored stanza; for
    the schema migration only, which has no router to parse with."""
    try:
        element = ElementTree.fromstring(stanza)
        sender = str(JID.parse(element.get("from")).bare) if element.get("from") else ""
    except (ElementTree.ParseError, InvalidJID):
        return "", "", None
    return element.tag.rpartition("}")[2], sender, element.get("type")


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
