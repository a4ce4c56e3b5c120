"""Server keystores made by the real keytool load and serve a verified TLS handshake."""

import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import pki
from iim.keys.context import server_context
from iim.keys.errors import KeyMaterialError
from iim.keys.keystore import load_keystore
from keytool import add_key_entry, add_trusted, keytool, make_store
from tlsutil import handshake

DOMAIN = "chat.example.com"


def serve_and_verify(material, ca, hostname=DOMAIN):
    seen, version = handshake(server_context(material), ca.cert_pem(), hostname)
    assert seen == material.certificate
    assert version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("storetype", ["JKS", "PKCS12", "JCEKS"])
def test_rsa_store_loads_and_serves_tls(tmp_path, ca, storetype):
    store = tmp_path / "server.ks"
    leaf = make_store(store, ca, [DOMAIN], storetype=storetype)
    material = load_keystore(store, "storepw")
    assert isinstance(material.key, rsa.RSAPrivateKey)
    assert material.chain == (leaf, ca.cert)   # keytool completes the chain to the root
    assert material.trust_anchors == (ca.cert,)
    serve_and_verify(material, ca)


def test_jks_ec_key(tmp_path, ca):
    store = tmp_path / "ec.jks"
    make_store(store, ca, [DOMAIN], keyalg="EC")
    material = load_keystore(store, "storepw")
    assert isinstance(material.key, ec.EllipticCurvePrivateKey)
    assert material.key.curve.name == "secp256r1"
    serve_and_verify(material, ca)


def test_jks_key_password_differs_from_store_password(tmp_path, ca):
    store = tmp_path / "keypass.jks"
    make_store(store, ca, [DOMAIN], keypass="keypw-different")
    material = load_keystore(store, "storepw", key_password="keypw-different")
    serve_and_verify(material, ca)


def test_jks_wrong_key_password_is_named(tmp_path, ca):
    store = tmp_path / "keypass.jks"
    make_store(store, ca, [DOMAIN], keypass="keypw-different")
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "storepw", key_password="not-it")
    assert str(err.value) == (
        f'iim_server.sslkeystore: {store}: cannot decrypt the key of entry "server": '
        "wrong key password (iim_server.keypasswordfile)")
    assert "not-it" not in str(err.value)


@pytest.mark.parametrize("storetype", ["JKS", "PKCS12"])
def test_two_key_entries_pick_by_alias(tmp_path, ca, storetype):
    store = tmp_path / "two.ks"
    first = make_store(store, ca, ["one.example.com"], alias="First", storetype=storetype)
    second = add_key_entry(store, ca, "Second", ["two.example.com"], storetype=storetype)
    # keytool lower-cases JKS aliases; the operator may write them as they typed them
    assert load_keystore(store, "storepw", alias="Second").certificate == second
    assert load_keystore(store, "storepw", alias="first").certificate == first
    serve_and_verify(load_keystore(store, "storepw", alias="SECOND"), ca, "two.example.com")


@pytest.mark.parametrize("storetype,names", [("JKS", '"first", "second"'),
                                             ("PKCS12", '"first", "second"')])
def test_two_key_entries_without_alias_is_an_error(tmp_path, ca, storetype, names):
    store = tmp_path / "two.ks"
    make_store(store, ca, ["one.example.com"], alias="first", storetype=storetype)
    add_key_entry(store, ca, "second", ["two.example.com"], storetype=storetype)
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "storepw")
    assert str(err.value) == (f"iim_server.sslkeystore: {store}: holds 2 private-key entries "
                              f"({names}); set iim_server.keystorealias to choose one")


def test_unknown_alias_lists_the_entries(tmp_path, ca):
    store = tmp_path / "one.jks"
    make_store(store, ca, [DOMAIN])
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "storepw", alias="mux")
    assert str(err.value) == (f'iim_server.sslkeystore: {store}: no private-key entry with '
                              f'alias "mux"; key entries: "server"')


@pytest.mark.parametrize("storetype", ["JKS", "PKCS12"])
def test_chain_is_leaf_first_through_an_intermediate(tmp_path, ca, sub_ca, storetype):
    store = tmp_path / "chain.ks"
    add_trusted(store, ca.cert, "root", storetype=storetype)
    leaf = add_key_entry(store, sub_ca, "server", [DOMAIN], storetype=storetype)
    material = load_keystore(store, "storepw")
    assert material.chain[:2] == (leaf, sub_ca.cert)
    assert material.chain[2:] in ((), (ca.cert,))     # keytool may add the root
    assert material.trust_anchors == (ca.cert,)
    serve_and_verify(material, ca)


@pytest.mark.parametrize("storetype", ["JKS", "PKCS12"])
def test_several_trusted_entries_become_anchors(tmp_path, ca, storetype):
    other = pki.CA.root("partner CA")
    store = tmp_path / "anchors.ks"
    make_store(store, ca, [DOMAIN], storetype=storetype)
    add_trusted(store, other.cert, "partner", storetype=storetype)
    anchors = load_keystore(store, "storepw").trust_anchors
    assert sorted(a.subject.rfc4514_string() for a in anchors) == [
        "CN=iim test CA,O=iim tests", "CN=partner CA,O=iim tests"]


