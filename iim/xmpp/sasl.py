"""SASL authentication for XMPP streams (RFC 6120 §6), sans-I/O, both roles.

Mechanisms: SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1 (RFC 5802) and PLAIN
(RFC 4616). Everything here is bytes in, bytes out. The stream layer does the
rest: it base64-encodes the payloads (``encode_payload``/``decode_payload``)
and wraps them in ``<auth/>``, ``<challenge/>``, ``<response/>``,
``<success/>`` and ``<failure/>`` in the ``SASL_NS`` namespace (RFC 6120 §6.4).

Theory of operation
-------------------
Server. One ``ServerAuth`` per stream. ``start(mechanism, initial_response)``
answers an ``<auth/>``; ``respond(data)`` answers each ``<response/>``;
``abort()`` answers ``<abort/>``. Every call returns one step:

- ``Challenge(data)``: send ``<challenge/>`` and wait for a ``<response/>``;
- ``Success(additional_data, username)``: send ``<success/>``; the stream
  restarts (RFC 6120 §6.4.6) and the peer is ``username@domain``;
- ``Failure(condition, text)``: send ``<failure/>``. The peer may start again
  with a new ``<auth/>``: call ``start()`` again (RFC 6120 §6.4.5; counting
  retries is the stream's business).

Input from the peer never raises: whatever bytes arrive become a step, most
often ``Failure(MALFORMED_REQUEST)``. Only misuse of the API raises
(``LocalProtocolError``: feeding a ``ServerAuth`` that has already succeeded).

What is stored. No password, and not even SCRAM's SaltedPassword: for each
user and SCRAM mechanism, RFC 5802 §3's

    SaltedPassword = PBKDF2(HMAC-H, SASLprep(password), salt, i)
    StoredKey      = H(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

(``ScramCredentials``). SCRAM checks the client's proof against StoredKey.
PLAIN (offered only under TLS) re-derives StoredKey from the password it
receives, which costs one PBKDF2 run, and compares in constant time.

Unknown users. A peer must not learn whether an account exists, neither from
the answers nor from their timing. An unknown user goes through the same code
with made-up credentials: the salt is HMAC(server secret, mechanism,
username), stable from one attempt to the next exactly like a real salt; the
iteration count is the default one ``derive_credentials`` uses; the keys are
random, so the final check runs and fails like a wrong password. The secret
must be stable for the life of the account database (``Storage.server_secret``
in ``iim.server.storage``): a salt that changed between two connections would
give the game away. Real accounts must use ``DEFAULT_ITERATIONS`` for the same
reason.

Channel binding. The -PLUS mechanisms are not offered. Per RFC 5802 §6, a
client whose GS2 flag is "y" (it could bind but believes we cannot) is right,
and is accepted; a client whose flag is "p" asks for a binding this server
never advertised, and is refused.

Names and passwords. In XMPP the SASL "simple user name" is the localpart
(RFC 6120 §6.3.8), so usernames are prepared with the localpart profile of
``iim.xmpp.jid``, not with SASLprep. Passwords are prepared with SASLprep
(RFC 4013): the tables come from the standard library's ``stringprep`` module
and normalization is NFKC over Unicode 3.2 (``unicodedata.ucd_3_2_0``), which
is what RFC 4013 specifies, so this is not an approximation. Unassigned code
points are allowed (the RFC 4013 "query" rules), for stored passwords too.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

from .errors import LocalProtocolError
from .jid import JID, InvalidJID, prepare_domainpart, prepare_localpart

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"

#: RFC 7677 §4 / RFC 5802 §5.1: servers SHOULD announce at least 4096.
MIN_ITERATIONS = 4096
DEFAULT_ITERATIONS = 4096
#: A client refuses more than this: a hostile server could ask for hours of PBKDF2.
MAX_CLIENT_ITERATIONS = 1_000_000
SALT_BYTES = 16
#: A name that is no localpart (RFC 7622 §3.3.1: at most 1023 octets) is kept this long.
MAX_USERNAME_CHARS = 1023
_NONCE_BYTES = 24


class Mechanism(enum.Enum):
    """The SASL mechanisms this system speaks; the value is the wire name."""

    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_1 = "SCRAM-SHA-1"
    PLAIN = "PLAIN"

    @property
    def is_scram(self) -> bool:
        return self is not Mechanism.PLAIN

    @property
    def hash_name(self) -> str:
        """The ``hashlib`` name of SCRAM's H() (RFC 5802 §2.2)."""
        if not self.is_scram:
            raise ValueError(f"{self.value} has no hash function")
        return "sha256" if self is Mechanism.SCRAM_SHA_256 else "sha1"


