"""iim.keys.nss against databases made by the real certutil / pk12util.

Every database here is built by NSS's own tools (tests/nsstools.py), in the
formats an administrator meets: sql (cert9/key4) and legacy dbm
(cert8/key3), with prefixes, a key database renamed to a prefix of its own,
and a renamed module database. The loaded key is proven by a real TLS
handshake; every user-visible error is asserted word for word.
"""

from __future__ import annotations

import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iim.keys.context import server_context
from iim.keys.errors import KeyMaterialError
from iim.keys.nss import load_nss
from nsstools import NSSDatabase, listing
from pki import CA
from tlsutil import handshake

PASSWORD = "s3cret: pass word"
NICK = "Multiplexor-Cert"


@pytest.fixture(scope="module")
def sql_db(tmp_path_factory, ca):
    """sql database, prefix "Secret-stuff", an RSA leaf and a trusted root."""
    db = NSSDatabase.create(tmp_path_factory.mktemp("sql") / "db", PASSWORD,
                            prefix="Secret-stuff")
    db.import_pkcs12(ca.issue("localhost", "127.0.0.1"), NICK)
    db.add_cert(ca.cert, "iim test CA", "C,,")
    return db


@pytest.fixture(scope="module")
def dbm_db(tmp_path_factory, ca):
    """Legacy dbm database with separate cert/key prefixes and a custom secmod name."""
    db = NSSDatabase.create(tmp_path_factory.mktemp("dbm") / "db", "dbm password",
                            fmt="dbm", prefix="Secret-stuff")
    db.import_pkcs12(ca.issue("mux.example.com"), NICK)
    db.rename_key_db("This-Database")
    db.rename_secmod("custom-secmod.db")
    return db


def load(db: NSSDatabase, **overrides):
    args = dict(certdbprefix=db.certdbprefix, keydbprefix=db.keydbprefix,
                secmodfile=db.secmod, nickname=NICK, password=db.password)
    args.update(overrides)
    return load_nss(db.directory, **args)


def error_of(db_or_dir, **kw) -> str:
    with pytest.raises(KeyMaterialError) as info:
        if isinstance(db_or_dir, NSSDatabase):
            load(db_or_dir, **kw)
        else:
            load_nss(db_or_dir, password=PASSWORD, **kw)
    return str(info.value)


def pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def tls_peer_certificate(material, ca, tmp_path) -> bytes:
    """Serve TLS with ``material`` (through server_context, as the mux will) on
    127.0.0.1; return what a client verifying against ``ca`` sees."""
    seen, _ = handshake(server_context(material), pem(ca.cert), "localhost")
    return der(seen)


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- loading ------------------------------------------------------------------

def test_sql_rsa_key_serves_tls(sql_db, ca, tmp_path):
    material = load(sql_db)

    assert isinstance(material.key, rsa.RSAPrivateKey)
    assert material.chain == (sql_db.issued.cert,)
    assert material.trust_anchors == (ca.cert,)
    assert material.alias == NICK
    assert material.source == (f'NSS database {sql_db.directory} '
                               f'(certdbprefix "Secret-stuff", keydbprefix "Secret-stuff")')
    assert tls_peer_certificate(material, ca, tmp_path) == der(material.certificate)


def test_sql_ec_key(tmp_path, ca):
    db = NSSDatabase.create(tmp_path / "ec", "ec pw")
    issued = ca.issue("localhost", key_kind="ec")
    db.import_pkcs12(issued, NICK)

    material = load(db)

    assert isinstance(material.key, ec.EllipticCurvePrivateKey)
    assert material.key.curve.name == "secp256r1"
    assert material.chain == (issued.cert,)
    assert material.trust_anchors == ()
    signature = material.key.sign(b"proof", ec.ECDSA(hashes.SHA256()))
    issued.cert.public_key().verify(signature, b"proof", ec.ECDSA(hashes.SHA256()))
    assert tls_peer_certificate(material, ca, tmp_path) == der(issued.cert)


def test_dbm_with_separate_prefixes_and_custom_secmod(dbm_db):
    assert sorted(p.name for p in dbm_db.directory.iterdir()) == [
        "Secret-stuffcert8.db", "This-Databasekey3.db", "custom-secmod.db"]

    material = load(dbm_db)

    assert isinstance(material.key, rsa.RSAPrivateKey)
    assert material.key.public_key() == dbm_db.issued.cert.public_key()
    assert material.chain == (dbm_db.issued.cert,)
    assert material.source == (f'NSS database {dbm_db.directory} '
                               f'(certdbprefix "Secret-stuff", keydbprefix "This-Database")')
    assert material.notes == ()


def test_dbm_missing_secmod_file_is_a_note(dbm_db):
    before = listing(dbm_db.directory)

    material = load(dbm_db, secmodfile="secmod.db")

    assert material.certificate == dbm_db.issued.cert
    assert material.notes == (f"iim_mux.secmodfile: {dbm_db.directory}/secmod.db: no such "
                              f"file; NSS used its internal module only",)
    assert listing(dbm_db.directory) == before


def test_intermediate_chain_and_trust_flags(tmp_path, ca):
    intermediate = ca.intermediate()
    issued = intermediate.issue("localhost")
    client_ca, valid_only, untrusted = CA.root("client CA"), CA.root("valid CA"), CA.root("x")
    db = NSSDatabase.create(tmp_path / "chain", "chain pw", prefix="p-")
    db.import_pkcs12(issued, NICK)      # the PKCS#12 carries the intermediate too
    db.add_cert(ca.cert, "root", "C,,")
    db.add_cert(client_ca.cert, "client root", "T,,")
    db.add_cert(valid_only.cert, "valid only", "c,,")
    db.add_cert(untrusted.cert, "no trust", ",,")

    material = load(db)

    assert material.chain == (issued.cert, intermediate.cert)
    assert set(material.trust_anchors) == {ca.cert, client_ca.cert}
    assert len(material.trust_anchors) == 2
    assert tls_peer_certificate(material, ca, tmp_path) == der(issued.cert)


