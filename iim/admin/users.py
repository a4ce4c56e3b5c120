"""``python -m iim.admin user add|passwd|delete|list``: accounts in the server's database.

The database is ``--db PATH``, else iim.conf's ``iim_server.database``
(``-c FILE``, else $IIM_CONF, else ./iim.conf; default iim.db beside it).
Only ``user add`` creates it.

USER is the localpart of the account's JID (``alice`` for
``alice@example.com``); it is prepared as XMPP prepares localparts, so
``Alice`` names the account ``alice``.

Errors a user can cause (the user exists, there is no such user, an empty
password, a bad username, a missing database) are one line on stderr and exit
status 1.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from iim import conf
from iim.keys.passwords import TOKEN_NAMES
from iim.server.storage import NoSuchUser, Storage, StorageError, UserExists
from iim.xmpp.confusable import describe_difference, lookalike
from iim.xmpp.jid import InvalidJID, prepare_localpart

from .guard import guarded

PASSWORD_SOURCES = (
    "The password is the first line of --password-file FILE (after the token "
    "name when the file has iim's form 'Internal (Software) Token:PASSWORD'); "
    "without it, it is "
    "asked twice when stdin is a terminal, and otherwise read as one line from "
    "stdin (echo ... | iim.admin user add alice). It is never taken from the "
    "command line: every local user can read a process's arguments (ps, "
    "/proc/PID/cmdline) and shells keep them in their history.")


class UserCommandError(Exception):
    """One line for stderr: what went wrong and, when it helps, what to do."""


def _guard(action):
    return guarded("user", (StorageError, UserCommandError))(action)


def add_user_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``user add|passwd|delete|list`` on ``python -m iim.admin``'s subparsers."""
    user = subparsers.add_parser(
        "user", help="add, delete, list users; change passwords",
        description="Manage the accounts in the server's database. The server stores "
                    "SCRAM-SHA-1 and SCRAM-SHA-256 credentials, never the password. "
                    "The database is --db PATH, else iim_server.database of iim.conf.")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = _common_options()
    add = _add_action(actions, common, "add", _guard(_add), with_password=True,
                      summary="create an account",
                      description="Create the account USER (creates the database if "
                                  "needed). A USER that looks like an existing one (the "
                                  "same but for confusable characters, RFC 7622 §13.5) is "
                                  "refused unless --allow-lookalike is given. "
                                  + PASSWORD_SOURCES)
    add.add_argument("--allow-lookalike", action="store_true",
                     help="create USER even when it looks like an existing user")
    _add_action(actions, common, "passwd", _guard(_passwd), with_password=True,
                summary="set a new password",
                description="Replace USER's password (new salts too). " + PASSWORD_SOURCES)
    _add_action(actions, common, "delete", _guard(_delete), summary="delete an account",
                description="Delete the account USER with its roster and offline messages.")
    listing = actions.add_parser("list", parents=[common], help="list the accounts",
                                 description="Print every username, one per line, sorted.")
    listing.set_defaults(run=_guard(_list))
    return user


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf, whose folder holds iim.db "
                             "(default: $IIM_CONF, else ./iim.conf)")
    common.add_argument("--db", metavar="PATH",
                        help="the server's database (default: iim_server.database of iim.conf)")
    return common


def _add_action(actions, common, name, run, *, summary, description, with_password=False):
    # No abbreviations: "--password x" must not quietly mean "--password-file x".
    action = actions.add_parser(name, parents=[common], help=summary, description=description,
                                allow_abbrev=False)
    action.add_argument("user", metavar="USER", help="the localpart of the account's JID")
    if with_password:
        action.add_argument("--password-file", metavar="FILE",
                            help="read the password from the first line of FILE "
                                 "(never from the command line: see above)")
        action.add_argument("--password", "-p", nargs="?", action=_RefusePassword,
                            help=argparse.SUPPRESS)
    action.set_defaults(run=run)
    return action


class _RefusePassword(argparse.Action):
    """Explain, without repeating the value, why ``--password`` does not exist."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is refused: the password is never taken from the "
                     "command line (use --password-file, a terminal prompt or stdin)")


# ---------------------------------------------------------------------------
# The commands: each returns the exit status


def _add(args) -> None:
    username = _username(args.user)
    with _storage(args, create=True) as storage:
        if storage.user_exists(username):
            raise UserExists(username)
        if not args.allow_lookalike:
            _refuse_lookalike(username, storage.list_users())
        storage.add_user(username, _password(args, username))
        print(f"added user {username!r} to {storage.path}")


def _refuse_lookalike(username: str, existing) -> None:
    """RFC 7622 §13.5: a name that cannot be told apart from an existing one
    (``аlice`` with a Cyrillic а beside ``alice``) is refused unless asked for."""
    other = lookalike(username, existing)
    if other is not None:
        raise UserCommandError(
            f"username {username!r} looks like the existing user {other!r} "
            f"({describe_difference(username, other)}); choose another name, or give "
            f"--allow-lookalike if both are meant")


def _passwd(args) -> None:
    username = _username(args.user)
    with _storage(args) as storage:
        if not storage.user_exists(username):
            raise NoSuchUser(username)
        storage.set_password(username, _password(args, username))
        print(f"changed the password of {username!r}")


def _delete(args) -> None:
    username = _username(args.user)
    with _storage(args) as storage:
        storage.delete_user(username)
        print(f"deleted user {username!r} with its roster and offline messages")


def _list(args) -> None:
    with _storage(args) as storage:
        for username in storage.list_users():
            print(username)


# ---------------------------------------------------------------------------
# Inputs


def database_path(args) -> Path:
    """``--db``, else iim_server.database from iim.conf (default: iim.db beside it)."""
    if args.db:
        return Path(args.db)
    config = conf.config_path(args.config)
    try:
        return conf.load(config, check_files=False).server.database
    except conf.ConfigError as err:
        if config.exists():
            raise UserCommandError(str(err).splitlines()[0]) from None
        return config.parent / "iim.db"


def _storage(args, *, create: bool = False) -> Storage:
    return Storage.open(database_path(args), create=create)


def _username(text: str) -> str:
    try:
        return prepare_localpart(text)
    except InvalidJID as err:
        hint = " (give the localpart only: alice, not alice@example.com)" if "@" in text else ""
        raise UserCommandError(f"bad username {text!r}: {err}{hint}") from None


def _password(args, username: str) -> str:
    if args.password_file:
        password = _first_line(Path(args.password_file))
    elif sys.stdin.isatty():
        password = _prompt_twice(username)
    else:
        password = _strip_line_end(sys.stdin.readline())
    if not password:
        raise UserCommandError("empty password")
    return password


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserCommandError(f"{path}: cannot read the password file: "
                               f"{err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserCommandError(f"{path}: the password file is not UTF-8") from None
    return _without_token(_strip_line_end(text.split("\n", 1)[0]))


def _without_token(line: str) -> str:
    """A file in iim's password-file form (``iim.admin keys password-file``
    writes ``Internal (Software) Token:PASSWORD``) gives the part after the
    token name, as every other iim command reads it."""
    token, colon, rest = line.partition(":")
    return rest if colon and token.strip() in TOKEN_NAMES else line


def _prompt_twice(username: str) -> str:
    try:
        first = getpass.getpass(f"Password for {username}: ")
        second = getpass.getpass("Same password again: ")
    except EOFError:
        raise UserCommandError("no password given") from None
    if first != second:
        raise UserCommandError("the two passwords differ; nothing changed")
    return first


def _strip_line_end(line: str) -> str:
    """Drop one line ending (LF or CRLF), nothing else: spaces may be part of it."""
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line
