"""Keystores made the way operators make them: with the real JDK keytool.

``make_store`` follows the product's procedure: generate a key pair in the
store, write a certificate request, have the CA sign it, import the CA root
as a trusted entry, import the signed reply.

Theory of operation: a keytool run is a JVM start (about 1.3 CPU-seconds)
for a few milliseconds of work, and the suite runs hundreds. So each test
process runs all its keytool commands in one JVM: tests/KeytoolBatch.java,
compiled once by the JDK's javac into a cache folder, hands each command's
arguments to ``sun.security.tools.keytool.Main.main`` -- the very method the
``keytool`` launcher calls -- and returns its exit status and what it wrote.
It is still the real keytool: the JDK's own code, the same JDK, the same
arguments, the same output, exit status and files, in a JVM made as the
launcher makes it (the keytool package exported to the class, as the
launcher's java.base module has it). Its ``System.exit(1)`` on an error ends
the command, not the JVM (see the Java file). A command with launcher
options (``-J-D...``), or given from another working directory or environment
than the JVM's (relative paths, ``-storepass:env``, locale), runs the
launcher itself, as does every command when javac is missing.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import locale
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

KEYTOOL = shutil.which("keytool") or "/usr/bin/keytool"
TIMEOUT = 60                    # seconds a command may take


# keytool runs briefly, so the JVM's start dominates: the C1 compiler alone and
# the serial collector start it about a third faster, and change nothing it writes.
FAST_START = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# The batch JVM lives for the whole test process: it keeps the C2 compiler, which
# makes its later RSA key generations several times cheaper.
BATCH_JVM = ("-XX:+UseSerialGC",)


def keytool(*args: str) -> str:
    status, out, err = _run(args)
    if status:
        raise RuntimeError(f"keytool {_command(args)} failed: {out}{err}")
    return out


def _run(args) -> tuple[int, str, str]:
    with _Batch.lock:
        batch = _Batch.current(args)
        if batch is not None:
            return batch.run(args)
    proc = subprocess.run([KEYTOOL, *(f"-J{flag}" for flag in FAST_START), *args],
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


def _command(args) -> str:
    return " ".join([arg for arg in args if not arg.startswith("-J")][:1])


class _Batch:
    """This process's keytool JVM (tests/KeytoolBatch.java) and its pipes."""

    lock = threading.Lock()
    _jvm: _Batch | None = None
    _classes: Path | None | bool = False        # False: not looked for yet

    @classmethod
    def current(cls, args) -> _Batch | None:
        """The JVM for ``args`` from here and now, started if need be; None when
        the launcher must run them (-J options, other directory or environment,
        no javac)."""
        if any(arg.startswith("-J") for arg in args):
            return None
        jvm = cls._jvm
        if jvm is not None and jvm.pid == os.getpid() and jvm.proc.poll() is None:
            return jvm if jvm.serves_here() else None   # kept for the commands that fit
        if cls._classes is False:
            cls._classes = _compiled()
        if cls._classes is not None:
            cls._jvm = cls(cls._classes)
            return cls._jvm
        return None

    def __init__(self, classes: Path):
        java = Path(os.path.realpath(KEYTOOL)).with_name("java")
        self.cwd, self.env, self.pid = os.getcwd(), _env(), os.getpid()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(java), *BATCH_JVM, "--add-exports", f"{_PACKAGE}=ALL-UNNAMED",
             "-cp", str(classes), "KeytoolBatch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.pending = b""
        atexit.register(self.close)

    def serves_here(self) -> bool:
        return self.cwd == os.getcwd() and self.env == _env()

    def run(self, args) -> tuple[int, str, str]:
        fields = [str(len(args)).encode(), *map(os.fsencode, args)]
        try:
            self.proc.stdin.write(b"".join(f + b"\0" for f in fields))
            self.proc.stdin.flush()
            deadline = time.monotonic() + TIMEOUT
            status, out_size, err_size, *ending = self._read_line(deadline).split()
            out, err = self._read(int(out_size), deadline), self._read(int(err_size), deadline)
            if ending:                          # keytool's exit ended it (no security manager)
                self.proc.wait(TIMEOUT)
        except (OSError, ValueError, EOFError, TimeoutError, subprocess.TimeoutExpired) as exc:
            self.close()
            raise RuntimeError(f"keytool {_command(args)}: the keytool JVM failed ({exc!r}): "
                               f"{self._jvm_said()}") from None
        return int(status), _text(out), _text(err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _read_line(self, deadline: float) -> bytes:
        while b"\n" not in self.pending:
            self._fill(deadline)
        line, _, self.pending = self.pending.partition(b"\n")
        return line

    def _read(self, size: int, deadline: float) -> bytes:
        while len(self.pending) < size:
            self._fill(deadline)
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def _fill(self, deadline: float) -> None:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError(f"no answer in {TIMEOUT} s")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError("the JVM ended")
        self.pending += chunk

    def _jvm_said(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode(errors="replace")


_PACKAGE = "java.base/sun.security.tools.keytool"
_SOURCE = Path(__file__).with_name("KeytoolBatch.java")


def _compiled() -> Path | None:
    """The folder of KeytoolBatch's classes, compiled by javac on first use
    (one folder per source text and JDK, shared by processes and runs)."""
    bin_dir = Path(os.path.realpath(KEYTOOL)).parent
    javac = bin_dir / "javac"
    if not javac.exists() or not (bin_dir / "java").exists():
        return None
    tag = hashlib.sha256(_SOURCE.read_bytes() + bytes(bin_dir)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"iim-keytool-batch-{os.getuid()}-{tag}"
    if (folder / "KeytoolBatch.class").exists():
        return folder
    building = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
    proc = subprocess.run([str(javac), *(f"-J{flag}" for flag in FAST_START),
                           "--add-exports", f"{_PACKAGE}=ALL-UNNAMED", "-d", str(building),
                           str(_SOURCE)], capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"javac {_SOURCE} failed: {proc.stdout}{proc.stderr}")
    try:
        building.rename(folder)                 # whole, or not at all
    except OSError:                             # another process's is there
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _env() -> dict[str, str]:
    """The environment as the JVM would see it (pytest's note of the test aside)."""
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _text(data: bytes) -> str:
    """What ``text=True`` makes of a child's output."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


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
