# NSS declarations for writing an NSS database (the ``write`` half of
# iim/keys/_nss.pyx): setting the database password, importing a private
# key, certificates and their trust. Types come from nss.pxd; signatures
# follow the NSS 3.87 headers in /usr/include/nss. Every function is callable
# without the GIL.

from iim.includes.nss cimport (
    CERTCertTrust, CERTCertificate, PK11SlotInfo, PRBool, SECItem, SECKEYPrivateKey,
    SECStatus,
)

cdef extern from "pkcs11t.h" nogil:
    ctypedef unsigned long CK_OBJECT_HANDLE
    CK_OBJECT_HANDLE CK_INVALID_HANDLE

cdef extern from "keythi.h" nogil:
    ctypedef struct SECKEYPublicKey

cdef extern from "keyhi.h" nogil:
    void SECKEY_DestroyPublicKey(SECKEYPublicKey *key)

cdef extern from "certt.h" nogil:
    ctypedef struct CERTCertDBHandle
    unsigned int KU_ALL

cdef extern from "cert.h" nogil:
    CERTCertDBHandle *CERT_GetDefaultCertDB()
    CERTCertificate *CERT_NewTempCertificate(CERTCertDBHandle *handle, SECItem *derCert,
                                             char *nickname, PRBool isperm, PRBool copyDER)
    SECKEYPublicKey *CERT_ExtractPublicKey(CERTCertificate *cert)
    SECStatus CERT_DecodeTrustString(CERTCertTrust *trust, const char *trusts)
    SECStatus CERT_ChangeCertTrust(CERTCertDBHandle *handle, CERTCertificate *cert,
                                   CERTCertTrust *trust)

cdef extern from "pk11pub.h" nogil:
    PRBool PK11_NeedUserInit(PK11SlotInfo *slot)
    SECStatus PK11_InitPin(PK11SlotInfo *slot, const char *ssopw, const char *pk11_userpwd)
    SECStatus PK11_ImportDERPrivateKeyInfoAndReturnKey(
        PK11SlotInfo *slot, SECItem *derPKI, SECItem *nickname, SECItem *publicValue,
        PRBool isPerm, PRBool isPrivate, unsigned int usage, SECKEYPrivateKey **privk,
        void *wincx)
    CK_OBJECT_HANDLE PK11_ImportPublicKey(PK11SlotInfo *slot, SECKEYPublicKey *pubKey,
                                          PRBool isToken)
    SECStatus PK11_ImportCertForKeyToSlot(PK11SlotInfo *slot, CERTCertificate *cert,
                                          char *nickname, PRBool addUsage, void *wincx)
    SECStatus PK11_ImportCert(PK11SlotInfo *slot, CERTCertificate *cert,
                              CK_OBJECT_HANDLE key, const char *nickname, PRBool includeTrust)
