"""python -m iim.admin COMMAND [options]

Commands:
  start      start the server and the multiplexor as daemons (ready when it returns)
  stop       stop them cleanly (clients get their stream closed)
  refresh    apply a changed iim.conf and renewed certificates without dropping sessions
  status     what runs: sessions by transport security, links, peers, certificates
  version    versions of iim, Python, OpenSSL and NSS
  check      read iim.conf, open every keystore and NSS database it names and
             report one line per finding; exit 0 when the configuration is usable
  dev-setup  write a development configuration (CA, keystore, NSS database,
             password file, iim.conf) into a folder
  user       add, change the password of, delete or list users
  keys       make a CA, server keys and requests, sign them, write keystores
             and NSS databases (no keytool or certutil needed)
  verify     connect as a client would and say whether the connection is
             secure (TLS version, cipher, certificate chain, where TLS ends)

The configuration file is -c FILE, else $IIM_CONF, else ./iim.conf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iim import conf

import importlib

# The module that defines (and runs) each command, imported only for the
# command asked: `keys` need not load the XMPP client of `verify`, the SQLite
# store of `user` or the control client of `status` (~0.1 s of each start).
# Help, and a command line naming no known command, get them all.
_COMMANDS = {
    "user": ("users", "add_user_parser"),
    "verify": ("verify", "add_verify_parser"),
    "keys": ("keytools", "add_keys_parser"),
    **{name: ("daemon", "add_daemon_parsers")
       for name in ("start", "stop", "refresh", "status", "version")},
}


def _config_path(value: str | None) -> Path:
    return conf.config_path(value)


def cmd_check(args) -> int:
    from .check import check, usable
    findings = check(_config_path(args.config))
    for finding in findings:
        print(finding)
    ok = usable(findings)
    print(f"{_config_path(args.config)}: {'usable' if ok else 'NOT usable'}")
    return 0 if ok else 1


def cmd_dev_setup(args) -> int:
    from .devsetup import DevSetupError, dev_setup
    try:
        path = dev_setup(Path(args.dir), force=args.force)
    except DevSetupError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"development configuration: {path}")
    if args.show:
        from .devsetup import connection_help
        print(connection_help(path.parent))
    return 0


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """iim.admin's parser; with ``command``, only that command's module is loaded
    (the others' parsers are left out)."""
    top = argparse.ArgumentParser(prog="python -m iim.admin", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                  help="one of the commands above; COMMAND --help for its manual")
    check = commands.add_parser(
        "check", help="check iim.conf, keystores and NSS databases",
        description="Read the configuration, open every keystore and NSS database it names "
                    "(read-only) and print one line per finding: configuration errors and "
                    "warnings, key/certificate match, chain completeness, expiry (warned "
                    "under 30 days), whether the certificates name iim_server.domainname, "
                    "password-file permissions. Exit status 0 when usable, 1 otherwise.")
    check.add_argument("-c", "--config", metavar="FILE",
                       help="iim.conf to check (default: $IIM_CONF, else ./iim.conf)")
    check.set_defaults(run=cmd_check)
    dev = commands.add_parser(
        "dev-setup", help="write a development configuration",
        description="Write a development CA, a server PKCS#12 keystore, a multiplexor NSS "
                    "database, a password file, iim.conf (server and multiplexor on "
                    "loopback) and two users, alice and bob, with random passwords kept in "
                    "dev-users.txt, into DIR. An existing configuration is kept unless "
                    "--force.")
    dev.add_argument("--dir", default="runtime/dev", help="folder (default: runtime/dev)")
    dev.add_argument("--force", action="store_true", help="start over in an existing folder")
    dev.add_argument("--show", action="store_true",
                     help="print how to connect (users and their passwords, CA file)")
    dev.set_defaults(run=cmd_dev_setup)
    if command in ("check", "dev-setup"):                # defined here
        wanted = []
    else:
        wanted = [_COMMANDS[command]] if command in _COMMANDS else list(_COMMANDS.values())
    for module, adder in dict.fromkeys(wanted):       # each module once, in this order
        getattr(importlib.import_module(f".{module}", __package__), adder)(commands)
    # The description lists the commands in the order an operator meets them;
    # argparse would list them a second time, unordered, under "positional arguments".
    commands._choices_actions.clear()
    return top


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(argv[0] if argv else None).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
