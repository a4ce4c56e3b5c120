# cython: language_level=3
"""Read a key, its chain and the trusted CAs out of an NSS database.

Theory of operation
-------------------
This is the only module that touches libnss3. It does one thing: open an NSS
database (sql cert9/key4 or legacy dbm cert8/key3), log in to its key slot,
and copy out what iim needs as DER bytes. Everything else (deciding the
format, messages, turning DER into cryptography objects) is done in Python
by ``iim.keys.nss``.

*Read-only.* The database belongs to the administrator and may be shared
with the NSS tools or another product. ``NSS_INIT_READONLY`` means NSS never
writes to it: no upgrade from dbm to sql, no new empty databases when a
prefix is wrong (opened read-write, NSS creates what it cannot find). The
caller still checks that the files exist before NSS is called: NSS's own
error for a missing dbm file is SEC_ERROR_LEGACY_DATABASE ("old, unsupported
format"), which sends an administrator the wrong way.
``NSS_INIT_NOROOTINIT`` keeps the built-in Mozilla roots out: only CAs the
administrator put in this database are trust anchors.

*Why the key is exported encrypted.* Keys imported with pk12util (and keys
NSS generates) are marked sensitive: the token refuses to hand out their
clear value, so ``PK11_ExportDERPrivateKeyInfo`` fails. What a token will do
is wrap the key in a PKCS#8 EncryptedPrivateKeyInfo. We ask for PBES2
(PBKDF2-HMAC-SHA256, AES-256-CBC) under a one-time random password the
caller generates per call, DER-encode it, and let the caller decrypt it with
cryptography. The clear key exists only in this process's memory, never on
disk, and the one-time password protects nothing once the call returns.

*Why the lock.* NSS keeps its state (loaded modules, the password callback,
the default certificate database, the internal key slot) in process
globals, and ``PK11_GetInternalKeySlot`` and the nickname search look at
whatever databases are open. So one database is open at a time: a reader
takes ``_lock``, opens its database with ``NSS_InitContext``, reads, and
closes it with ``NSS_ShutdownContext`` before letting go. Every NSS object
taken is released before the shutdown; a leak would make the shutdown fail
with SEC_ERROR_BUSY and leave the database open, which is reported as an
error rather than ignored. If NSS is already initialised by someone else in
the process, we refuse rather than search their databases.

*Passwords.* ``PK11_CheckUserPassword`` logs in with the given password.
A password callback is also installed for logins NSS may start by itself;
it returns the password once and NULL on a retry, so a wrong password can
never loop.

*Writing* (``write``, for ``iim.admin keys make-nssdb``) is the one place
the database is opened read-write, and only to make a new one: NSS creates
the cert/key databases under the given prefixes, ``PK11_InitPin`` sets the
password of the fresh key database (a database whose password was already
set is refused: stage "not-new"), and after logging in the key is imported
from its clear PKCS#8 encoding, which exists only in this process's memory,
as a permanent, private and sensitive token object labelled with the
nickname. NSS gives the key the id of its public value (the RSA modulus,
the EC point), so the certificate imported next under the same nickname is
paired with it and lists as a user certificate ("u,u,u"). CA certificates
follow with the trust ``certutil -t`` would give them ("C,," for the root,
none for intermediates). The Python caller (``iim.keys.nsswrite``) checks
beforehand that no database is there and removes the files NSS created if a
step fails.
"""

import threading

from cpython.bytes cimport PyBytes_FromStringAndSize

from iim.includes.nss cimport *
from iim.includes.nss_write cimport *

_lock = threading.Lock()

# Trust flags that certutil -t writes for "C" (trusted CA for servers) and
# "T" (trusted CA for clients); "c" (valid CA) alone is not trust.
TRUSTED_CA_FLAGS = CERTDB_TRUSTED_CA | CERTDB_TRUSTED_CLIENT_CA

# Reading never writes (see above); writing creates what it cannot find.
# Neither loads the built-in Mozilla roots.
cdef PRUint32 READ_FLAGS = NSS_INIT_READONLY | NSS_INIT_NOROOTINIT | NSS_INIT_OPTIMIZESPACE
cdef PRUint32 WRITE_FLAGS = NSS_INIT_NOROOTINIT | NSS_INIT_OPTIMIZESPACE

NSS_InitializePRErrorTable()


class NSSError(Exception):
    """An NSS step failed.

    ``stage`` names the step ("in-use", "init", "login", "nickname", "key",
    "export", "encode", "chain", "shutdown"; when writing also "not-new",
    "password", "import-key", "import-cert", "trust"), ``code`` is PORT_GetError() at
    the time, ``name``/``text`` are NSS's own name and description of it.
    For "nickname", ``user_nicknames`` lists the certificates with keys.
    """

    def __init__(self, stage, code, user_nicknames=()):
        self.stage = stage
        self.code = code
        self.name = error_name(code)
        self.text = error_text(code)
        self.user_nicknames = tuple(user_nicknames)
        super().__init__(f"{stage}: {self.name} ({self.text})")


