"""The server's SQLite database.

Accounts, rosters (RFC 6121 §2, XEP-0237 versions), offline messages (XEP-0160).

Every test uses a real database file in tmp_path; "reopen" means a new
connection to the same file, as after a server restart.
"""

import sqlite3

import pytest

from iim.server.storage import (
    InvalidPassword, InvalidUsername, NoSuchUser, RosterItem, SCHEMA_VERSION, Storage,
    StorageError, StorageFull, Subscription, UserExists,
)
from iim.xmpp.sasl import (
    Challenge, ClientAuth, Mechanism, ServerAuth, Success, derive_credentials, offered_mechanisms,
)

PASSWORD = "Tr0ub4dor&3"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "iim.db"


@pytest.fixture
def storage(path):
    with Storage.open(path) as storage:
        yield storage


def reopen(path, **options):
    return Storage.open(path, **options)


def logs_in(storage, username, password, mechanism):
    """A full SASL exchange against the stored credentials (PLAIN under TLS)."""
    auth = ServerAuth(storage.credentials, "example.com", tls=True,
                      secret=storage.server_secret())
    client = ClientAuth(username, password, mechanism)
    step = auth.start(mechanism, client.start())
    while isinstance(step, Challenge):
        step = auth.respond(client.respond(step.data))
    return isinstance(step, Success)


# ---------------------------------------------------------------------------
# Opening


def test_new_database_has_schema_wal_and_full_sync(storage, path):
    assert path.exists()
    assert storage._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage._db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    assert storage._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_missing_database_is_not_created_on_request(tmp_path):
    with pytest.raises(StorageError, match="no such database"):
        Storage.open(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_unusable_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=f"{junk}: cannot"):
        Storage.open(junk)
    with pytest.raises(StorageError, match="cannot open"):
        Storage.open(tmp_path / "no" / "such" / "folder" / "iim.db")


def test_newer_schema_is_refused(path):
    Storage.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this program"):
        Storage.open(path)


def test_server_secret_is_made_once_and_kept(storage, path):
    secret = storage.server_secret()
    assert len(secret) == 32
    storage.close()
    with reopen(path) as again:
        assert again.server_secret() == secret
    with Storage.open(path.with_name("other.db")) as other:
        assert other.server_secret() != secret


# ---------------------------------------------------------------------------
# Users


def test_add_user_then_log_in_with_every_mechanism(storage):
    storage.add_user("alice", PASSWORD)
    assert storage.user_exists("alice")
    assert set(storage.credentials("alice")) == {Mechanism.SCRAM_SHA_1, Mechanism.SCRAM_SHA_256}
    for mechanism in offered_mechanisms(tls=True):
        assert logs_in(storage, "alice", PASSWORD, mechanism)
        assert not logs_in(storage, "alice", PASSWORD + "!", mechanism)


def test_the_password_is_stored_nowhere(storage, path):
    storage.add_user("alice", PASSWORD)
    storage.set_password("alice", PASSWORD + "-new")
    for file in path.parent.iterdir():
        content = file.read_bytes()
        assert PASSWORD.encode() not in content, file
        assert PASSWORD.encode("utf-16-le") not in content, file


def test_each_credential_has_its_own_salt(storage):
    storage.add_user("alice", PASSWORD)
    storage.add_user("bob", PASSWORD)
    salts = [c.salt for user in ("alice", "bob") for c in storage.credentials(user).values()]
    assert len(set(salts)) == 4


def test_adding_an_existing_user(storage):
    storage.add_user("alice", PASSWORD)
    with pytest.raises(UserExists, match="user 'alice' already exists"):
        storage.add_user("alice", "other")
    assert logs_in(storage, "alice", PASSWORD, Mechanism.SCRAM_SHA_256)


@pytest.mark.parametrize("username, message", [
    ("", "empty"), ("alice@example.com", "forbidden"), ("a/b", "forbidden"),
    ("Alice", "canonical form .*'alice'"),
])
def test_usernames_must_be_prepared_localparts(storage, username, message):
    with pytest.raises(InvalidUsername, match=message):
        storage.add_user(username, PASSWORD)
    assert storage.list_users() == []


@pytest.mark.parametrize("password", ["", "\u00ad", "bell\x07"])
def test_unusable_passwords(storage, password):
    with pytest.raises(InvalidPassword) as info:
        storage.add_user("alice", password)
    assert not storage.user_exists("alice")
    if password:
        assert password not in str(info.value)


