"""Files that hold secrets are the owner's alone (issue 12).

Every file iim creates that holds a secret (the database with its SCRAM
verifiers, rosters and offline messages; keystores, password and secret
files; NSS databases; dev-users.txt) is mode 0600 from the start, whichever
command makes it: ``dev-setup``, ``keys``, ``user add`` or the server on
first start. And one check (iim.keys.passwords.mode_warning) says the same
line about a secret file that group or others may read, in the server's
start-up log, the multiplexor's and ``iim.admin check``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devsystem import DevSystem, admin_here, run_admin

TOKEN = "Internal (Software) Token"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def modes(paths) -> dict[str, str]:
    return {str(p): f"{mode(p):04o}" for p in paths}


def private(paths) -> dict[str, str]:
    return {str(p): "0600" for p in paths}


def database_files(db: Path) -> list[Path]:
    return [p for p in (Path(f"{db}{s}") for s in ("", "-wal", "-shm", "-journal"))
            if p.exists()]


# -- created 0600 -------------------------------------------------------------------------------

def test_dev_setup_writes_every_secret_file_0600(tmp_path):
    run_admin("dev-setup", "--dir", str(tmp_path / "dev"))
    dev = tmp_path / "dev"
    public = {"ca.pem", "iim.conf", ".iim-dev-setup"}       # what anyone may read
    secret = [p for p in sorted(dev.rglob("*")) if p.is_file() and p.name not in public]

    assert {dev / "sslpassword.conf", dev / "server-keystore.p12", dev / "dev-users.txt",
            dev / "iim.db", dev / "nssdb" / "key4.db"} <= set(secret)
    assert modes(secret) == private(secret)
    assert mode(dev / "nssdb") == 0o700


def test_user_add_creates_the_database_0600(tmp_path):
    db = tmp_path / "fresh.db"
    proc = subprocess.run([sys.executable, "-m", "iim.admin", "user", "add", "carol",
                           "--db", str(db)], input="carol-password-1\n", capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert database_files(db) and modes(database_files(db)) == private(database_files(db))


def test_keys_writes_keystores_and_password_files_0600(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # the command's paths are relative

    def keys(*args: str) -> None:
        """``iim.admin keys`` in this process (devsystem.admin_here), with its umask."""
        proc = admin_here("keys", *args)
        assert proc.returncode == 0, proc.stderr

    keys("password-file", "ca-password.conf", "--generate")
    keys("password-file", "sslpassword.conf", "--generate")
    keys("build-ca", "--key", "ca-key.pem", "--cert", "ca.pem", "--password-file",
         "ca-password.conf", "--subject", "CN=Modes CA")
    keys("gen-req", "im.example.com", "--key", "server-key.pem", "--out", "server.csr",
         "--password-file", "sslpassword.conf")
    keys("sign-req", "server.csr", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem",
         "--ca-password-file", "ca-password.conf", "--out", "server.pem")
    store = ["--key", "server-key.pem", "--password-file", "sslpassword.conf", "--cert",
             "server.pem", "--ca-cert", "ca.pem"]
    keys("make-keystore", *store, "--out", "server-keystore.p12")
    keys("make-keystore", "--storetype", "JKS", *store, "--out", "server-keystore.jks")
    keys("make-nssdb", "mux-nss", *store)
    secret = [tmp_path / name for name in ("ca-password.conf", "sslpassword.conf",
                                           "ca-key.pem", "server-key.pem",
                                           "server-keystore.p12", "server-keystore.jks")]
    secret += sorted((tmp_path / "mux-nss").iterdir())

    assert modes(secret) == private(secret)


def test_the_server_creates_its_database_0600_even_under_a_lax_umask(tmp_path):
    dev = DevSystem(tmp_path / "dev")
    for path in database_files(dev.folder / "iim.db"):
        path.unlink()
    conf = dev.variant("fresh.conf", {"iim_server.database": "fresh.db"})
    old = os.umask(0)                       # the server inherits it
    try:
        proc = dev.start_server(conf)
    finally:
        os.umask(old)
    try:
        made = database_files(dev.folder / "fresh.db")
        assert dev.folder / "fresh.db-wal" in made
        assert modes(made) == private(made)
    finally:
        dev.stop(proc)


# -- the same warning from server, multiplexor and check -------------------------------------------

def secret_file(path: Path, file_mode: int) -> Path:
    path.write_text(f"{TOKEN}:Modes-Secret-0123456789\n")
    os.chmod(path, file_mode)
    return path


def warning(param: str, path: Path, file_mode: int) -> str:
    return (f"{param}: {path}: readable by group or others (mode {file_mode:04o}); "
            f"run chmod 600 {path}")


def log_warnings(log: Path) -> list[str]:
    return [line.split(": ", 1)[1] for line in log.read_text().splitlines()
            if " WARNING " in line]


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604])
def test_a_readable_secret_file_draws_one_line_from_server_multiplexor_and_check(
        tmp_path, file_mode):
    dev = DevSystem(tmp_path / "dev")
    link = secret_file(dev.folder / "muxlink-secret.conf", file_mode)
    dialback = secret_file(dev.folder / "dialback-secret.conf", file_mode)
    conf = dev.variant("lax.conf", {"iim_server.muxlink_secretfile": str(link),
                                    "iim_mux.muxlink_secretfile": str(link),
                                    "iim_server.dialback_secretfile": str(dialback)})
    server_lines = [warning("iim_server.muxlink_secretfile", link, file_mode),
                    warning("iim_server.dialback_secretfile", dialback, file_mode)]
    mux_lines = [warning("iim_mux.muxlink_secretfile", link, file_mode)]

    server = dev.start_server(conf)
    try:
        mux = dev.start_mux(conf)
        dev.stop(mux)
    finally:
        dev.stop(server)
    check = admin_here("check", "-c", str(conf))

    for line in server_lines:
        assert log_warnings(dev.folder / "server.log").count(line) == 1
    assert log_warnings(dev.folder / "mux.log").count(mux_lines[0]) == 1
    assert not set(server_lines) & set(log_warnings(dev.folder / "mux.log"))
    printed = check.stdout.splitlines()
    for line in server_lines + mux_lines:
        assert printed.count(f"WARNING: {line}") == 1, check.stdout


def test_a_0600_secret_file_draws_no_warning_and_check_names_every_readable_one(tmp_path):
    dev = DevSystem(tmp_path / "dev")
    link = secret_file(dev.folder / "muxlink-secret.conf", 0o600)
    conf = dev.variant("strict.conf", {"iim_server.muxlink_secretfile": str(link),
                                       "iim_mux.muxlink_secretfile": str(link)})
    quiet = admin_here("check", "-c", str(conf))
    os.chmod(dev.folder / "iim.db", 0o644)
    os.chmod(dev.folder / "server-keystore.p12", 0o640)
    loud = admin_here("check", "-c", str(conf))

    assert "readable by group or others" not in quiet.stdout
    db, store = dev.folder / "iim.db", dev.folder / "server-keystore.p12"
    assert [line for line in loud.stdout.splitlines() if "readable by group" in line] == [
        f"WARNING: {warning('iim_server.database', db, 0o644)}",
        f"WARNING: {warning('iim_server.sslkeystore', store, 0o640)}"]
