"""dev-setup writes a usable development configuration and never deletes what it did not write."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from iim.admin.devsetup import DevSetupError, dev_setup


def test_writes_every_file_private_where_it_matters(tmp_path):
    conf = dev_setup(tmp_path / "dev")
    folder = conf.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        ".iim-dev-setup", "ca.pem", "dev-users.txt", "iim.conf", "iim.db", "muxlink-secret.conf",
        "nssdb", "server-keystore.p12", "sslpassword.conf"]
    assert stat.S_IMODE(os.stat(folder / "sslpassword.conf").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "muxlink-secret.conf").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "dev-users.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert b"PRIVATE KEY" not in b"".join(
        p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_second_run_keeps_the_configuration(tmp_path):
    conf = dev_setup(tmp_path / "dev")
    before = (conf.parent / "sslpassword.conf").read_text()
    dev_setup(tmp_path / "dev")
    assert (conf.parent / "sslpassword.conf").read_text() == before
    dev_setup(tmp_path / "dev", force=True)
    assert (conf.parent / "sslpassword.conf").read_text() != before


def test_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "thesis.txt").write_text("four years of work")
    with pytest.raises(DevSetupError) as err:
        dev_setup(tmp_path, force=True)
    assert str(err.value) == (f"dev-setup: {tmp_path} holds thesis.txt not written by "
                              "dev-setup; choose an empty or new --dir")
    assert (tmp_path / "thesis.txt").read_text() == "four years of work"


def test_unusable_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                           str(tmp_path / "afile" / "dev")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"dev-setup: {tmp_path / 'afile' / 'dev'}: Not a directory\n"


def test_dev_users_can_log_in(tmp_path):
    from iim.server.storage import Storage
    from iim.xmpp import sasl
    conf = dev_setup(tmp_path / "dev")
    users = dict(line.split() for line in (conf.parent / "dev-users.txt").read_text().splitlines())
    assert sorted(users) == ["alice@localhost", "bob@localhost"]
    with Storage.open(conf.parent / "iim.db") as storage:
        auth = sasl.ServerAuth(storage.credentials, "localhost", tls=True,
                               secret=storage.server_secret())
        step = auth.start("PLAIN", b"\0alice\0" + users["alice@localhost"].encode())
    assert isinstance(step, sasl.Success) and step.username == "alice"


def test_the_development_system_serves_its_users(tmp_path):
    """What ./dev run starts: the server on the dev configuration, alice and bob log in."""
    import asyncio

    from live import Client, next_item
    from support import Process, free_port

    conf = dev_setup(tmp_path / "dev")
    port = free_port()
    with conf.open("a") as out:                           # last one wins (with a warning)
        out.write(f'iim_server.port = "127.0.0.1:{port}"\n'
                  f'iim_mux.serverport = "127.0.0.1:{free_port()}"\n'
                  f'iim_server.httpport = "127.0.0.1:{free_port()}"\n')   # not 5280: ./dev run's
    users = dict(line.split() for line in (conf.parent / "dev-users.txt").read_text().splitlines())
    proc = Process([sys.executable, "-m", "iim.server", "-c", str(conf)], tmp_path, "server")
    try:
        proc.wait_port(port)

        async def chat():
            ca = conf.parent / "ca.pem"
            alice = await Client("alice@localhost", users["alice@localhost"], ca).online(port)
            bob = await Client("bob@localhost", users["bob@localhost"], ca).online(port)
            alice.send_message(mto="bob@localhost", mbody="dev works", mtype="chat")
            got = await next_item(bob.received)
            await alice.offline()
            await bob.offline()
            return got["body"]

        assert asyncio.run(asyncio.wait_for(chat(), 60)) == "dev works"
    finally:
        code = proc.stop()
    stderr = proc.stderr()
    assert code == 0, proc.report()
    assert "iim_server.port: set twice" in stderr
    assert users["alice@localhost"] not in stderr


def test_every_port_it_listens_on_is_outside_the_ephemeral_range(tmp_path):
    """An outgoing connection (or one that has just closed, in TIME_WAIT) may hold
    any port of net.ipv4.ip_local_port_range, and the server would then refuse to
    start: the development configuration listens below it (not on the product's
    default link port, 45222)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    text = dev_setup(tmp_path / "dev").read_text()
    ports = {int(p) for p in re.findall(r'^iim[\w.]*port = "127\.0\.0\.1:(\d+)"', text, re.M)}
    assert {5222, 5269} <= ports
    assert [p for p in ports if low <= p <= high] == []