def test_two_databases_one_after_the_other(sql_db, dbm_db):
    first, second, again = load(sql_db), load(dbm_db), load(sql_db)

    assert first.certificate == again.certificate == sql_db.issued.cert
    assert second.certificate == dbm_db.issued.cert
    assert first.key.public_key() != second.key.public_key()
    assert second.key.public_key() == dbm_db.issued.cert.public_key()


def test_concurrent_loads_are_serialised(sql_db, dbm_db):
    results, errors = [], []

    def worker(db):
        try:
            results.append((db, load(db).certificate))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(db,)) for db in [sql_db, dbm_db] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 6
    assert all(cert == db.issued.cert for db, cert in results)


@pytest.mark.parametrize("which", ["sql_db", "dbm_db"])
def test_loading_changes_no_file(which, request):
    db = request.getfixturevalue(which)
    before = listing(db.directory)

    load(db)
    error_of(db, password="wrong")

    assert listing(db.directory) == before


def test_explicit_format_prefix_in_directory(sql_db):
    material = load_nss(f"sql:{sql_db.directory}", certdbprefix="Secret-stuff",
                        keydbprefix="Secret-stuff", password=PASSWORD)
    assert material.certificate == sql_db.issued.cert


# --- what a user can get wrong -----------------------------------------------

def test_wrong_password(sql_db, dbm_db):
    assert error_of(sql_db, password="not it") == (
        f'iim_mux.keystorepasswordfile: wrong password for NSS database {sql_db.directory} '
        f'(keydbprefix "Secret-stuff")')
    message = error_of(dbm_db, password="hunter2-wrong", param_prefix="mux")
    assert message == (
        f'mux.keystorepasswordfile: wrong password for NSS database {dbm_db.directory} '
        f'(keydbprefix "This-Database")')
    assert "hunter2" not in message
    assert load(sql_db).certificate == sql_db.issued.cert   # NSS was closed cleanly


def test_unknown_nickname(sql_db):
    assert error_of(sql_db, nickname="Other-Cert") == (
        f'iim_mux.certnickname: no certificate "Other-Cert" in NSS database '
        f'{sql_db.directory} (certdbprefix "Secret-stuff"); certificates with keys there: '
        f'"Multiplexor-Cert"')


@pytest.mark.parametrize("which", ["sql_db", "dbm_db"])
def test_nickname_is_case_sensitive(which, request):
    db = request.getfixturevalue(which)
    assert error_of(db, nickname="multiplexor-cert") == (
        f'iim_mux.certnickname: no certificate "multiplexor-cert" in NSS database '
        f'{db.directory} (certdbprefix "Secret-stuff"); certificates with keys there: '
        f'"Multiplexor-Cert" (nicknames are case-sensitive)')


def test_certificate_without_key(sql_db):
    assert error_of(sql_db, nickname="iim test CA") == (
        f'iim_mux.certnickname: certificate "iim test CA" has no private key in NSS database '
        f'{sql_db.directory} (certdbprefix "Secret-stuff", keydbprefix "Secret-stuff"); '
        f'import it with its key (pk12util -i)')


def test_database_without_user_certificates(tmp_path):
    db = NSSDatabase.create(tmp_path / "bare", "bare pw")
    assert error_of(db) == (
        f'iim_mux.certnickname: no certificate "Multiplexor-Cert" in NSS database '
        f'{db.directory}; there are no certificates with keys there')


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    assert error_of(missing) == f"iim_mux.secconfigdir: {missing}: no such directory"
    assert not missing.exists()


def test_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(empty, certdbprefix="x-") == (
        f"iim_mux.secconfigdir: no NSS certificate database in {empty}: there is no "
        f"{empty}/x-cert9.db or {empty}/x-cert8.db")
    assert list(empty.iterdir()) == []


def test_wrong_certificate_prefix_creates_nothing(sql_db):
    before = listing(sql_db.directory)
    d = sql_db.directory
    assert error_of(sql_db, certdbprefix="secret-stuff") == (
        f'iim_mux.certdbprefix: no NSS certificate database {d}/secret-stuffcert9.db or '
        f'{d}/secret-stuffcert8.db (certdbprefix "secret-stuff"); certificate databases '
        f'there: Secret-stuffcert9.db')
    assert listing(sql_db.directory) == before


def test_wrong_key_prefix_creates_nothing(dbm_db):
    before = listing(dbm_db.directory)
    d = dbm_db.directory
    assert error_of(dbm_db, keydbprefix="Secret-stuff") == (
        f'iim_mux.keydbprefix: no NSS key database {d}/Secret-stuffkey3.db for '
        f'{d}/Secret-stuffcert8.db (keydbprefix "Secret-stuff"); key databases there: '
        f'This-Databasekey3.db')
    assert listing(dbm_db.directory) == before


def test_forced_format_that_is_absent(sql_db):
    d = sql_db.directory
    with pytest.raises(KeyMaterialError) as info:
        load_nss(f"dbm:{d}", certdbprefix="Secret-stuff", password=PASSWORD)
    assert str(info.value) == (
        f'iim_mux.certdbprefix: no NSS certificate database {d}/Secret-stuffcert8.db '
        f'(certdbprefix "Secret-stuff"); certificate databases there: Secret-stuffcert9.db')


def test_nul_in_password_is_refused_without_echo(sql_db):
    message = error_of(sql_db, password="abc\0def")
    assert message == "iim_mux.keystorepasswordfile: the value contains a NUL character"
