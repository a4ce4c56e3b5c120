"""Keystores made the way operators make them: with the real JDK keytool.

``make_store`` follows the product's procedure: generate a key pair in the
store, write a certificate request, have the CA sign it, import the CA root
as a trusted entry, import the signed reply.
"""

from __future__ import annotations

import atexit
import ipaddress
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

KEYTOOL = shutil.which("keytool") or "/usr/bin/keytool"


# keytool runs briefly, so the JVM's start dominates: the C1 compiler alone and
# the serial collector start it about a third faster, and change nothing it writes.
FAST_START = ("-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC")


def keytool(*args: str) -> str:
    proc = subprocess.run([KEYTOOL, *FAST_START, *args], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode:
        raise RuntimeError(f"keytool {' '.join(args[:1])} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def add_key_entry(store: Path, ca, alias: str, names, *, storetype="JKS", storepass="storepw",
                  keypass=None, keyalg="RSA", **signing) -> x509.Certificate:
    """genkeypair -> certreq -> CA signs -> importcert reply; returns the leaf."""
    keypass = keypass or storepass
    common = ["-keystore", str(store), "-storetype", storetype, "-storepass", storepass]
    size = ["-groupname", "secp256r1"] if keyalg == "EC" else ["-keysize", "2048"]
    keytool("-genkeypair", *common, "-keypass", keypass, "-alias", alias, "-keyalg", keyalg,
            *size, "-dname", f"CN={names[0]}, O=iim tests", "-validity", "30")
    csr_path = store.with_name(f"{alias}.csr")
    keytool("-certreq", *common, "-keypass", keypass, "-alias", alias, "-file", str(csr_path))
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    leaf = ca.sign_csr(csr, *names, **signing)
    reply = store.with_name(f"{alias}.reply.pem")
    issuers = ((ca.cert,) + ca.parents[:-1]) if ca.parents else ()
    reply.write_bytes(_pem(leaf) + b"".join(_pem(c) for c in issuers))
    keytool("-importcert", *common, "-keypass", keypass, "-alias", alias, "-file", str(reply),
            "-noprompt")
    return leaf


def add_trusted(store: Path, cert: x509.Certificate, alias: str, *, storetype="JKS",
                storepass="storepw") -> None:
    path = store.with_name(f"{alias}.pem")
    path.write_bytes(_pem(cert))
    keytool("-importcert", "-keystore", str(store), "-storetype", storetype,
            "-storepass", storepass, "-alias", alias, "-file", str(path), "-noprompt",
            "-trustcacerts")


def make_store(store: Path, ca, names, *, alias="Server", storetype="JKS", storepass="storepw",
               keypass=None, keyalg="RSA", **signing) -> x509.Certificate:
    """A store with the CA root trusted and one signed key entry; returns the leaf.

    keytool runs four times for it (a JVM start each), so a new ``store`` is a
    copy of the one made before with the same parameters in this run (same CA,
    names, alias, type, passwords, key algorithm, signing options), key and
    leaf included; a store that already exists gets the entries added for real."""
    params = dict(alias=alias, storetype=storetype, storepass=storepass, keypass=keypass,
                  keyalg=keyalg, **signing)
    if store.exists():
        return _make_store(store, ca, names, **params)
    key = (_identity(ca), tuple(names), repr(sorted(params.items())))
    if key not in _stores:
        _stores[key] = _made_once(store.name, ca, names, params)
    folder, name, leaf = _stores[key]
    store.parent.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():                 # the store and its side files (CA, CSR, reply)
        shutil.copyfile(path, store if path.name == name else store.with_name(path.name))
    return leaf


_stores: dict[tuple, tuple[Path, str, x509.Certificate]] = {}  # -> (folder, store name, leaf)
_cache_root: Path | None = None


def _made_once(name: str, ca, names, params: dict) -> tuple[Path, str, x509.Certificate]:
    """The store made by keytool in a folder of this process's cache."""
    global _cache_root
    if _cache_root is None:
        _cache_root = Path(tempfile.mkdtemp(prefix="iim-keystores-"))
        atexit.register(shutil.rmtree, _cache_root, True)
    folder = _cache_root / str(len(_stores))
    folder.mkdir()
    return folder, name, _make_store(folder / name, ca, names, **params)


def _identity(ca) -> tuple[bytes, ...]:
    """The CA chain by certificate fingerprints (the signer's key goes with its certificate)."""
    return tuple(c.fingerprint(hashes.SHA256()) for c in (ca.cert, *ca.parents))


def _make_store(store: Path, ca, names, *, alias="Server", storetype="JKS", storepass="storepw",
                keypass=None, keyalg="RSA", **signing) -> x509.Certificate:
    add_trusted(store, ca.root_cert, "iim-test-ca", storetype=storetype, storepass=storepass)
    return add_key_entry(store, ca, alias, names, storetype=storetype, storepass=storepass,
                         keypass=keypass, keyalg=keyalg, **signing)


def list_aliases(store: Path, storepass="storepw") -> str:
    return keytool("-list", "-keystore", str(store), "-storepass", storepass)


class KeytoolCA:
    """A certificate authority made and run by the real keytool, as the JDK's
    keytool documentation makes one: ``keytool -genkeypair -ext bc:c`` (by
    default basicConstraints alone, no keyUsage), requests signed with
    ``keytool -gencert``. Its keys are EC P-256: keytool makes one in a tenth of
    the time of an RSA-2048 key, and nothing checked here depends on the kind.

    It has the face of ``pki.CA`` that ``make_store`` and ``live.LiveServer``
    use (``cert``, ``parents``, ``root_cert``, ``sign_csr``), so a server's
    keystore can come from it unchanged. ``exts`` are keytool ``-ext`` values
    for the CA's own certificate (``"ku:c=keyCertSign"``, ``"bc:c=ca:true,pathlen:0"``...).
    """

    PASS = "ca-store-pw"

    def __init__(self, store: Path, cert: x509.Certificate, parents=()):
        self.store, self.cert, self.parents = store, cert, tuple(parents)

    @classmethod
    def root(cls, folder: Path, cn: str = "iim keytool CA", exts=("bc:c",)) -> "KeytoolCA":
        store = cls._new_store(folder, cn, exts)
        return cls(store, cls._export(store))

    def intermediate(self, folder: Path, cn: str = "iim keytool intermediate CA",
                     exts=("bc:c",)) -> "KeytoolCA":
        """A CA whose certificate this one signs, with ``exts`` asked for by the signer."""
        store = self._new_store(folder, cn, ())
        csr = store.with_suffix(".csr")
        keytool("-certreq", *self._common(store), "-alias", "ca", "-file", str(csr))
        cert = self._gencert(csr, exts)
        # The signed certificate is not imported back: -gencert takes the
        # issuer's name and key identifier from the key entry, which are the same.
        return KeytoolCA(store, cert, (self.cert,) + self.parents)

    def sign_csr(self, csr: x509.CertificateSigningRequest, *names: str,
                 exts=()) -> x509.Certificate:
        """``keytool -gencert`` for ``names`` (DNS names or IP literals) as subjectAltNames."""
        path = self.store.with_name(f"req-{len(list(self.store.parent.glob('req-*')))}.csr")
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        sans = ",".join(f"ip:{n}" if _is_ip(n) else f"dns:{n}" for n in names)
        return self._gencert(path, ((f"san={sans}",) if sans else ()) + tuple(exts))

    def issue(self, *names: str, exts=("eku=serverAuth,clientAuth",)):
        """A ``pki.Issued`` for a server configured with PEM files (ejabberd,
        Prosody): key and request made as with openssl, the certificate signed by
        ``keytool -gencert``, with ``names`` as subjectAltNames."""
        from pki import Issued, new_key
        key = new_key()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name.from_rfc4514_string(f"O=iim tests,CN={names[0]}"))
               .sign(key, hashes.SHA256()))
        cert = self.sign_csr(csr, *names, exts=exts)
        issuers = ((self.cert,) + self.parents[:-1]) if self.parents else ()
        return Issued(key, cert, (cert,) + issuers)

    @property
    def root_cert(self) -> x509.Certificate:
        return self.parents[-1] if self.parents else self.cert

    def cert_pem(self) -> bytes:
        return _pem(self.root_cert)

    @classmethod
    def _new_store(cls, folder: Path, cn: str, exts) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        store = folder / f"{cn.replace(' ', '-')}.p12"
        keytool("-genkeypair", *cls._common(store), "-alias", "ca", "-keyalg", "EC",
                "-groupname", "secp256r1", "-dname", f"CN={cn}, O=iim tests", "-validity", "30",
                *_ext_args(exts))
        return store

    def _gencert(self, csr: Path, exts) -> x509.Certificate:
        out = csr.with_suffix(".crt.pem")
        keytool("-gencert", *self._common(self.store), "-alias", "ca", "-infile", str(csr),
                "-outfile", str(out), "-rfc", "-validity", "30", *_ext_args(exts))
        return x509.load_pem_x509_certificate(out.read_bytes())

    @classmethod
    def _common(cls, store: Path) -> list[str]:
        return ["-keystore", str(store), "-storetype", "PKCS12", "-storepass", cls.PASS,
                "-keypass", cls.PASS]

    @classmethod
    def _export(cls, store: Path) -> x509.Certificate:
        """The CA's certificate, read from the store (saves a JVM start over -exportcert)."""
        return pkcs12.load_key_and_certificates(store.read_bytes(), cls.PASS.encode())[1]


def _ext_args(exts) -> list[str]:
    return [arg for ext in exts for arg in ("-ext", ext)]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
