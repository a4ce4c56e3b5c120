"""KeyMaterial -> ssl.SSLContext, with the clear key never on disk.

Python's ``ssl`` loads a certificate chain and key only from a path. We
write the PEM into an anonymous memory file (``memfd_create``), hand ssl the
path ``/proc/self/fd/N`` and close it at once: the clear key lives only in
process memory, never in a file system. TLS 1.2 is the minimum everywhere.

``ServerTLS`` keeps the server's context and the material it was made from
side by side, explicitly: the federation makes its s2s contexts, and the mux
link its TLS context, from the same material, and status shows its
certificate.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from .material import KeyMaterial, is_self_signed


@dataclass(frozen=True)
class ServerTLS:
    """The server's TLS: the context client streams use, and its key material."""

    context: ssl.SSLContext
    """For STARTTLS on client streams, over a socket or a mux link."""
    material: KeyMaterial
    """What ``context`` presents; s2s and mux-link contexts are made from it too."""

    @classmethod
    def from_material(cls, material: KeyMaterial) -> "ServerTLS":
        return cls(server_context(material), material)

    @property
    def certificate(self):
        """The certificate presented (for ``iim.admin status``)."""
        return self.material.certificate


def server_context(material: KeyMaterial, *, alpn=()) -> ssl.SSLContext:
    """A TLS server context presenting ``material``'s key and chain."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    load_key_and_chain(ctx, material)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(material: KeyMaterial | None = None, *, verify: bool = True,
                   anchors=None) -> ssl.SSLContext:
    """A TLS client context (outgoing s2s): presents ``material`` when given.

    With ``verify`` the peer must chain to ``anchors`` (default: the
    material's trust anchors) and match the name passed as server_hostname;
    without it (trust_all_cert) the caller checks and logs the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    if material is not None:
        load_key_and_chain(ctx, material)
    if anchors is None:
        anchors = material.trust_anchors if material is not None else ()
    if verify and not anchors:
        raise ValueError("client_context: verify=True needs trust anchors")
    if verify:
        for cert in anchors:
            ctx.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM)
                                      .decode("ascii"))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def load_key_and_chain(ctx: ssl.SSLContext, material: KeyMaterial) -> None:
    pem = material.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in wire_chain(material))
    fd = os.memfd_create("iim-key", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def wire_chain(material: KeyMaterial):
    """The chain as sent: a self-signed root at the end is left out (RFC 8446
    §4.4.2 allows it; the peer must hold the root anyway)."""
    chain = material.chain
    if len(chain) > 1 and is_self_signed(chain[-1]):
        chain = chain[:-1]
    return chain


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
