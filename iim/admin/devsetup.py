"""``iim.admin dev-setup``: a complete development configuration in one folder.

It writes, in ``runtime/dev`` by default:

* ``ca.pem``: a development CA (its key is kept only in memory and dropped,
  so nothing can be signed with it later; run dev-setup again to start over),
* ``server-keystore.p12`` (mode 600): the server's PKCS#12 keystore (key entry
  ``server`` for ``localhost``/127.0.0.1/::1, the CA as trusted entry),
* ``nssdb/``: the multiplexor's NSS database (nickname ``Multiplexor-Cert``,
  the CA trusted for SSL), made with NSS's own certutil and pk12util (its
  files mode 600, as NSS makes them),
* ``sslpassword.conf`` (mode 600): one random password for both stores,
* ``muxlink-secret.conf`` (mode 600): the random secret the multiplexor links
  prove both ways (docs/muxlink.md), named by both ``muxlink_secretfile``,
* ``iim.conf``: server and multiplexor on loopback with those files.

No clear private key is written: the keystore and the NSS database hold the
keys encrypted, and the PKCS#12 handed to pk12util is encrypted too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = "localhost"
NICKNAME = "Multiplexor-Cert"
TOKEN = "Internal (Software) Token"


class DevSetupError(Exception):
    """One line saying what is missing (e.g. an NSS tool)."""


MARKER = ".iim-dev-setup"
USERS_FILE = "dev-users.txt"
DEV_USERS = ("alice", "bob")
#: What iim.admin start leaves in the folder (iim.instancevardir defaults to it).
RUNTIME_FILES = tuple(f"{stem}.{kind}" for stem in ("server", "mux")
                      for kind in ("pid", "sock", "stderr"))
LINK_SECRET = "muxlink-secret.conf"
WRITTEN = ("iim.conf", "ca.pem", "server-keystore.p12", "sslpassword.conf", LINK_SECRET,
           "nssdb", MARKER,
           USERS_FILE, "iim.db", "iim.db-wal", "iim.db-shm") + RUNTIME_FILES


def dev_setup(folder: Path, *, force: bool = False) -> Path:
    """Write the development configuration into ``folder``; return iim.conf's path.

    An existing development configuration is kept (``force`` starts over).
    Only files dev-setup wrote are ever removed, and only from a folder that
    carries its marker: a folder with anything else in it is refused.
    """
    folder = Path(folder)
    config = folder / "iim.conf"
    if (folder / MARKER).exists() and config.exists() and not force:
        return config
    _require_tools()
    try:
        _prepare(folder)
        _write_all(folder)
    except OSError as exc:
        raise DevSetupError(f"dev-setup: {folder}: {exc.strerror or exc}") from None
    return config


def _prepare(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        return
    _refuse_while_running(folder)
    entries = {p.name for p in folder.iterdir()}
    foreign = sorted(entries - set(WRITTEN))
    if entries and (MARKER not in entries or foreign):
        shown = ", ".join(foreign[:3]) or "files"
        raise DevSetupError(f"dev-setup: {folder} holds {shown} not written by dev-setup; "
                            "choose an empty or new --dir")
    for name in entries:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _refuse_while_running(folder: Path) -> None:
    """Starting over under a running server or multiplexor would pull its files away."""
    from iim.runtime import NAMES, probe
    for stem, name in NAMES.items():
        found = probe(folder / f"{stem}.pid")
        if found.state == "running":
            raise DevSetupError(f"dev-setup: the {name} of {folder} is running (pid "
                                f"{found.pid}); stop it first: python -m iim.admin stop "
                                f"-c {folder / 'iim.conf'}")


def _write_all(folder: Path) -> None:
    (folder / MARKER).write_text("written by python -m iim.admin dev-setup\n")
    password = secrets.token_urlsafe(18)
    ca_key, ca_cert = _make_ca()
    _write_private(folder / "sslpassword.conf", f"{TOKEN}:{password}\n")
    _write_private(folder / LINK_SECRET, f"{TOKEN}:{secrets.token_urlsafe(32)}\n")
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = _issue(ca_key, ca_cert, "iim dev server")
    _write_private(folder / "server-keystore.p12",
                   _pkcs12("server", server_key, server_cert, ca_cert, password))
    mux_key, mux_cert = _issue(ca_key, ca_cert, "iim dev multiplexor")
    _make_nss_db(folder / "nssdb", mux_key, mux_cert, ca_cert, password)
    (folder / "iim.conf").write_text(DEV_CONF)
    _add_dev_users(folder)


def _add_dev_users(folder: Path) -> None:
    """alice and bob, with random passwords kept in dev-users.txt (mode 600)."""
    from iim.server.storage import Storage
    lines = []
    with Storage.open(folder / "iim.db") as storage:
        for user in DEV_USERS:
            password = secrets.token_urlsafe(12)
            storage.add_user(user, password)
            lines.append(f"{user}@{DOMAIN} {password}\n")
    _write_private(folder / USERS_FILE, "".join(lines))


def connection_help(folder: Path) -> str:
    """How to reach the development system, for ./dev run to print."""
    folder = Path(folder).resolve()
    users = (folder / USERS_FILE).read_text().split("\n")
    shown = "\n".join(f"                 {line.replace(' ', '  password ', 1)}"
                      for line in users if line)
    return (f"iim development system ({folder})\n"
            f"  XMPP domain    {DOMAIN}\n"
            f"  connect to     127.0.0.1:5222 (the multiplexor; STARTTLS required, TLS\n"
            f"                 ends at the server) or 127.0.0.1:5269 (the server itself)\n"
            f"{_web_client_help(folder)}"
            f"  users\n{shown}\n"
            f"  trust this CA  {folder / 'ca.pem'}\n"
            f"  try            openssl s_client -starttls xmpp -xmpphost {DOMAIN} "
            f"-connect 127.0.0.1:5222 -CAfile {folder / 'ca.pem'}\n"
            f"  legacy SSL     set iim_mux.usessl = \"on\" in iim.conf: the multiplexor then\n"
            f"                 speaks TLS from the first byte with the certificate in nssdb/\n")


def _web_client_help(folder: Path) -> str:
    """Where the web client is, from the folder's iim.conf (iim_server.httpport)."""
    from iim import conf
    try:
        where = conf.load(folder / "iim.conf", check_files=False).server.httpport
    except conf.ConfigError:
        where = None
    if where is None:
        return ("  web client     not configured here (no iim_server.httpport; a folder from "
                "before\n                 the gateway: dev-setup --force writes a new one)\n")
    host = "localhost" if where.host in (None, "127.0.0.1", "::1") else where.host
    base = f"{host}:{where.port}"
    return (f"  web client     https://{base}/ (WebSocket wss://{base}/ws,\n"
            f"                 BOSH https://{base}/http-bind; trust ca.pem below)\n")