@pytest.mark.parametrize("storetype", ["JKS", "PKCS12"])
def test_wrong_store_password(tmp_path, ca, storetype):
    store = tmp_path / "s.ks"
    make_store(store, ca, [DOMAIN], storetype=storetype)
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "Wrong-Secret-77")
    expected = {"JKS": "wrong keystore password (iim_server.keystorepasswordfile)",
                "PKCS12": "wrong keystore password (iim_server.keystorepasswordfile) "
                          "or damaged PKCS#12 file"}[storetype]
    assert str(err.value) == f"iim_server.sslkeystore: {store}: {expected}"
    assert "Wrong-Secret-77" not in str(err.value)


def test_format_is_told_by_content_not_name(tmp_path, ca):
    store = tmp_path / "looks-like.p12"          # a JKS store with a misleading name
    make_store(store, ca, [DOMAIN], storetype="JKS")
    assert store.read_bytes()[:4] == b"\xfe\xed\xfe\xed"
    assert load_keystore(store, "storepw").source == f"JKS {store}"


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"-----BEGIN CERTIFICATE-----\n", "not a JKS, JCEKS or PKCS#12 keystore"),
    (b"\x30\x03\x02\x01\x03", "wrong keystore password (iim_server.keystorepasswordfile) "
                             "or damaged PKCS#12 file"),
])
def test_not_a_keystore(tmp_path, content, message):
    store = tmp_path / "bad.ks"
    store.write_bytes(content)
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "pw")
    assert str(err.value) == f"iim_server.sslkeystore: {store}: {message}"


def test_truncated_jks(tmp_path, ca):
    store = tmp_path / "cut.jks"
    make_store(store, ca, [DOMAIN])
    store.write_bytes(store.read_bytes()[:200])
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "storepw")
    assert str(err.value).startswith(f"iim_server.sslkeystore: {store}: damaged JKS keystore (")


def test_missing_keystore(tmp_path):
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(tmp_path / "nope.jks", "pw")
    assert str(err.value) == f"iim_server.sslkeystore: {tmp_path / 'nope.jks'}: no such file"


def test_key_password_differs_and_no_key_password_file(tmp_path, ca):
    store = tmp_path / "keypass.jks"
    make_store(store, ca, [DOMAIN], keypass="keypw-different")
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "storepw")
    assert str(err.value) == (
        f'iim_server.sslkeystore: {store}: the key of entry "server" has a password other '
        "than the store password: set iim_server.keypasswordfile")


@pytest.mark.parametrize("storetype", ["JKS", "JCEKS", "PKCS12"])
def test_damaged_store_is_one_clear_line_whatever_the_damage(tmp_path, ca, storetype):
    store = tmp_path / "s.ks"
    make_store(store, ca, [DOMAIN], storetype=storetype)
    if storetype == "JCEKS":
        store = _jceks_with_few_pbe_rounds(store)
    good = store.read_bytes()
    rng = random.Random(7)
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        store.write_bytes(bytes(data[:rng.randint(4, len(data))]))
        try:
            load_keystore(store, "storepw")
        except KeyMaterialError as err:
            assert str(err).startswith(f"iim_server.sslkeystore: {store}: ")
            assert "\n" not in str(err) and "storepw" not in str(err)


def _jceks_with_few_pbe_rounds(store):
    """The store copied by keytool into a JCEKS store whose key is protected
    with 10,000 PBE rounds (the least the JDK allows) instead of 200,000: pyjks
    derives the key's 3DES key in Python, 0.2 s at 200,000 rounds for each of
    the ~50 damaged copies that still reach the key entry; the damage and what
    is checked stay the same."""
    copy = store.with_name("few-rounds.jceks")
    keytool("-J-Djdk.jceks.iterationCount=10000", "-importkeystore", "-srckeystore", str(store),
            "-srcstorepass", "storepw", "-destkeystore", str(copy), "-deststoretype", "JCEKS",
            "-deststorepass", "storepw", "-noprompt")
    return copy


def test_jceks_wrong_password(tmp_path, ca):
    store = tmp_path / "s.jceks"
    make_store(store, ca, [DOMAIN], storetype="JCEKS")
    with pytest.raises(KeyMaterialError) as err:
        load_keystore(store, "nope")
    assert str(err.value) == (f"iim_server.sslkeystore: {store}: wrong keystore password "
                              "(iim_server.keystorepasswordfile)")


def test_pkcs12_chain_ca_is_not_an_anchor_once_its_trusted_entry_is_deleted(tmp_path):
    # A DN with emailAddress: Java writes it as 1.2.840.113549.1.9.1=#16..., not as we do.
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    root = pki.CA.root("Email CA")
    named = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Email CA"),
                       x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ca@example.com")])
    root.cert = (x509.CertificateBuilder().subject_name(named).issuer_name(named)
                 .public_key(root.key.public_key()).serial_number(5)
                 .not_valid_before(pki.NOW - pki.DAY).not_valid_after(pki.NOW + pki.DAY)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .sign(root.key, pki.hashes.SHA256()))
    store = tmp_path / "s.p12"
    make_store(store, root, [DOMAIN], storetype="PKCS12")
    assert load_keystore(store, "storepw").trust_anchors == (root.cert,)
    keytool("-delete", "-keystore", str(store), "-storepass", "storepw", "-alias", "iim-test-ca")
    assert load_keystore(store, "storepw").trust_anchors == ()
