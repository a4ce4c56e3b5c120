# NSS / NSPR declarations used by the read-only NSS database reader
# (iim/keys/_nss.pyx), declared once (uvloop style). Only what iim calls is
# declared; signatures follow the NSS 3.87 headers in /usr/include/nss and
# /usr/include/nspr. Every function is callable without the GIL.

cdef extern from "prtypes.h" nogil:
    ctypedef int PRBool
    ctypedef int PRInt32
    ctypedef unsigned int PRUint32
    PRBool PR_TRUE
    PRBool PR_FALSE

cdef extern from "prerror.h" nogil:
    ctypedef PRInt32 PRErrorCode
    ctypedef PRUint32 PRLanguageCode
    PRLanguageCode PR_LANGUAGE_I_DEFAULT
    const char *PR_ErrorToName(PRErrorCode code)
    const char *PR_ErrorToString(PRErrorCode code, PRLanguageCode language)

cdef extern from "seccomon.h" nogil:
    ctypedef enum SECStatus:
        SECWouldBlock
        SECFailure
        SECSuccess

    ctypedef enum SECItemType:
        siBuffer

    ctypedef struct SECItem:
        SECItemType type
        unsigned char *data
        unsigned int len

cdef extern from "secport.h" nogil:
    int PORT_GetError()
    char *PORT_Strdup(const char *s)

cdef extern from "secitem.h" nogil:
    void SECITEM_FreeItem(SECItem *item, PRBool freeit)
    void SECITEM_ZfreeItem(SECItem *item, PRBool freeit)

cdef extern from "secoidt.h" nogil:
    ctypedef enum SECOidTag:
        SEC_OID_AES_256_CBC
        SEC_OID_PKCS5_PBES2
        SEC_OID_HMAC_SHA256

cdef extern from "nssutil.h" nogil:
    SECStatus NSS_InitializePRErrorTable()

cdef extern from "nss.h" nogil:
    ctypedef struct NSSInitContext
    ctypedef struct NSSInitParameters
    PRUint32 NSS_INIT_READONLY
    PRUint32 NSS_INIT_NOROOTINIT
    PRUint32 NSS_INIT_OPTIMIZESPACE
    const char *NSS_GetVersion()
    PRBool NSS_IsInitialized()
    NSSInitContext *NSS_InitContext(const char *configdir, const char *certPrefix,
                                    const char *keyPrefix, const char *secmodName,
                                    NSSInitParameters *initParams, PRUint32 flags)
    SECStatus NSS_ShutdownContext(NSSInitContext *context)

cdef extern from "secasn1t.h" nogil:
    ctypedef struct SEC_ASN1Template:
        pass

cdef extern from "secasn1.h" nogil:
    ctypedef struct PLArenaPool
    SECItem *SEC_ASN1EncodeItem(PLArenaPool *pool, SECItem *dest, const void *src,
                                const SEC_ASN1Template *t)

cdef extern from "certt.h" nogil:
    ctypedef struct CERTCertificate:
        SECItem derCert
        char *nickname

    ctypedef struct CERTCertTrust:
        unsigned int sslFlags
        unsigned int emailFlags
        unsigned int objectSigningFlags

    ctypedef struct CERTCertificateList:
        SECItem *certs
        int len

    ctypedef struct CERTCertListNode:
        CERTCertificate *cert

    ctypedef struct CERTCertList

    ctypedef enum SECCertUsage:
        certUsageSSLServer

    # Macros, declared as the functions they behave like.
    CERTCertListNode *CERT_LIST_HEAD(CERTCertList *list)
    CERTCertListNode *CERT_LIST_NEXT(CERTCertListNode *node)
    bint CERT_LIST_END(CERTCertListNode *node, CERTCertList *list)

cdef extern from "certdb.h" nogil:
    unsigned int CERTDB_VALID_CA
    unsigned int CERTDB_TRUSTED_CA
    unsigned int CERTDB_TRUSTED_CLIENT_CA
    unsigned int CERTDB_USER

cdef extern from "cert.h" nogil:
    void CERT_DestroyCertificate(CERTCertificate *cert)
    SECStatus CERT_GetCertTrust(const CERTCertificate *cert, CERTCertTrust *trust)
    CERTCertificateList *CERT_CertChainFromCert(CERTCertificate *cert, SECCertUsage usage,
                                                PRBool includeRoot)
    void CERT_DestroyCertificateList(CERTCertificateList *list)
    void CERT_DestroyCertList(CERTCertList *certs)

cdef extern from "keythi.h" nogil:
    ctypedef struct SECKEYPrivateKey
    ctypedef struct SECKEYEncryptedPrivateKeyInfo

cdef extern from "keyhi.h" nogil:
    void SECKEY_DestroyPrivateKey(SECKEYPrivateKey *key)
    void SECKEY_DestroyEncryptedPrivateKeyInfo(SECKEYEncryptedPrivateKeyInfo *epki,
                                               PRBool freeit)

cdef extern from "secmodt.h" nogil:
    ctypedef struct PK11SlotInfo
    ctypedef char *(*PK11PasswordFunc)(PK11SlotInfo *slot, PRBool retry, void *arg)
    ctypedef enum PK11CertListType:
        PK11CertListUserUnique
        PK11CertListAll
    # An array in C; only its address is ever passed.
    const SEC_ASN1Template SECKEY_EncryptedPrivateKeyInfoTemplate[]

cdef extern from "pk11pub.h" nogil:
    PK11SlotInfo *PK11_GetInternalKeySlot()
    void PK11_FreeSlot(PK11SlotInfo *slot)
    void PK11_SetPasswordFunc(PK11PasswordFunc func)
    PRBool PK11_NeedLogin(PK11SlotInfo *slot)
    SECStatus PK11_CheckUserPassword(PK11SlotInfo *slot, const char *pw)
    SECStatus PK11_Authenticate(PK11SlotInfo *slot, PRBool loadCerts, void *wincx)
    SECStatus PK11_Logout(PK11SlotInfo *slot)
    CERTCertificate *PK11_FindCertFromNickname(const char *nickname, void *wincx)
    SECKEYPrivateKey *PK11_FindKeyByAnyCert(CERTCertificate *cert, void *wincx)
    CERTCertList *PK11_ListCerts(PK11CertListType type, void *pwarg)
    SECKEYEncryptedPrivateKeyInfo *PK11_ExportEncryptedPrivKeyInfoV2(
        PK11SlotInfo *slot, SECOidTag pbeTag, SECOidTag encTag, SECOidTag prfTag,
        SECItem *pwitem, SECKEYPrivateKey *pk, int iteration, void *pwArg)
