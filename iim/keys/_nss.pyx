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
"""

import threading

from cpython.bytes cimport PyBytes_FromStringAndSize

from iim.includes.nss cimport *

_lock = threading.Lock()

# Trust flags that certutil -t writes for "C" (trusted CA for servers) and
# "T" (trusted CA for clients); "c" (valid CA) alone is not trust.
TRUSTED_CA_FLAGS = CERTDB_TRUSTED_CA | CERTDB_TRUSTED_CLIENT_CA

NSS_InitializePRErrorTable()


class NSSError(Exception):
    """An NSS step failed.

    ``stage`` names the step ("in-use", "init", "login", "nickname", "key",
    "export", "encode", "chain", "shutdown"), ``code`` is PORT_GetError() at
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
        context = _open(configdir, certprefix, keyprefix, secmod)
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


cdef _Context _open(bytes configdir, bytes certprefix, bytes keyprefix, bytes secmod):
    cdef NSSInitContext *context
    cdef const char *c_dir = configdir
    cdef const char *c_cert = certprefix
    cdef const char *c_key = keyprefix
    cdef const char *c_secmod = secmod
    cdef PRUint32 flags = NSS_INIT_READONLY | NSS_INIT_NOROOTINIT | NSS_INIT_OPTIMIZESPACE
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