SCRAM_MECHANISMS = (Mechanism.SCRAM_SHA_256, Mechanism.SCRAM_SHA_1)


def offered_mechanisms(tls: bool) -> list[Mechanism]:
    """What the server advertises, best first (RFC 6120 §6.3.3).

    PLAIN sends the password itself, so it is offered only when TLS protects
    the stream.
    """
    return [*SCRAM_MECHANISMS, Mechanism.PLAIN] if tls else list(SCRAM_MECHANISMS)


class SASLFailure(enum.Enum):
    """The SASL failure conditions of RFC 6120 §6.5; the value is the element name."""

    ABORTED = "aborted"
    ACCOUNT_DISABLED = "account-disabled"
    CREDENTIALS_EXPIRED = "credentials-expired"
    ENCRYPTION_REQUIRED = "encryption-required"
    INCORRECT_ENCODING = "incorrect-encoding"
    INVALID_AUTHZID = "invalid-authzid"
    INVALID_MECHANISM = "invalid-mechanism"
    MALFORMED_REQUEST = "malformed-request"
    MECHANISM_TOO_WEAK = "mechanism-too-weak"
    NOT_AUTHORIZED = "not-authorized"
    TEMPORARY_AUTH_FAILURE = "temporary-auth-failure"


# ---------------------------------------------------------------------------
# Steps: what the server answers


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``<challenge/>`` with ``data`` and wait for a ``<response/>``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """Send ``<success/>`` (with ``additional_data`` when not None); restart the stream."""

    additional_data: bytes | None
    username: str


@dataclass(frozen=True, slots=True)
class Failure:
    """Send ``<failure/>`` with ``condition`` (and ``<text/>`` when ``text``).
    ``username``: whose credentials failed, once the peer named someone (not
    part of equality: the wire carries condition and text only)."""

    condition: SASLFailure
    text: str | None = None
    username: str | None = field(default=None, compare=False)


Step = Union[Challenge, Success, Failure]


class _Reject(Exception):
    """Internal: the peer's message ends the handshake with this condition."""

    def __init__(self, condition: SASLFailure, text: str | None = None,
                 username: str | None = None) -> None:
        super().__init__(condition, text)
        self.failure = Failure(condition, text, username)


def _malformed(text: str) -> _Reject:
    return _Reject(SASLFailure.MALFORMED_REQUEST, text)


# ---------------------------------------------------------------------------
# Payload encoding on the wire (RFC 6120 §6.4.2, §6.4.6)


def encode_payload(data: bytes | None) -> str:
    """The character data of an element: "" for none, "=" for zero-length data."""
    if data is None:
        return ""
    return base64.b64encode(data).decode("ascii") if data else "="


def decode_payload(text: str) -> bytes | None:
    """Inverse of ``encode_payload``: None when empty, b"" for "=".

    Raises ``ValueError`` when ``text`` is not strict base64; answer it with
    ``Failure(SASLFailure.INCORRECT_ENCODING)`` (RFC 6120 §6.5.5).
    """
    if not text:
        return None
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("SASL data is not valid base64") from None


# ---------------------------------------------------------------------------
# SASLprep (RFC 4013) for passwords

_PROHIBITED = (
    stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
    stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
    stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
)


def saslprep(text: str) -> str:
    """Prepare a password per RFC 4013 (unassigned code points allowed).

    Raises ``ValueError`` naming the position, never the character (it is
    part of a password).
    """
    mapped = "".join(_saslprep_map(char) for char in text)
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for position, char in enumerate(prepared, 1):
        if any(table(char) for table in _PROHIBITED):
            raise ValueError(f"character {position} is prohibited by SASLprep "
                             "(RFC 4013 §2.3: control, private-use, non-character ...)")
    _check_bidi(prepared)
    return prepared


def _saslprep_map(char: str) -> str:
    """RFC 4013 §2.1: non-ASCII spaces become SPACE; B.1 characters vanish."""
    if stringprep.in_table_c12(char):
        return " "
    return "" if stringprep.in_table_b1(char) else char


