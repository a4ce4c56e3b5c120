"""Legacy SSL key material for the relays: NSS database -> TlsContext, in memory.

The key and chain come from the NSS database named by ``iim_mux.secconfigdir``
(read-only, through libnss3: ``iim.keys.nss.load_nss``), are serialized to
PEM in process memory and handed to ``iim._fastmux.TlsContext``, which reads
them with OpenSSL memory BIOs. The clear key never touches a file system.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives import serialization

from iim._fastmux import TlsContext, TlsError
from iim.conf import MuxSettings
from iim.keys.context import wire_chain
from iim.keys.errors import KeyMaterialError
from iim.keys.material import KeyMaterial
from iim.keys.nss import load_nss
from iim.keys.passwords import read_password_file
from iim.mux import ticketkeys

__all__ = ["context_from_material", "load_context", "load_material"]


def load_material(mux: MuxSettings) -> tuple[KeyMaterial, tuple[str, ...]]:
    """Key and chain named by ``iim_mux.*``, and warnings for the log
    (NSS notes; file modes are the supervisor's passwords.secret_file_warnings).
    KeyMaterialError: one clear line."""
    if mux.secconfigdir is None:
        raise KeyMaterialError("iim_mux.secconfigdir: missing; iim_mux.usessl is on and needs "
                               "the NSS database directory")
    password = read_password_file(mux.keystorepasswordfile, "iim_mux.keystorepasswordfile",
                                  check_mode=False)
    material = load_nss(mux.secconfigdir, certdbprefix=mux.certdbprefix,
                        keydbprefix=mux.keydbprefix, secmodfile=mux.secmodfile,
                        nickname=mux.certnickname, password=password.password,
                        param_prefix="iim_mux")
    return material, password.warnings + material.notes


def context_from_material(material: KeyMaterial, ticket_keys: bytes | None = None,
                          now: float | None = None) -> TlsContext:
    """A relay TLS context presenting ``material`` (KeyMaterialError if OpenSSL refuses it),
    its ticket keys stepped to the period of `now` (default: the clock)."""
    key = material.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in wire_chain(material))
    try:
        context = TlsContext(key, chain, ticket_keys)
        context.rotate_ticket_keys(ticketkeys.period(time.time() if now is None else now))
        return context
    except TlsError as exc:
        raise KeyMaterialError(f"iim_mux.certnickname: {material.alias!r} from "
                               f"{material.source}: {exc}") from None


def load_context(mux: MuxSettings,
                 ticket_keys: bytes | None = None) -> tuple[TlsContext, tuple[str, ...]]:
    """The TLS context for ``iim_mux.usessl``, and warnings for the log."""
    material, warnings = load_material(mux)
    return context_from_material(material, ticket_keys), warnings
