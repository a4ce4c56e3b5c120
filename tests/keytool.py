"""Keystores made the way operators make them: with the real JDK keytool.

``make_store`` follows the product's procedure: generate a key pair in the
store, write a certificate request, have the CA sign it, import the CA root
as a trusted entry, import the signed reply.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

KEYTOOL = shutil.which("keytool") or "/usr/bin/keytool"


def keytool(*args: str) -> str:
    proc = subprocess.run([KEYTOOL, *args], capture_output=True, text=True, timeout=60)
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
    """A store with the CA root trusted and one signed key entry; returns the leaf."""
    add_trusted(store, ca.root_cert, "iim-test-ca", storetype=storetype, storepass=storepass)
    return add_key_entry(store, ca, alias, names, storetype=storetype, storepass=storepass,
                         keypass=keypass, keyalg=keyalg, **signing)


def list_aliases(store: Path, storepass="storepw") -> str:
    return keytool("-list", "-keystore", str(store), "-storepass", storepass)