def test_set_password(storage):
    storage.add_user("alice", PASSWORD)
    storage.set_password("alice", "n3w")
    assert logs_in(storage, "alice", "n3w", Mechanism.SCRAM_SHA_1)
    assert not logs_in(storage, "alice", PASSWORD, Mechanism.SCRAM_SHA_1)
    with pytest.raises(NoSuchUser, match="no such user 'bob'"):
        storage.set_password("bob", "n3w")


def test_list_users_is_sorted(storage):
    for name in ("carol", "alice", "bob"):
        storage.add_user(name, PASSWORD)
    assert storage.list_users() == ["alice", "bob", "carol"]


def test_credentials_of_unknown_user_is_none(storage):
    assert storage.credentials("nobody") is None
    assert not storage.user_exists("nobody")


def test_delete_user_removes_roster_and_offline_messages(storage, path):
    storage.add_user("alice", PASSWORD)
    storage.set_roster_item("alice", RosterItem("bob@example.com"))
    storage.store_offline("alice", b"<message/>")
    storage.delete_user("alice")
    assert storage.credentials("alice") is None
    with sqlite3.connect(path) as db:
        for table in ("credentials", "roster_items", "offline_messages"):
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    storage.add_user("alice", PASSWORD)
    assert storage.roster("alice") == []
    assert storage.offline_messages("alice") == []


def test_deleting_an_unknown_user(storage):
    with pytest.raises(NoSuchUser):
        storage.delete_user("nobody")


def test_everything_persists_across_reopen(storage, path):
    storage.add_user("alice", PASSWORD)
    item = RosterItem("bob@example.com", "Bob", Subscription.BOTH, False, ("Friends",))
    version = storage.set_roster_item("alice", item)
    message_id = storage.store_offline("alice", b"<message>hi</message>")
    storage.close()
    with reopen(path) as again:
        assert again.list_users() == ["alice"]
        assert logs_in(again, "alice", PASSWORD, Mechanism.SCRAM_SHA_256)
        assert again.roster("alice") == [item]
        assert again.roster_version("alice") == version
        assert again.offline_messages("alice") == [(message_id, b"<message>hi</message>")]


def test_an_admin_connection_and_the_server_see_each_other(storage, path):
    """WAL: `iim.admin user add` works while the server holds the database open."""
    with reopen(path) as admin:
        admin.add_user("alice", PASSWORD)
    assert storage.user_exists("alice")
    assert logs_in(storage, "alice", PASSWORD, Mechanism.SCRAM_SHA_256)


def test_credentials_are_what_derive_credentials_makes(storage):
    storage.add_user("alice", PASSWORD)
    for mechanism, stored in storage.credentials("alice").items():
        again = derive_credentials(PASSWORD, mechanism, stored.salt, stored.iterations)
        assert again == stored


# ---------------------------------------------------------------------------
# Rosters (RFC 6121 §2) and roster versions (XEP-0237)


@pytest.fixture
def alice(storage):
    storage.add_user("alice", PASSWORD)
    return storage


def test_roster_items_round_trip(alice):
    items = [
        RosterItem("bob@example.com", "Bob", Subscription.BOTH, False, ("Friends", "Work")),
        RosterItem("carol@example.org", None, Subscription.NONE, True, ()),
        RosterItem("dave@example.net", "Dave", Subscription.FROM),
    ]
    for item in reversed(items):
        alice.set_roster_item("alice", item)
    assert alice.roster("alice") == items


def test_set_replaces_the_item_with_the_same_jid(alice):
    alice.set_roster_item("alice", RosterItem("bob@example.com", "Bob", ask=True))
    newer = RosterItem("bob@example.com", "Robert", Subscription.TO, False, ("Work",))
    alice.set_roster_item("alice", newer)
    assert alice.roster("alice") == [newer]


def test_roster_version_changes_with_every_change(alice):
    versions = [alice.roster_version("alice")]
    versions.append(alice.set_roster_item("alice", RosterItem("bob@example.com")))
    versions.append(alice.set_roster_item("alice", RosterItem("bob@example.com", "Bob")))
    versions.append(alice.remove_roster_item("alice", "bob@example.com"))
    assert versions == sorted(set(versions))
    assert alice.roster_version("alice") == versions[-1]


