"""The server's SQLite database.

Accounts, rosters (RFC 6121 §2, XEP-0237 versions), offline messages (XEP-0160).

Every test uses a real database file in tmp_path; "reopen" means a new
connection to the same file, as after a server restart.
"""

import sqlite3
from dataclasses import replace

import pytest

from iim.conf.limits import ServerLimits
from iim.server import storage as storage_module
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
    with Storage.open(path, limits=ServerLimits(offline_max_messages=3)) as storage:
        storage.add_user("alice", PASSWORD)
        ids = [storage.store_offline("alice", b"<m/>") for _ in range(3)]
        with pytest.raises(StorageFull, match=r"offline storage of 'alice' is full \(3 messages\)"):
            storage.store_offline("alice", b"<one too many/>")
        assert len(storage.offline_messages("alice")) == 3
        storage.delete_offline("alice", ids[:1])
        storage.store_offline("alice", b"<fits again/>")


def test_default_offline_limits_are_iim_servers(storage):
    assert storage.limits == ServerLimits()
    assert storage.limits.offline_max_messages == 1000


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


# ---------------------------------------------------------------------------
# Offline quotas (issue 11): bytes per recipient, bytes per sender, messages


def quotas(**limits) -> ServerLimits:
    return replace(ServerLimits(), **limits)


@pytest.fixture
def small(path):
    """alice's store: at most 5 messages, 100 bytes, 40 of them from any one sender."""
    with Storage.open(path, limits=quotas(offline_max_messages=5, offline_quota=100,
                                          offline_quota_per_sender=40)) as storage:
        storage.add_user("alice", PASSWORD)
        yield storage


def test_the_recipients_byte_quota_refuses_what_does_not_fit(small):
    for sender in ("bob@example.com", "carol@example.com"):
        small.store_offline("alice", b"x" * 40, sender)
    with pytest.raises(StorageFull) as refused:
        small.store_offline("alice", b"x" * 21, "dave@example.com")
    assert refused.value.param == "offline_quota"
    assert "offline storage of 'alice' is full (100 bytes)" in str(refused.value)
    small.store_offline("alice", b"x" * 20, "dave@example.com")        # exactly 100
    assert small.offline_usage("alice") == (3, 100)


def test_one_sender_cannot_fill_the_store_for_everyone(small):
    small.store_offline("alice", b"x" * 40, "mallory@example.com")
    with pytest.raises(StorageFull) as refused:
        small.store_offline("alice", b"x", "mallory@example.com")
    assert refused.value.param == "offline_quota_per_sender"
    small.store_offline("alice", b"x" * 40, "bob@example.com")          # others still fit
    assert small.offline_usage("alice", "mallory@example.com") == (1, 40)
    assert small.offline_usage("alice", "bob@example.com") == (1, 40)


def test_the_message_cap_counts_messages_whatever_their_size(small):
    for n in range(5):
        small.store_offline("alice", b"x", f"s{n}@example.com")
    with pytest.raises(StorageFull) as refused:
        small.store_offline("alice", b"x", "s9@example.com")
    assert refused.value.param == "offline_max_messages"


def test_delivered_messages_give_their_room_back_and_sums_survive_a_restart(small, path):
    first = small.store_offline("alice", b"x" * 40, "bob@example.com")
    small.store_offline("alice", b"y" * 30, "carol@example.com")
    small.delete_offline("alice", [first])
    assert small.offline_usage("alice") == (1, 30)
    assert small.offline_usage("alice", "bob@example.com") == (0, 0)
    small.store_offline("alice", b"z" * 40, "bob@example.com")
    small.close()
    with reopen(path) as again:
        assert again.offline_usage("alice") == (2, 70)
        assert again.offline_usage("alice", "carol@example.com") == (1, 30)


