"""``python -m iim.admin user add|passwd|delete|list``.

The command is registered by ``add_user_parser``; these tests build the same
top-level parser ``iim.admin`` builds and run the parsed command, with stdin,
terminal and getpass replaced where a test needs them.
"""

import argparse
import io
import subprocess
import sys
import textwrap

import pytest

from iim.admin import users
from iim.admin.users import add_user_parser
from iim.server.storage import Storage
from iim.xmpp.sasl import Challenge, ClientAuth, Mechanism, ServerAuth, Success

PASSWORD = "s3cret horse"


class Stdin(io.StringIO):
    def __init__(self, text="", tty=False):
        super().__init__(text)
        self._tty = tty

    def isatty(self):
        return self._tty


def parser():
    top = argparse.ArgumentParser(prog="python -m iim.admin")
    add_user_parser(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return top


@pytest.fixture
def admin(monkeypatch, capsys, tmp_path):
    """admin(*argv, stdin="...") -> (exit status, stdout lines, stderr lines)."""
    monkeypatch.delenv("IIM_CONF", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*argv, stdin="", tty=False):
        monkeypatch.setattr(sys, "stdin", Stdin(stdin, tty))
        args = parser().parse_args(["user", *argv])
        code = args.run(args)
        out, err = capsys.readouterr()
        return code, out.splitlines(), err.splitlines()
    return run


@pytest.fixture
def db(tmp_path):
    return tmp_path / "iim.db"


def logs_in(db, username, password):
    with Storage.open(db, create=False) as storage:
        auth = ServerAuth(storage.credentials, "example.com", secret=storage.server_secret())
        client = ClientAuth(username, password, Mechanism.SCRAM_SHA_256)
        step = auth.start(Mechanism.SCRAM_SHA_256, client.start())
        while isinstance(step, Challenge):
            step = auth.respond(client.respond(step.data))
        return isinstance(step, Success)


# ---------------------------------------------------------------------------
# add, list, passwd, delete


def test_add_reads_one_line_from_stdin_when_it_is_not_a_terminal(admin, db):
    code, out, err = admin("add", "alice", "--db", str(db), stdin=PASSWORD + "\nignored\n")
    assert (code, err) == (0, [])
    assert out == [f"added user 'alice' to {db}"]
    assert logs_in(db, "alice", PASSWORD)


def test_crlf_is_not_part_of_the_password(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD + "\r\n")
    assert logs_in(db, "alice", PASSWORD)


def test_add_prompts_twice_on_a_terminal(admin, db, monkeypatch):
    prompts = []

    def getpass(prompt):
        prompts.append(prompt)
        return PASSWORD
    monkeypatch.setattr(users.getpass, "getpass", getpass)
    code, _, err = admin("add", "alice", "--db", str(db), tty=True)
    assert (code, err) == (0, [])
    assert prompts == ["Password for alice: ", "Same password again: "]
    assert logs_in(db, "alice", PASSWORD)


def test_two_different_passwords_on_a_terminal(admin, db, monkeypatch):
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr(users.getpass, "getpass", lambda prompt: next(answers))
    code, _, err = admin("add", "alice", "--db", str(db), tty=True)
    assert code == 1
    assert err == ["user add: the two passwords differ; nothing changed"]
    assert not db.exists() or not Storage.open(db).user_exists("alice")


def test_add_from_a_password_file(admin, db, tmp_path):
    secret = tmp_path / "alice.pw"
    secret.write_text(PASSWORD + "\n")
    code, _, err = admin("add", "alice", "--db", str(db), "--password-file", str(secret))
    assert (code, err) == (0, [])
    assert logs_in(db, "alice", PASSWORD)


def test_add_from_a_password_file_in_iims_token_form(admin, db, tmp_path):
    """What ``iim.admin keys password-file`` writes, as every iim command reads it."""
    secret = tmp_path / "alice.pw"
    secret.write_text(f"Internal (Software) Token:{PASSWORD}\n")
    code, _, err = admin("add", "alice", "--db", str(db), "--password-file", str(secret))
    assert (code, err) == (0, [])
    assert logs_in(db, "alice", PASSWORD)
    assert not logs_in(db, "alice", f"Internal (Software) Token:{PASSWORD}")


def test_missing_password_file(admin, db, tmp_path):
    code, _, err = admin("add", "alice", "--db", str(db), "--password-file",
                         str(tmp_path / "nope"))
    assert code == 1
    assert err == [f"user add: {tmp_path / 'nope'}: cannot read the password file: "
                   "No such file or directory"]


def test_username_is_prepared(admin, db):
    code, out, _ = admin("add", "Alice", "--db", str(db), stdin=PASSWORD)
    assert code == 0 and out == [f"added user 'alice' to {db}"]
    assert admin("list", "--db", str(db))[1] == ["alice"]


def test_list(admin, db):
    for name in ("carol", "alice", "bob"):
        admin("add", name, "--db", str(db), stdin=PASSWORD)
    assert admin("list", "--db", str(db)) == (0, ["alice", "bob", "carol"], [])


def test_passwd(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    code, out, err = admin("passwd", "alice", "--db", str(db), stdin="n3w\n")
    assert (code, out, err) == (0, ["changed the password of 'alice'"], [])
    assert logs_in(db, "alice", "n3w")
    assert not logs_in(db, "alice", PASSWORD)


def test_delete(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    code, out, err = admin("delete", "alice", "--db", str(db))
    assert (code, err) == (0, [])
    assert out == ["deleted user 'alice' with its roster and offline messages"]
    assert admin("list", "--db", str(db)) == (0, [], [])


# ---------------------------------------------------------------------------
# Errors: one line on stderr, exit status 1


def test_adding_an_existing_user(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    assert admin("add", "alice", "--db", str(db), stdin="other") == (
        1, [], ["user add: user 'alice' already exists"])
    assert logs_in(db, "alice", PASSWORD)


@pytest.mark.parametrize("lookalike,difference", [
    ("\u0430lice", "U+0430 CYRILLIC SMALL LETTER A where 'alice' has 'a'"),
    ("al\u0456ce", "U+0456 CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I where 'alice' "
                   "has 'i'"),
    ("\u0251lice", "U+0251 LATIN SMALL LETTER ALPHA where 'alice' has 'a'"),
])
def test_a_lookalike_of_an_existing_user_is_refused(admin, db, lookalike, difference):
    """RFC 7622 §13.5: names that cannot be told apart on screen."""
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    assert admin("add", lookalike, "--db", str(db), stdin=PASSWORD) == (
        1, [], [f"user add: username {lookalike!r} looks like the existing user 'alice' "
                f"({difference}); choose another name, or give --allow-lookalike if both "
                f"are meant"])
    with Storage.open(db, create=False) as storage:
        assert storage.list_users() == ["alice"]


def test_a_lookalike_is_added_when_asked_for(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    code, out, _ = admin("add", "\u0430lice", "--allow-lookalike", "--db", str(db),
                         stdin=PASSWORD)
    assert code in (0, None) and out == [f"added user '\u0430lice' to {db}"]
    assert logs_in(db, "\u0430lice", PASSWORD) and logs_in(db, "alice", PASSWORD)


def test_names_in_other_scripts_that_look_like_no_one_are_added(admin, db):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    for name in ("\u0430\u043b\u0438\u0441\u0430", "alicia", "\u7231\u4e3d\u4e1d"):
        code, out, err = admin("add", name, "--db", str(db), stdin=PASSWORD)
        assert (code in (0, None), err) == (True, [])


@pytest.mark.parametrize("action", ["passwd", "delete"])
def test_no_such_user(admin, db, action):
    admin("add", "alice", "--db", str(db), stdin=PASSWORD)
    assert admin(action, "bob", "--db", str(db), stdin=PASSWORD) == (
        1, [], [f"user {action}: no such user 'bob'"])


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_password(admin, db, stdin):
    assert admin("add", "alice", "--db", str(db), stdin=stdin) == (
        1, [], ["user add: empty password"])


def test_password_saslprep_refuses(admin, db):
    code, _, err = admin("add", "alice", "--db", str(db), stdin="bell\x07")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("user add: password not usable: character 5 is prohibited")


@pytest.mark.parametrize("username, reason", [
    ("alice@example.com", "localpart contains forbidden character '@' (give the localpart "
                          "only: alice, not alice@example.com)"),
    ("a/b", "localpart contains forbidden character '/'"),
    ("", "empty localpart"),
])
def test_bad_username(admin, db, username, reason):
    code, out, err = admin("add", username, "--db", str(db), stdin=PASSWORD)
    assert (code, out) == (1, [])
    assert err == [f"user add: bad username {username!r}: {reason}"]


@pytest.mark.parametrize("action", [["list"], ["delete", "alice"], ["passwd", "alice"]])
def test_only_add_creates_the_database(admin, db, action):
    code, _, err = admin(*action, "--db", str(db), stdin=PASSWORD)
    assert (code, err) == (1, [f"user {action[0]}: {db}: no such database"])
    assert not db.exists()


def test_database_that_cannot_be_opened(admin, tmp_path):
    bad = tmp_path / "missing-folder" / "iim.db"
    code, _, err = admin("add", "alice", "--db", str(bad), stdin=PASSWORD)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"user add: {bad}: cannot open")


# ---------------------------------------------------------------------------
# Where the database is


def test_database_beside_the_configuration(admin, tmp_path):
    conf = tmp_path / "etc" / "iim.conf"
    conf.parent.mkdir()
    admin("add", "alice", "-c", str(conf), stdin=PASSWORD)
    assert logs_in(conf.parent / "iim.db", "alice", PASSWORD)


def test_database_beside_iim_conf_from_the_environment(admin, tmp_path, monkeypatch):
    folder = tmp_path / "env"
    folder.mkdir()
    monkeypatch.setenv("IIM_CONF", str(folder / "iim.conf"))
    admin("add", "alice", stdin=PASSWORD)
    assert logs_in(folder / "iim.db", "alice", PASSWORD)


def test_database_in_the_current_folder_by_default(admin, tmp_path):
    admin("add", "alice", stdin=PASSWORD)              # the fixture chdir'ed to tmp_path
    assert logs_in(tmp_path / "iim.db", "alice", PASSWORD)


def test_db_option_wins(admin, tmp_path):
    conf = tmp_path / "etc" / "iim.conf"
    admin("add", "alice", "-c", str(conf), "--db", str(tmp_path / "chosen.db"), stdin=PASSWORD)
    assert logs_in(tmp_path / "chosen.db", "alice", PASSWORD)


# ---------------------------------------------------------------------------
# The password never comes from the command line


@pytest.mark.parametrize("option", ["--password", "-p", "--password=" + PASSWORD])
def test_a_password_argument_is_refused_without_echoing_it(capsys, option):
    argv = ["user", "add", "alice", option] + ([] if "=" in option else [PASSWORD])
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert PASSWORD not in err
    name = option.split("=")[0]
    assert f"{name} is refused: the password is never taken from the command line" in err


def test_options_are_not_abbreviated(capsys):
    """Otherwise "--pass SECRET" would quietly mean "--password-file SECRET"."""
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["user", "passwd", "alice", "--pass", PASSWORD])
    assert info.value.code == 2


def test_help_says_why(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["user", "add", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "never taken from the command line" in help_text
    assert "/proc/PID/cmdline" in help_text and "history" in help_text


def test_a_real_pipe(tmp_path):
    """stdin is a pipe, not a terminal: one line is read, no prompt is shown."""
    script = textwrap.dedent("""
        import argparse, sys
        from iim.admin.users import add_user_parser
        top = argparse.ArgumentParser()
        add_user_parser(top.add_subparsers(dest="command"))
        args = top.parse_args(sys.argv[1:])
        sys.exit(args.run(args))
    """)
    db = tmp_path / "iim.db"
    proc = subprocess.run([sys.executable, "-c", script, "user", "add", "alice", "--db", str(db)],
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "Password" not in proc.stdout
    assert logs_in(db, "alice", PASSWORD)