def test_removing_an_absent_item_changes_nothing(alice):
    version = alice.set_roster_item("alice", RosterItem("bob@example.com"))
    assert alice.remove_roster_item("alice", "carol@example.com") is None
    assert alice.roster_version("alice") == version


def test_roster_versions_are_never_reused_by_a_new_account_of_the_same_name(alice):
    old = alice.set_roster_item("alice", RosterItem("bob@example.com"))
    alice.delete_user("alice")
    alice.add_user("alice", PASSWORD)
    assert alice.set_roster_item("alice", RosterItem("eve@example.com")) > old


def test_roster_versions_are_per_user(alice):
    alice.add_user("bob", PASSWORD)
    bob_version = alice.roster_version("bob")
    alice.set_roster_item("alice", RosterItem("carol@example.com"))
    assert alice.roster_version("bob") == bob_version


def test_roster_of_unknown_user(storage):
    for call in (lambda: storage.roster("nobody"), lambda: storage.roster_version("nobody"),
                 lambda: storage.set_roster_item("nobody", RosterItem("a@b")),
                 lambda: storage.remove_roster_item("nobody", "a@b")):
        with pytest.raises(NoSuchUser):
            call()


# ---------------------------------------------------------------------------
# Offline messages (XEP-0160)


def test_offline_messages_come_back_oldest_first(alice):
    ids = [alice.store_offline("alice", f"<message id='{n}'/>".encode()) for n in range(3)]
    assert alice.offline_messages("alice") == [
        (ids[n], f"<message id='{n}'/>".encode()) for n in range(3)]


def test_delete_offline_deletes_only_the_given_ids_of_that_user(alice):
    alice.add_user("bob", PASSWORD)
    first, second = (alice.store_offline("alice", b"<m1/>"), alice.store_offline("alice", b"<m2/>"))
    bobs = alice.store_offline("bob", b"<b/>")
    assert alice.delete_offline("alice", [first, bobs, 999]) == 1
    assert alice.offline_messages("alice") == [(second, b"<m2/>")]
    assert alice.offline_messages("bob") == [(bobs, b"<b/>")]


def test_offline_ids_are_never_reused(alice):
    last = alice.store_offline("alice", b"<m/>")
    alice.delete_offline("alice", [last])
    assert alice.store_offline("alice", b"<m/>") > last


def test_offline_cap(path):
    with Storage.open(path, offline_limit=3) as storage:
        storage.add_user("alice", PASSWORD)
        ids = [storage.store_offline("alice", b"<m/>") for _ in range(3)]
        with pytest.raises(StorageFull, match=r"offline storage of 'alice' is full \(3 messages\)"):
            storage.store_offline("alice", b"<one too many/>")
        assert len(storage.offline_messages("alice")) == 3
        storage.delete_offline("alice", ids[:1])
        storage.store_offline("alice", b"<fits again/>")


def test_default_offline_cap_is_1000(storage):
    assert storage.offline_limit == 1000


def test_offline_for_unknown_user(storage):
    with pytest.raises(NoSuchUser):
        storage.store_offline("nobody", b"<m/>")
    with pytest.raises(NoSuchUser):
        storage.offline_messages("nobody")


def test_a_failed_write_leaves_nothing_behind(alice, monkeypatch):
    """A transaction is all or nothing: a crash between two inserts stores neither."""
    original = alice._put_credentials

    def half_done(username, credentials):
        original(username, list(credentials)[:1])
        raise RuntimeError("crash in the middle")
    monkeypatch.setattr(alice, "_put_credentials", half_done)
    with pytest.raises(RuntimeError):
        alice.add_user("bob", PASSWORD)
    assert not alice.user_exists("bob")
    with pytest.raises(RuntimeError):
        alice.set_password("alice", "n3w")
    monkeypatch.undo()
    assert logs_in(alice, "alice", PASSWORD, Mechanism.SCRAM_SHA_1)


def test_offline_messages_filtered_by_prefix_in_sqlite(tmp_path):
    with Storage.open(tmp_path / "p.db") as storage:
        storage.add_user("romeo", "pw-romeo-1")
        storage.store_offline("romeo", b"<message><body>big</body></message>")
        request = storage.store_offline("romeo", b"<presence type='subscribe'/>")
        assert storage.offline_messages("romeo", b"<presence") == [
            (request, b"<presence type='subscribe'/>")]
        assert len(storage.offline_messages("romeo")) == 2