def test_a_backlog_keeps_what_fits_and_says_what_did_not(small):
    kept = small.store_offline_many("alice", [("bob@example.com", b"a" * 30),
                                              ("bob@example.com", b"b" * 30),
                                              ("carol@example.com", b"c" * 30)])
    assert kept == [True, False, True]
    assert [data for _, data in small.offline_messages("alice")] == [b"a" * 30, b"c" * 30]


def test_offline_batches_come_oldest_first_bounded_in_count_and_bytes(alice):
    ids = [alice.store_offline("alice", f"<m{n}/>".encode() + b" " * 95) for n in range(10)]
    first = alice.offline_batch("alice", limit=4)
    assert [i for i, _ in first] == ids[:4]
    second = alice.offline_batch("alice", after=first[-1][0], limit=4)
    assert [i for i, _ in second] == ids[4:8]
    assert [i for i, _ in alice.offline_batch("alice", after=ids[7], limit=4)] == ids[8:]
    assert [i for i, _ in alice.offline_batch("alice", limit=10, max_bytes=250)] == ids[:2]
    assert [i for i, _ in alice.offline_batch("alice", limit=10, max_bytes=1)] == ids[:1]


# ---------------------------------------------------------------------------
# Pending subscription requests (RFC 6121 §3.1.3)

REQUEST = b"<presence from='romeo@example.net' to='alice@example.com' type='subscribe'/>"


def test_a_contacts_request_is_kept_once_however_often_it_comes(alice):
    assert alice.put_subscription_request("alice", "romeo@example.net", REQUEST)
    for _ in range(999):
        assert not alice.put_subscription_request("alice", "romeo@example.net", REQUEST)
    assert alice.subscription_requests("alice") == [("romeo@example.net", REQUEST)]
    assert alice.subscription_request("alice", "romeo@example.net") == REQUEST
    assert alice.subscription_request("alice", "juliet@example.net") is None


def test_requests_do_not_use_the_message_quota(path):
    with Storage.open(path, limits=quotas(offline_max_messages=2)) as storage:
        storage.add_user("alice", PASSWORD)
        for n in range(2):
            storage.put_subscription_request("alice", f"c{n}@example.net", REQUEST)
        for n in range(2):
            storage.store_offline("alice", b"<message/>", "bob@example.com")
        with pytest.raises(StorageFull):                 # each kind is bounded apart
            storage.put_subscription_request("alice", "c9@example.net", REQUEST)
        assert storage.offline_usage("alice") == (2, 2 * len(b"<message/>"))


def test_an_answered_request_is_forgotten(alice):
    alice.put_subscription_request("alice", "romeo@example.net", REQUEST)
    assert alice.delete_subscription_request("alice", "romeo@example.net")
    assert not alice.delete_subscription_request("alice", "romeo@example.net")
    assert alice.subscription_requests("alice") == []


def test_a_version_1_database_is_migrated(path):
    """Version 1 kept requests among the messages, as often as they came, and
    knew neither senders nor sizes."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in storage_module._SCHEMA_V1:
        db.execute(statement)
    db.execute("INSERT INTO users (username) VALUES ('alice')")
    rows = [b"<message from='bob@example.com/pc' to='alice@example.com'><body>hi</body></message>",
            REQUEST, REQUEST,
            b"<presence from='juliet@example.net' to='alice@example.com' type='subscribe'/>",
            b"<message from='carol@example.com' to='alice@example.com'><body>yo</body></message>"]
    for row in rows:
        db.execute("INSERT INTO offline_messages (username, stanza) VALUES ('alice', ?)", (row,))
    db.close()
    with Storage.open(path) as storage:
        assert storage._schema_version() == SCHEMA_VERSION == 2
        assert [data for _, data in storage.offline_messages("alice")] == [rows[0], rows[4]]
        assert storage.subscription_requests("alice") == [("romeo@example.net", REQUEST),
                                                          ("juliet@example.net", rows[3])]
        assert storage.offline_usage("alice") == (2, len(rows[0]) + len(rows[4]))
        assert storage.offline_usage("alice", "bob@example.com") == (1, len(rows[0]))