def _check_bidi(text: str) -> None:
    """RFC 3454 §6: right-to-left text must be all RTL, first and last."""
    if not any(stringprep.in_table_d1(char) for char in text):
        return
    if any(stringprep.in_table_d2(char) for char in text):
        raise ValueError("mixes right-to-left and left-to-right text (RFC 3454 §6)")
    if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
        raise ValueError("right-to-left text must start and end with an RTL character")


# ---------------------------------------------------------------------------
# SCRAM credentials and primitives (RFC 5802 §3)


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps for one user and one SCRAM mechanism."""

    mechanism: Mechanism
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def derive_credentials(password: str, mechanism: Mechanism, salt: bytes | None = None,
                       iterations: int = DEFAULT_ITERATIONS) -> ScramCredentials:
    """The SCRAM credentials for ``password``: a fresh random salt unless given.

    Raises ``ValueError`` for an empty password, one SASLprep refuses, a
    non-SCRAM mechanism or fewer than ``MIN_ITERATIONS`` iterations.
    """
    if not mechanism.is_scram:
        raise ValueError(f"{mechanism.value} has no SCRAM credentials")
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"SCRAM needs at least {MIN_ITERATIONS} iterations, not {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = _salted_password(mechanism, password, salt, iterations)
    stored_key, server_key = _stored_and_server_key(mechanism, salted)
    return ScramCredentials(mechanism, salt, iterations, stored_key, server_key)


def _salted_password(mechanism: Mechanism, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i): PBKDF2 with HMAC-H (RFC 5802 §2.2)."""
    prepared = saslprep(password)
    if not prepared:
        raise ValueError("empty password")
    return hashlib.pbkdf2_hmac(mechanism.hash_name, prepared.encode("utf-8"), salt, iterations)


def _client_key(mechanism: Mechanism, salted: bytes) -> bytes:
    return _hmac(mechanism, salted, b"Client Key")


def _stored_and_server_key(mechanism: Mechanism, salted: bytes) -> tuple[bytes, bytes]:
    stored_key = _hash(mechanism, _client_key(mechanism, salted))
    return stored_key, _hmac(mechanism, salted, b"Server Key")


def _hash(mechanism: Mechanism, data: bytes) -> bytes:
    return hashlib.new(mechanism.hash_name, data).digest()


def _hmac(mechanism: Mechanism, key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, mechanism.hash_name)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _new_nonce() -> str:
    """Printable, comma-free, unpredictable (RFC 5802 §5.1 "r=")."""
    return base64.b64encode(secrets.token_bytes(_NONCE_BYTES)).decode("ascii")


#: RFC 5802 §7: printable = %x21-2B / %x2D-7E (any printable ASCII but ",").
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def _check_nonce(nonce: str) -> str:
    if not _NONCE.fullmatch(nonce):
        raise ValueError("a SCRAM nonce is printable ASCII without ','")
    return nonce


def _fake_credentials(secret: bytes, mechanism: Mechanism, username: str) -> ScramCredentials:
    """Credentials for an account that does not exist: see "Unknown users" above."""
    label = b"iim-sasl-fake-salt\0" + mechanism.value.encode() + b"\0"
    salt = hmac.digest(secret, label + username.encode("utf-8", "surrogatepass"), "sha256")
    size = hashlib.new(mechanism.hash_name).digest_size
    return ScramCredentials(mechanism, salt[:SALT_BYTES], DEFAULT_ITERATIONS,
                            secrets.token_bytes(size), secrets.token_bytes(size))


# ---------------------------------------------------------------------------
# SCRAM message syntax (RFC 5802 §7)

_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")
_ALPHA = re.compile(r"[A-Za-z]")
_DIGITS = re.compile(r"[0-9]{1,10}")


def encode_saslname(name: str) -> str:
    """RFC 5802 §5.1: "=" becomes "=3D" and "," becomes "=2C"."""
    return name.replace("=", "=3D").replace(",", "=2C")


def decode_saslname(text: str) -> str:
    """Inverse of ``encode_saslname``; any other "=" is malformed."""
    if not _SASLNAME.fullmatch(text):
        raise _malformed("bad saslname: empty, or '=' not followed by 2C or 3D")
    return re.sub("=2C|=3D", lambda match: "," if match.group() == "=2C" else "=", text)