def _require_tools() -> None:
    for tool in ("certutil", "pk12util"):
        if shutil.which(tool) is None:
            raise DevSetupError(f"dev-setup: {tool} not found: install Debian's libnss3-tools")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iim development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("iim development CA"))
            .issuer_name(_name("iim development CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(ca_key, ca_cert, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names = [x509.DNSName(DOMAIN), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=397))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pkcs12(alias, key, cert, ca_cert, password: str) -> bytes:
    trusted = pkcs12.PKCS12Certificate(ca_cert, b"iim-dev-ca")
    return pkcs12.serialize_key_and_certificates(
        alias.encode(), key, cert, [trusted],
        serialization.BestAvailableEncryption(password.encode()))


def _write_private(path: Path, data: str | bytes) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as out:
        out.write(data)


def _make_nss_db(directory: Path, key, cert, ca_cert, password: str) -> None:
    directory.mkdir(mode=0o700)
    with tempfile.TemporaryDirectory(prefix="iim-dev-") as scratch:
        scratch = Path(scratch)
        pwfile = scratch / "nss-password"            # certutil's own -f format: the password
        _write_private(pwfile, password + "\n")
        p12 = scratch / "mux.p12"
        p12.write_bytes(pkcs12.serialize_key_and_certificates(
            NICKNAME.encode(), key, cert, None,
            serialization.BestAvailableEncryption(password.encode())))
        ca = scratch / "ca.pem"
        ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        db = f"sql:{directory}"
        _tool("certutil", "-N", "-d", db, "-f", str(pwfile))
        _tool("pk12util", "-i", str(p12), "-d", db, "-k", str(pwfile), "-w", str(pwfile))
        _tool("certutil", "-A", "-d", db, "-n", "iim development CA", "-t", "C,,",
              "-i", str(ca), "-f", str(pwfile))


def _tool(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DevSetupError(f"dev-setup: {argv[0]} {argv[1]} failed: "
                            f"{detail[-1] if detail else 'exit ' + str(proc.returncode)}")


DEV_CONF = """\
! iim development configuration, written by `python -m iim.admin dev-setup`.
! Everything listens on loopback; the certificates name localhost, 127.0.0.1
! and ::1 and are issued by ca.pem (trust it in your client).

iim_server.domainname = "localhost"
iim_server.port = "127.0.0.1:5269"
iim_server.requiressl = "true"
iim_server.trust_all_cert = "false"
iim_server.sslkeystore = "server-keystore.p12"
iim_server.keystorepasswordfile = "sslpassword.conf"
iim_server.muxlink_secretfile = "muxlink-secret.conf"
! The XMPP/HTTP gateway (WebSocket at /ws, BOSH at /http-bind) and the web
! client at https://localhost:5280/. Plain HTTP on the same port carries web
! sessions too, for the web client's page about insecure connections: never
! set http_allow_plain on a real server.
iim_server.httpport = "127.0.0.1:5280"
iim_server.http_allow_plain = "true"

iim_mux.listenport = "127.0.0.1:5222"
! Not the default 45222: that lies in Linux's range of ephemeral ports
! (net.ipv4.ip_local_port_range), where any outgoing connection, or one that
! has just closed, may hold it, and the server could not listen.
iim_mux.serverport = "127.0.0.1:15222"
iim_mux.numinstances = "1"
iim_mux.maxthreads = "2"
iim_mux.maxsessions = "2000"
iim_mux.stat_frequency = "60"
iim_mux.usessl = "off"
iim_mux.secconfigdir = "nssdb"
iim_mux.certnickname = "Multiplexor-Cert"
iim_mux.keystorepasswordfile = "sslpassword.conf"
iim_mux.muxlink_secretfile = "muxlink-secret.conf"
iim_mux.muxlink_cafile = "ca.pem"

iim.log.iim_server.severity = "INFO"
iim.log.iim_mux.severity = "INFO"
"""
