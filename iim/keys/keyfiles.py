"""Files of the key tooling: reading them with one-line errors, writing them safely.

Writing: every file is written to a temporary file in the target folder
(made by ``mkstemp``, so it is mode 0600 from its first byte), given its
final mode, flushed to disk, and then put in place in one step:
``os.link`` when the name must be new (it fails if the name exists, so two
commands racing cannot overwrite each other), ``os.replace`` with
``force``. A command that writes several files checks all their names
first and removes what it put in place if a later file fails.

Private keys are written only encrypted (``iim.keys.pbes2``), mode 0600;
password files are written in iim's format (``Internal (Software)
Token:password``), mode 0600. No message here contains a password.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .errors import KeyMaterialError
from .passwords import TOKEN_NAMES, PasswordFile, read_password_file
from .pbes2 import encrypt_private_key, pem

PRIVATE = 0o600
PUBLIC = 0o644
MIN_PASSWORD = 6              # keytool refuses shorter store passwords


class Output:
    """One file a command will write: ``path``, its bytes, its mode."""

    def __init__(self, path, data: bytes, mode: int = PUBLIC):
        self.path, self.data, self.mode = Path(path), data, mode


def check_new(paths, *, force: bool) -> None:
    """Refuse, before any work is done, to overwrite files without ``force``."""
    for path in map(Path, paths):
        if path.is_dir():
            raise KeyMaterialError(f"{path}: is a directory; give a file name")
        if path.exists() and not force:
            raise KeyMaterialError(f"{path}: already exists; remove it or use --force "
                                   "to replace it")
        if not path.parent.is_dir():
            raise KeyMaterialError(f"{path}: the folder {path.parent} does not exist")


def write_files(outputs, *, force: bool) -> None:
    """Write every output atomically, all or none (see the module docstring)."""
    outputs = list(outputs)
    check_new([o.path for o in outputs], force=force)
    placed: list[Path] = []
    try:
        for output in outputs:
            _write_one(output, force)
            placed.append(output.path)
    except BaseException:
        if not force:                 # what was new goes; replaced files cannot come back
            for path in placed:
                path.unlink(missing_ok=True)
        raise


def _write_one(output: Output, force: bool) -> None:
    path = output.path
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), output.mode)
            handle.write(output.data)
            handle.flush()
            os.fsync(handle.fileno())
        _place(temp, path, force)
    finally:
        Path(temp).unlink(missing_ok=True)


def _place(temp: str, path: Path, force: bool) -> None:
    try:
        if force:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    except FileExistsError:
        raise KeyMaterialError(f"{path}: already exists; remove it or use --force "
                               "to replace it") from None
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot write: {exc.strerror}") from None


def private_key_output(path, key, password: str) -> Output:
    """The key encrypted under ``password`` (PEM "ENCRYPTED PRIVATE KEY"), mode 0600."""
    return Output(path, pem(encrypt_private_key(key, password)), PRIVATE)


def password_file_output(path, password: str) -> Output:
    check_password(password)
    return Output(path, f"{TOKEN_NAMES[0]}:{password}\n".encode(), PRIVATE)


def check_password(password: str, what: str = "the password") -> None:
    if any(c in password for c in "\r\n\0"):
        raise KeyMaterialError(f"{what} contains a line break or NUL character")
    if len(password) < MIN_PASSWORD:
        raise KeyMaterialError(f"{what} is shorter than {MIN_PASSWORD} characters "
                               "(keytool's minimum)")


def read_password(path, option: str) -> PasswordFile:
    """A password file in iim's format; errors name ``option`` and the file."""
    pwfile = read_password_file(path, option)
    check_password(pwfile.password, f"{option}: {path}: the password")
    return pwfile


def read_private_key(path, pwfile: PasswordFile, option: str = "--key"):
    """An encrypted PEM private key, opened with the password of ``pwfile``."""
    data = _read(path, option)
    if b"PRIVATE KEY-----" not in data:
        raise KeyMaterialError(f"{option}: {path}: not a PEM private key file")
    if b"ENCRYPTED" not in data:      # PKCS#8 "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED"
        raise KeyMaterialError(f"{option}: {path}: the private key is not encrypted; "
                               "iim keeps keys encrypted (make it with gen-req or "
                               "build-ca, or encrypt it: openssl pkcs8 -topk8 -v2 aes-256-cbc)")
    try:
        return load_pem_private_key(data, pwfile.password.encode())
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{option}: {path}: wrong password (from {pwfile.path}) "
                               "or damaged key file") from None


def read_certificates(path, option: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file (a reply may be a chain), or one DER certificate."""
    data = _read(path, option)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        certs = []
    if not certs:
        raise KeyMaterialError(f"{option}: {path}: no certificate in it (PEM or DER expected)")
    return certs


def read_request(path, option: str = "CSR") -> x509.CertificateSigningRequest:
    """A PKCS#10 request, PEM (``keytool -certreq`` writes "NEW CERTIFICATE REQUEST") or DER."""
    data = _read(path, option)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data.replace(b"NEW CERTIFICATE REQUEST",
                                                       b"CERTIFICATE REQUEST"))
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise KeyMaterialError(f"{option}: {path}: not a certificate request "
                               "(PEM or DER PKCS#10 expected)") from None


def _read(path, option: str) -> bytes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{option}: {path}: no such file") from None
    except IsADirectoryError:
        raise KeyMaterialError(f"{option}: {path}: is a directory, not a file") from None
    except OSError as exc:
        raise KeyMaterialError(f"{option}: {path}: cannot read: {exc.strerror}") from None
    if not data.strip():
        raise KeyMaterialError(f"{option}: {path}: the file is empty")
    return data