class Contents:
    """What was read: the wrapped key and certificates, all DER bytes."""

    __slots__ = ("encrypted_key", "chain", "certificates", "nickname")

    def __init__(self, encrypted_key, chain, certificates, nickname):
        self.encrypted_key = encrypted_key   # PKCS#8 EncryptedPrivateKeyInfo
        self.chain = chain                   # DER, the leaf first, as NSS built it
        self.certificates = certificates     # ((DER, nickname, sslFlags), ...)
        self.nickname = nickname


def nss_version():
    """The version of the libnss3 this extension runs with."""
    return NSS_GetVersion().decode("ascii")


def error_name(int code):
    cdef const char *name = PR_ErrorToName(code)
    return name.decode("ascii", "replace") if name != NULL else f"NSS error {code}"


def error_text(int code):
    cdef const char *text = PR_ErrorToString(code, PR_LANGUAGE_I_DEFAULT)
    return text.decode("utf-8", "replace") if text != NULL else "unknown error"


cdef struct _Login:
    const char *password


cdef char *_password_callback(PK11SlotInfo *slot, PRBool retry, void *arg) noexcept nogil:
    if retry or arg == NULL:
        return NULL
    return PORT_Strdup((<_Login *>arg).password)


def read(bytes configdir, bytes certprefix, bytes keyprefix, bytes secmod,
         bytes nickname, bytes password, bytes transport_password, int iterations):
    """Open ``configdir`` ("sql:DIR" or "dbm:DIR") read-only and read it.

    Returns :class:`Contents`: the private key of ``nickname`` wrapped under
    ``transport_password`` (PBES2), its chain as NSS builds it, and every
    certificate in the database with its SSL trust flags. Raises
    :class:`NSSError`. The database is closed again before returning.
    """
    with _lock:
        context = _open(configdir, certprefix, keyprefix, secmod, READ_FLAGS)
        try:
            contents = _read_open(nickname, password, transport_password, iterations)
        except BaseException:
            _close(context, raise_busy=False)
            raise
        _close(context, raise_busy=True)
        return contents


cdef class _Context:
    """Owns an NSSInitContext between _open and _close."""
    cdef NSSInitContext *context

    @staticmethod
    cdef _Context wrap(NSSInitContext *context):
        cdef _Context self = _Context.__new__(_Context)
        self.context = context
        return self


def write(bytes configdir, bytes certprefix, bytes keyprefix, bytes secmod,
          bytes password, bytes key_pkcs8, bytes public_value, bytes nickname,
          tuple certificates):
    """Create a database in ``configdir`` ("sql:DIR" or "dbm:DIR") and fill it.

    ``password`` becomes the key database password. ``key_pkcs8`` (a clear
    PKCS#8 PrivateKeyInfo, DER) is imported under ``nickname``;
    ``public_value`` is its public value (RSA modulus or EC point), from
    which NSS makes the key's id. ``certificates`` is ``((DER, nickname,
    trust), ...)``, the key's certificate first; ``trust`` is a certutil
    trust string such as b"C,," or None. Raises :class:`NSSError`.
    """
    with _lock:
        context = _open(configdir, certprefix, keyprefix, secmod, WRITE_FLAGS)
        try:
            _write_open(password, key_pkcs8, public_value, nickname, certificates)
        except BaseException:
            _close(context, raise_busy=False)
            raise
        _close(context, raise_busy=True)


cdef _write_open(bytes password, bytes key_pkcs8, bytes public_value, bytes nickname,
                 tuple certificates):
    cdef _Login login
    login.password = password
    cdef PK11SlotInfo *slot = PK11_GetInternalKeySlot()
    if slot == NULL:
        raise NSSError("init", PORT_GetError())
    try:
        _set_password(slot, password)
        _log_in(slot, &login)
        _import_key(slot, key_pkcs8, public_value, nickname, &login)
        _import_user_certificate(slot, certificates[0][0], nickname, &login)
        for der, cert_nickname, trust in certificates[1:]:
            _import_certificate(slot, der, cert_nickname, trust)
    finally:
        PK11_Logout(slot)
        PK11_FreeSlot(slot)


cdef _set_password(PK11SlotInfo *slot, bytes password):
    """The first password of a new key database (what certutil -N sets)."""
    cdef SECStatus status
    cdef const char *c_password = password
    if not PK11_NeedUserInit(slot):
        raise NSSError("not-new", 0)
    with nogil:
        status = PK11_InitPin(slot, NULL, c_password)
    if status != SECSuccess:
        raise NSSError("password", PORT_GetError())