def _utf8(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("SCRAM message is not UTF-8") from None
    if "\0" in text:
        raise _malformed("SCRAM message contains NUL")
    return text


def _attributes(text: str) -> list[tuple[str, str]]:
    """Split "a=1,b=2" into [("a", "1"), ("b", "2")]; values never hold ","."""
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not _ALPHA.fullmatch(part[0]):
            raise _malformed("SCRAM attribute is not 'letter=value'")
        pairs.append((part[0], part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, str]], index: int, key: str) -> str:
    if index >= len(pairs) or pairs[index][0] != key:
        raise _malformed(f"SCRAM message lacks '{key}=' where it belongs")
    return pairs[index][1]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Reject(SASLFailure.INCORRECT_ENCODING, f"{what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str          # "n,," / "y,a=x," ... exactly as sent: c= must repeat it
    authzid: str
    username: str            # decoded saslname, not prepared yet
    nonce: str
    bare: str                # client-first-message-bare, part of AuthMessage


def _parse_client_first(data: bytes) -> _ClientFirst:
    """gs2-header client-first-message-bare (RFC 5802 §7)."""
    text = _utf8(data)
    flag, _, rest = text.partition(",")
    authz, comma, bare = rest.partition(",")
    if not comma:
        raise _malformed("SCRAM client-first-message lacks its GS2 header")
    _check_cbind_flag(flag)
    authzid = decode_saslname(authz[2:]) if authz.startswith("a=") else _no_authzid(authz)
    pairs = _attributes(bare)
    if pairs[0][0] == "m":
        raise _malformed("mandatory SCRAM extension not supported")
    username = decode_saslname(_expect(pairs, 0, "n"))
    nonce = _expect(pairs, 1, "r")
    if not _NONCE.fullmatch(nonce):
        raise _malformed("SCRAM nonce is not printable ASCII")
    return _ClientFirst(f"{flag},{authz},", authzid, username, nonce, bare)


def _check_cbind_flag(flag: str) -> None:
    """RFC 5802 §6: "n" and "y" are fine here (no -PLUS offered); "p=" is not."""
    if flag.startswith("p="):
        raise _malformed("channel binding is not supported (no -PLUS mechanism offered)")
    if flag not in ("n", "y"):
        raise _malformed("SCRAM GS2 channel-binding flag is not n, y or p=")


def _no_authzid(authz: str) -> str:
    if authz:
        raise _malformed("SCRAM authzid must be 'a=saslname'")
    return ""


@dataclass(frozen=True, slots=True)
class _ClientFinal:
    channel_binding: bytes
    nonce: str
    proof: bytes
    without_proof: str       # client-final-message-without-proof, part of AuthMessage


def _parse_client_final(data: bytes) -> _ClientFinal:
    """c=... ,r=... [,extensions] ,p=... (RFC 5802 §7)."""
    text = _utf8(data)
    pairs = _attributes(text)
    if len(pairs) < 3:
        raise _malformed("SCRAM client-final-message is incomplete")
    binding = _b64decode(_expect(pairs, 0, "c"), "SCRAM channel binding")
    nonce = _expect(pairs, 1, "r")
    proof = _b64decode(_expect(pairs, len(pairs) - 1, "p"), "SCRAM proof")
    without_proof = text[: text.rindex(",p=")]
    return _ClientFinal(binding, nonce, proof, without_proof)


# ---------------------------------------------------------------------------
# Server side

Lookup = Callable[[str], "Mapping[Mechanism, ScramCredentials] | None"]

#: Used when no secret is given: stable for this process only. A server must
#: pass ``Storage.server_secret()`` so fake salts survive restarts.
_PROCESS_SECRET = secrets.token_bytes(32)


class ServerAuth:
    """The receiving entity's side of one stream's SASL negotiation.

    ``lookup(username)`` returns the user's credentials by mechanism, or None
    when there is no such user; ``username`` is a prepared localpart. An
    exception from ``lookup`` propagates: answer it with
    ``Failure(SASLFailure.TEMPORARY_AUTH_FAILURE)``. ``domain`` makes the only
    acceptable authzid, ``username@domain``. ``tls`` says whether TLS
    protects the stream (PLAIN is refused otherwise). ``secret`` keys the fake
    salts of unknown users. ``nonce`` fixes the server nonce (tests only).

    ``admit(username)``, when given, is asked as soon as the peer names a user
    (PLAIN's message, SCRAM's client-first) and before anything is looked up
    or checked: False ends the exchange with ``temporary-auth-failure``
    (RFC 6120 §6.5.11), the login throttle's answer (iim/server/logins.py).
    Failures on credentials carry the username they were for.
    """

    def __init__(self, lookup: Lookup, domain: str, *, tls: bool = False,
                 secret: bytes | None = None, nonce: str | None = None,
                 admit: Callable[[str], bool] | None = None) -> None:
        self._lookup = lookup
        self._admit = admit
        self._domain = prepare_domainpart(domain)
        self._tls = tls
        self._secret = _PROCESS_SECRET if secret is None else secret
        self._nonce = None if nonce is None else _check_nonce(nonce)
        self._handshake: _ScramServer | _PlainServer | None = None
        self._succeeded = False

    def start(self, mechanism: Mechanism | str, initial_response: bytes | None) -> Step:
        """Answer ``<auth mechanism=...>`` (RFC 6120 §6.4.2).

        ``initial_response`` is None when the element was empty and b"" when
        it held "=". A new ``start()`` discards a handshake in progress.
        """
        self._check_not_done()
        self._handshake = None
        chosen = _mechanism_named(mechanism)
        if chosen is None:
            return Failure(SASLFailure.INVALID_MECHANISM)
        if chosen not in offered_mechanisms(self._tls):
            return Failure(SASLFailure.ENCRYPTION_REQUIRED, "PLAIN needs TLS")
        self._handshake = self._new_handshake(chosen)
        if initial_response is None:
            return Challenge(b"")
        return self._run(initial_response)

    def respond(self, data: bytes) -> Step:
        """Answer a ``<response/>`` (RFC 6120 §6.4.3)."""
        self._check_not_done()
        if self._handshake is None:
            return Failure(SASLFailure.MALFORMED_REQUEST, "no authentication in progress")
        return self._run(data)

    def abort(self) -> Failure:
        """Answer ``<abort/>`` (RFC 6120 §6.4.4)."""
        self._check_not_done()
        self._handshake = None
        return Failure(SASLFailure.ABORTED)

    def _check_not_done(self) -> None:
        if self._succeeded:
            raise LocalProtocolError("SASL already succeeded; the stream must restart")

    def _new_handshake(self, mechanism: Mechanism) -> _ScramServer | _PlainServer:
        if mechanism is Mechanism.PLAIN:
            return _PlainServer(self)
        return _ScramServer(self, mechanism, self._nonce or _new_nonce())

    def _run(self, data: bytes) -> Step:
        try:
            step = self._handshake.step(bytes(data))
        except _Reject as reject:
            step = reject.failure
        if not isinstance(step, Challenge):
            self._handshake = None
        self._succeeded = isinstance(step, Success)
        return step

    # What the mechanisms share -------------------------------------------

    def _credentials(self, mechanisms: tuple[Mechanism, ...],
                     username: str) -> tuple[str, ScramCredentials]:
        """(prepared name, its credentials for the first of ``mechanisms`` it has).

        Made-up credentials for ``mechanisms[0]`` when there are none (see
        "Unknown users"): the caller cannot tell, and must not.
        """
        try:
            prepared, valid = prepare_localpart(username), True
        except InvalidJID:
            prepared, valid = username[:MAX_USERNAME_CHARS], False
        self._check_admitted(prepared)
        found = (self._lookup(prepared) or {}) if valid else {}
        for mechanism in mechanisms:
            credentials = found.get(mechanism)
            if credentials is not None and credentials.mechanism is mechanism:
                return prepared, credentials
        return prepared, _fake_credentials(self._secret, mechanisms[0], prepared)

    def _check_admitted(self, username: str) -> None:
        if self._admit is not None and not self._admit(username):
            raise _Reject(SASLFailure.TEMPORARY_AUTH_FAILURE,
                          "too many failed logins: try again later", username)

    def _authorize(self, authzid: str, username: str) -> None:
        """RFC 6120 §6.3.8: an authzid, if any, must be the user's own bare JID."""
        if not authzid:
            return
        try:
            allowed = JID.parse(authzid) == JID(username, self._domain)
        except InvalidJID:
            allowed = False
        if not allowed:
            raise _Reject(SASLFailure.INVALID_AUTHZID, "authzid must be your own bare JID")


def _mechanism_named(mechanism: Mechanism | str) -> Mechanism | None:
    if isinstance(mechanism, Mechanism):
        return mechanism
    try:
        return Mechanism(mechanism)
    except ValueError:
        return None


class _ScramServer:
    """RFC 5802 §5, server side: client-first -> server-first, client-final -> v=."""

    def __init__(self, auth: ServerAuth, mechanism: Mechanism, nonce: str) -> None:
        self._auth = auth
        self._mechanism = mechanism
        self._server_nonce = nonce
        self._first: _ClientFirst | None = None
        # Set by the client-first message:
        self._username = ""
        self._credentials: ScramCredentials | None = None
        self._nonce = ""                 # client nonce + server nonce
        self._server_first = ""

    def step(self, data: bytes) -> Step:
        if self._first is None:
            return self._client_first(data)
        return self._client_final(data)

    def _client_first(self, data: bytes) -> Challenge:
        first = _parse_client_first(data)
        self._username, self._credentials = self._auth._credentials(
            (self._mechanism,), first.username)
        self._auth._authorize(first.authzid, self._username)
        self._first = first
        self._nonce = first.nonce + self._server_nonce
        self._server_first = (f"r={self._nonce},s={_b64(self._credentials.salt)},"
                              f"i={self._credentials.iterations}")
        return Challenge(self._server_first.encode("ascii"))

    def _client_final(self, data: bytes) -> Step:
        final = _parse_client_final(data)
        if final.channel_binding != self._first.gs2_header.encode("utf-8"):
            raise _malformed("SCRAM channel binding does not repeat the GS2 header")
        if final.nonce != self._nonce:
            raise _malformed("SCRAM nonce does not match")
        auth_message = f"{self._first.bare},{self._server_first},{final.without_proof}"
        if not self._proof_is_valid(final.proof, auth_message.encode("utf-8")):
            return Failure(SASLFailure.NOT_AUTHORIZED, username=self._username)
        signature = _hmac(self._mechanism, self._credentials.server_key,
                          auth_message.encode("utf-8"))
        return Success(b"v=" + base64.b64encode(signature), self._username)

    def _proof_is_valid(self, proof: bytes, auth_message: bytes) -> bool:
        """RFC 5802 §3: ClientKey = proof XOR ClientSignature; H(ClientKey) = StoredKey?"""
        stored_key = self._credentials.stored_key
        signature = _hmac(self._mechanism, stored_key, auth_message)
        if len(proof) != len(signature):
            return False
        client_key = _xor(proof, signature)
        return hmac.compare_digest(_hash(self._mechanism, client_key), stored_key)


class _PlainServer:
    """RFC 4616: one message, [authzid] NUL authcid NUL passwd."""

    def __init__(self, auth: ServerAuth) -> None:
        self._auth = auth

    def step(self, data: bytes) -> Step:
        authzid, authcid, password = _parse_plain(data)
        # The strongest hash the user has; SCRAM-SHA-256 for unknown users.
        username, credentials = self._auth._credentials(SCRAM_MECHANISMS, authcid)
        self._auth._authorize(authzid, username)
        if not _password_matches(credentials, password):
            return Failure(SASLFailure.NOT_AUTHORIZED, username=username)
        return Success(None, username)


def _parse_plain(data: bytes) -> tuple[str, str, str]:
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise _malformed("PLAIN message is not authzid NUL authcid NUL passwd")
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise _malformed("PLAIN message is not UTF-8") from None
    if not authcid or not password:
        raise _malformed("PLAIN authcid and passwd must not be empty")
    return authzid, authcid, password


def _password_matches(credentials: ScramCredentials, password: str) -> bool:
    """Re-derive StoredKey from ``password`` and compare in constant time."""
    try:
        salted = _salted_password(credentials.mechanism, password, credentials.salt,
                                  credentials.iterations)
    except ValueError:          # SASLprep refused it: no stored password is like it
        return False
    stored_key, _ = _stored_and_server_key(credentials.mechanism, salted)
    return hmac.compare_digest(stored_key, credentials.stored_key)


# ---------------------------------------------------------------------------
# Client side


class ClientAuthError(Exception):
    """The server's SASL data cannot be accepted; the message says why."""


class ServerSignatureMismatch(ClientAuthError):
    """SCRAM's server signature is wrong: the server does not know our credentials."""


class ClientAuth:
    """The initiating entity's side: ``start()``, ``respond()``*, ``verify_success()``.

    ``nonce`` fixes the client nonce (tests only). ``authzid``, when given, is
    sent as the authorization identity (a bare JID in XMPP).
    """

    def __init__(self, username: str, password: str, mechanism: Mechanism, *,
                 authzid: str | None = None, nonce: str | None = None,
                 min_iterations: int = MIN_ITERATIONS) -> None:
        self.mechanism = mechanism
        self._username = username
        self._password = password
        self._authzid = authzid or ""
        self._nonce = _new_nonce() if nonce is None else _check_nonce(nonce)
        self._min_iterations = min_iterations
        if mechanism.is_scram and not saslprep(password):
            raise ValueError("empty password")
        self._gs2_header: str | None = None
        self._server_signature: bytes | None = None
        self._verified = False

    def start(self) -> bytes:
        """The initial response, for ``<auth/>``."""
        if self.mechanism is Mechanism.PLAIN:
            return "\0".join((self._authzid, self._username, self._password)).encode("utf-8")
        authz = f"a={encode_saslname(self._authzid)}" if self._authzid else ""
        self._gs2_header = f"n,{authz},"
        self._bare = f"n={encode_saslname(self._username)},r={self._nonce}"
        return (self._gs2_header + self._bare).encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        """The response to a ``<challenge/>``."""
        if self.mechanism is Mechanism.PLAIN:
            raise ClientAuthError("the server sent a challenge to PLAIN")
        if self._gs2_header is None:
            raise LocalProtocolError("ClientAuth.respond() before start()")
        if self._server_signature is None:
            return self._client_final(challenge)
        self._check_server_final(challenge)
        return b""

    def verify_success(self, additional_data: bytes | None) -> None:
        """Check ``<success/>``; for SCRAM, the server must prove it knows our key."""
        if self.mechanism is Mechanism.PLAIN:
            return
        if additional_data:
            self._check_server_final(additional_data)
        if not self._verified:
            raise ClientAuthError("the server claims success without proving it knows "
                                  "the SCRAM key (no server signature)")

    def _client_final(self, challenge: bytes) -> bytes:
        nonce, salt, iterations = self._parse_server_first(challenge)
        salted = _salted_password(self.mechanism, self._password, salt, iterations)
        stored_key, server_key = _stored_and_server_key(self.mechanism, salted)
        without_proof = f"c={_b64(self._gs2_header.encode('utf-8'))},r={nonce}"
        auth_message = f"{self._bare},{_text(challenge)},{without_proof}".encode("utf-8")
        signature = _hmac(self.mechanism, stored_key, auth_message)
        proof = _xor(_client_key(self.mechanism, salted), signature)
        self._server_signature = _hmac(self.mechanism, server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def _parse_server_first(self, challenge: bytes) -> tuple[str, bytes, int]:
        pairs = _client_side(_attributes, _text(challenge))
        nonce = _client_side(_expect, pairs, 0, "r")
        if not nonce.startswith(self._nonce) or nonce == self._nonce:
            raise ClientAuthError("the server's SCRAM nonce does not extend ours")
        salt = _client_side(_b64decode, _client_side(_expect, pairs, 1, "s"), "salt")
        if not salt:
            raise ClientAuthError("the server's SCRAM salt is empty")
        iterations = self._iterations(_client_side(_expect, pairs, 2, "i"))
        return nonce, salt, iterations

    def _iterations(self, text: str) -> int:
        if not _DIGITS.fullmatch(text):
            raise ClientAuthError("the server's SCRAM iteration count is not a number")
        count = int(text)
        if not self._min_iterations <= count <= MAX_CLIENT_ITERATIONS:
            raise ClientAuthError(f"the server asks for {count} SCRAM iterations; "
                                  f"accepted: {self._min_iterations}..{MAX_CLIENT_ITERATIONS}")
        return count

    def _check_server_final(self, data: bytes) -> None:
        if self._server_signature is None:
            raise ClientAuthError("the server sent its SCRAM verifier too early")
        key, _, value = _text(data).partition("=")
        if key == "e":
            raise ClientAuthError(f"the server refused: {value.partition(',')[0]}")
        if key != "v":
            raise ClientAuthError("the server's SCRAM final message is not 'v=...'")
        signature = _client_side(_b64decode, value.partition(",")[0], "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ServerSignatureMismatch(
                "the server's SCRAM signature is wrong: it does not know this account's "
                "credentials (wrong server, or someone in the middle)")
        self._verified = True


def _text(data: bytes) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ClientAuthError("the server's SCRAM message is not UTF-8") from None


def _client_side(function, *args):
    """Run a shared parser, turning its server-side verdict into a client error."""
    try:
        return function(*args)
    except _Reject as reject:
        raise ClientAuthError(f"the server's SCRAM message is malformed: "
                              f"{reject.failure.text}") from None