cdef _import_key(PK11SlotInfo *slot, bytes key_pkcs8, bytes public_value, bytes nickname,
                 _Login *login):
    cdef SECItem der = _item(key_pkcs8)
    cdef SECItem label = _item(nickname)
    cdef SECItem public = _item(public_value)
    cdef SECKEYPrivateKey *key = NULL
    cdef SECStatus status
    with nogil:
        status = PK11_ImportDERPrivateKeyInfoAndReturnKey(
            slot, &der, &label, &public, PR_TRUE, PR_TRUE, KU_ALL, &key, login)
    if status != SECSuccess:
        raise NSSError("import-key", PORT_GetError())
    SECKEY_DestroyPrivateKey(key)


cdef _import_user_certificate(PK11SlotInfo *slot, bytes der, bytes nickname, _Login *login):
    """The key's certificate, as pk12util imports it: the public key is
    stored too (an sql database lists a certificate as a user certificate,
    "u,u,u", only when it finds the public key without logging in), then
    the certificate is tied to the key."""
    cdef SECItem item = _item(der)
    cdef char *c_nickname = nickname
    cdef SECKEYPublicKey *public = NULL
    cdef SECStatus status
    cdef CERTCertificate *cert = CERT_NewTempCertificate(CERT_GetDefaultCertDB(), &item,
                                                         NULL, PR_FALSE, PR_TRUE)
    if cert == NULL:
        raise NSSError("import-cert", PORT_GetError())
    try:
        public = CERT_ExtractPublicKey(cert)
        if public == NULL:
            raise NSSError("import-cert", PORT_GetError())
        PK11_ImportPublicKey(slot, public, PR_TRUE)     # as pk12util: not fatal
        with nogil:
            status = PK11_ImportCertForKeyToSlot(slot, cert, c_nickname, PR_TRUE, login)
        if status != SECSuccess:
            raise NSSError("import-cert", PORT_GetError())
    finally:
        if public != NULL:
            SECKEY_DestroyPublicKey(public)
        CERT_DestroyCertificate(cert)


cdef _import_certificate(PK11SlotInfo *slot, bytes der, bytes nickname, trust):
    """certutil -A: a temporary certificate made permanent, then its trust."""
    cdef SECItem item = _item(der)
    cdef CERTCertTrust flags
    cdef CERTCertificate *cert = CERT_NewTempCertificate(CERT_GetDefaultCertDB(), &item,
                                                         NULL, PR_FALSE, PR_TRUE)
    if cert == NULL:
        raise NSSError("import-cert", PORT_GetError())
    try:
        if PK11_ImportCert(slot, cert, CK_INVALID_HANDLE, nickname, PR_FALSE) != SECSuccess:
            raise NSSError("import-cert", PORT_GetError())
        if trust is None:
            return
        if CERT_DecodeTrustString(&flags, <bytes>trust) != SECSuccess:
            raise NSSError("trust", PORT_GetError())
        if CERT_ChangeCertTrust(CERT_GetDefaultCertDB(), cert, &flags) != SECSuccess:
            raise NSSError("trust", PORT_GetError())
    finally:
        CERT_DestroyCertificate(cert)


cdef SECItem _item(bytes data):
    """A SECItem over ``data``'s buffer (valid while ``data`` lives)."""
    cdef SECItem item
    item.type = siBuffer
    item.data = <unsigned char *><char *>data
    item.len = len(data)
    return item


cdef _Context _open(bytes configdir, bytes certprefix, bytes keyprefix, bytes secmod,
                   PRUint32 flags):
    cdef NSSInitContext *context
    cdef const char *c_dir = configdir
    cdef const char *c_cert = certprefix
    cdef const char *c_key = keyprefix
    cdef const char *c_secmod = secmod
    if NSS_IsInitialized():
        raise NSSError("in-use", 0)
    with nogil:
        context = NSS_InitContext(c_dir, c_cert, c_key, c_secmod, NULL, flags)
    if context == NULL:
        raise NSSError("init", PORT_GetError())
    PK11_SetPasswordFunc(_password_callback)
    return _Context.wrap(context)


cdef _close(_Context context, bint raise_busy):
    cdef SECStatus status
    with nogil:
        status = NSS_ShutdownContext(context.context)
    context.context = NULL
    PK11_SetPasswordFunc(NULL)
    if status != SECSuccess and raise_busy:
        raise NSSError("shutdown", PORT_GetError())


cdef _read_open(bytes nickname, bytes password, bytes transport_password, int iterations):
    cdef _Login login
    login.password = password
    cdef PK11SlotInfo *slot = PK11_GetInternalKeySlot()
    cdef CERTCertificate *cert = NULL
    if slot == NULL:
        raise NSSError("init", PORT_GetError())
    try:
        _log_in(slot, &login)
        cert = _find_certificate(nickname, &login)
        encrypted_key = _export_key(slot, cert, transport_password, iterations, &login)
        chain = _chain(cert)
        found = (<char *>cert.nickname).decode("utf-8", "replace")
        certificates = _list_certificates(PK11CertListAll, &login)
        return Contents(encrypted_key, chain, certificates, found)
    finally:
        if cert != NULL:
            CERT_DestroyCertificate(cert)
        PK11_Logout(slot)
        PK11_FreeSlot(slot)


cdef _log_in(PK11SlotInfo *slot, _Login *login):
    cdef SECStatus status
    if not PK11_NeedLogin(slot):
        return
    with nogil:
        status = PK11_CheckUserPassword(slot, login.password)
    if status != SECSuccess:
        raise NSSError("login", PORT_GetError())


cdef CERTCertificate *_find_certificate(bytes nickname, _Login *login) except NULL:
    """The certificate whose nickname is exactly ``nickname`` (case matters)."""
    cdef CERTCertificate *cert = PK11_FindCertFromNickname(nickname, login)
    cdef int code = PORT_GetError()
    if cert != NULL and _same_nickname(cert.nickname, nickname):
        return cert
    if cert != NULL:
        CERT_DestroyCertificate(cert)
        code = 0
    users = _list_certificates(PK11CertListUserUnique, login)
    raise NSSError("nickname", code, sorted({nick for _, nick, _ in users if nick}))


cdef bint _same_nickname(const char *found, bytes asked):
    """NSS may match nicknames ignoring case; the product does not."""
    if found == NULL:
        return False
    name = <bytes>found
    return name == asked or asked.endswith(b":" + name)


cdef bytes _export_key(PK11SlotInfo *slot, CERTCertificate *cert, bytes transport_password,
                       int iterations, _Login *login):
    cdef SECKEYPrivateKey *key = PK11_FindKeyByAnyCert(cert, login)
    cdef SECKEYEncryptedPrivateKeyInfo *info = NULL
    cdef SECItem *der = NULL
    cdef SECItem pwitem
    if key == NULL:
        raise NSSError("key", PORT_GetError())
    pwitem.type = siBuffer
    pwitem.data = <unsigned char *><char *>transport_password
    pwitem.len = len(transport_password)
    try:
        with nogil:
            info = PK11_ExportEncryptedPrivKeyInfoV2(
                slot, SEC_OID_PKCS5_PBES2, SEC_OID_AES_256_CBC, SEC_OID_HMAC_SHA256,
                &pwitem, key, iterations, login)
        if info == NULL:
            raise NSSError("export", PORT_GetError())
        der = SEC_ASN1EncodeItem(NULL, NULL, info, SECKEY_EncryptedPrivateKeyInfoTemplate)
        if der == NULL:
            raise NSSError("encode", PORT_GetError())
        return PyBytes_FromStringAndSize(<char *>der.data, der.len)
    finally:
        if der != NULL:
            SECITEM_ZfreeItem(der, PR_TRUE)
        if info != NULL:
            SECKEY_DestroyEncryptedPrivateKeyInfo(info, PR_TRUE)
        SECKEY_DestroyPrivateKey(key)


cdef tuple _chain(CERTCertificate *cert):
    """The chain NSS builds from the database, leaf first, without the root."""
    cdef CERTCertificateList *chain = CERT_CertChainFromCert(cert, certUsageSSLServer,
                                                             PR_FALSE)
    cdef int i
    if chain == NULL:
        raise NSSError("chain", PORT_GetError())
    ders = []
    try:
        for i in range(chain.len):
            ders.append(_item_bytes(&chain.certs[i]))
        return tuple(ders)
    finally:
        CERT_DestroyCertificateList(chain)


cdef tuple _list_certificates(PK11CertListType kind, _Login *login):
    """``((DER, nickname, sslFlags), ...)`` for the certificates NSS lists."""
    cdef CERTCertList *certs = PK11_ListCerts(kind, login)
    cdef CERTCertListNode *node
    cdef CERTCertTrust trust
    found = []
    if certs == NULL:
        return ()
    try:
        node = CERT_LIST_HEAD(certs)
        while not CERT_LIST_END(node, certs):
            flags = 0
            if CERT_GetCertTrust(node.cert, &trust) == SECSuccess:
                flags = trust.sslFlags
            nick = (None if node.cert.nickname == NULL
                    else (<bytes>node.cert.nickname).decode("utf-8", "replace"))
            found.append((_item_bytes(&node.cert.derCert), nick, flags))
            node = CERT_LIST_NEXT(node)
    finally:
        CERT_DestroyCertList(certs)
    return tuple(found)


cdef bytes _item_bytes(SECItem *item):
    return PyBytes_FromStringAndSize(<char *>item.data, item.len)
