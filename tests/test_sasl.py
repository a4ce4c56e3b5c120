"""SASL in XMPP (RFC 6120 §6): SCRAM-SHA-1 (RFC 5802), SCRAM-SHA-256 (RFC 7677), PLAIN (RFC 4616).

The two ends are wired together in memory: ``ClientAuth`` speaks for the
initiating entity, ``ServerAuth`` for the receiving entity, and the tests read
the bytes between them the way the RFCs print their examples.
"""

import base64
import collections
import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings, strategies as st

from iim.xmpp import sasl
from iim.xmpp.errors import LocalProtocolError
from iim.xmpp.sasl import (
    Challenge, ClientAuth, ClientAuthError, Failure, Mechanism, SASLFailure, ScramCredentials,
    ServerAuth, ServerSignatureMismatch, Success, decode_payload, derive_credentials,
    encode_payload, offered_mechanisms, saslprep,
)

DOMAIN = "example.com"
SECRET = b"s" * 32
SHA1, SHA256, PLAIN = Mechanism.SCRAM_SHA_1, Mechanism.SCRAM_SHA_256, Mechanism.PLAIN

# RFC 5802 §5: user "user", password "pencil", SCRAM-SHA-1.
RFC5802 = dict(
    client_nonce="fyko+d2lbbFgONRv9qkxdawL",
    server_nonce="3rfcNHYJY1ZVvWVs7j",
    salt="QSXCR+Q6sek8bf92",
    client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final=b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                 b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
)

# RFC 7677 §3: user "user", password "pencil", SCRAM-SHA-256.
RFC7677 = dict(
    client_nonce="rOprNGfwEbeRWgbNEkqO",
    server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    salt="W22ZaJ0SNY7soEsUEjb6gQ==",
    client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_first=b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    client_final=b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
)

VECTORS = [pytest.param(SHA1, RFC5802, id="RFC5802-SCRAM-SHA-1"),
           pytest.param(SHA256, RFC7677, id="RFC7677-SCRAM-SHA-256")]


class Accounts(dict):
    """username -> {Mechanism: ScramCredentials}."""

    def lookup(self, username):
        return self.get(username)

    def add(self, username, password):
        self[username] = {m: derive_credentials(password, m) for m in sasl.SCRAM_MECHANISMS}


@pytest.fixture(scope="module")
def accounts():
    accounts = Accounts()
    accounts.add("juliet", "r0m30myr0m30")
    accounts.add("a,b=c", "commas and equals")
    return accounts


def server(accounts, **options):
    options.setdefault("secret", SECRET)
    return ServerAuth(accounts.lookup, DOMAIN, **options)


def authenticate(client, server, mechanism):
    """Run the exchange as the stream would; return the server's last step."""
    step = server.start(mechanism.value, client.start())
    while isinstance(step, Challenge):
        step = server.respond(client.respond(step.data))
    if isinstance(step, Success):
        client.verify_success(step.additional_data)
    return step


# ---------------------------------------------------------------------------
# The RFC examples, byte for byte


@pytest.mark.parametrize("mechanism, vector", VECTORS)
def test_client_reproduces_the_rfc_example(mechanism, vector):
    client = ClientAuth("user", "pencil", mechanism, nonce=vector["client_nonce"])
    assert client.start() == vector["client_first"]
    assert client.respond(vector["server_first"]) == vector["client_final"]
    client.verify_success(vector["server_final"])


@pytest.mark.parametrize("mechanism, vector", VECTORS)
def test_server_reproduces_the_rfc_example(mechanism, vector):
    credentials = derive_credentials("pencil", mechanism, base64.b64decode(vector["salt"]), 4096)
    auth = ServerAuth({"user": {mechanism: credentials}}.get, DOMAIN,
                      nonce=vector["server_nonce"])
    assert auth.start(mechanism, vector["client_first"]) == Challenge(vector["server_first"])
    assert auth.respond(vector["client_final"]) == Success(vector["server_final"], "user")


@pytest.mark.parametrize("mechanism, vector", VECTORS)
def test_a_server_that_does_not_know_the_password_is_caught(mechanism, vector):
    client = ClientAuth("user", "pencil", mechanism, nonce=vector["client_nonce"])
    client.start()
    client.respond(vector["server_first"])
    forged = b"v=" + base64.b64encode(b"\0" * (20 if mechanism is SHA1 else 32))
    with pytest.raises(ServerSignatureMismatch, match="does not know"):
        client.verify_success(forged)


def test_credentials_hold_no_password():
    credentials = derive_credentials("pencil", SHA256)
    assert isinstance(credentials, ScramCredentials)
    assert len(credentials.salt) == 16 and credentials.iterations == 4096
    assert len(credentials.stored_key) == len(credentials.server_key) == 32
    assert b"pencil" not in repr(credentials).encode()
    assert derive_credentials("pencil", SHA256).salt != credentials.salt


def test_credentials_refuse_weak_parameters():
    with pytest.raises(ValueError, match="at least 4096"):
        derive_credentials("pencil", SHA1, iterations=1000)
    with pytest.raises(ValueError, match="empty password"):
        derive_credentials("", SHA256)
    with pytest.raises(ValueError):
        derive_credentials("pencil", PLAIN)


# ---------------------------------------------------------------------------
# RFC 6120 §6.3.3: what is offered


def test_plain_is_offered_only_under_tls():
    assert offered_mechanisms(tls=False) == [SHA256, SHA1]
    assert offered_mechanisms(tls=True) == [SHA256, SHA1, PLAIN]


def test_plain_without_tls_is_encryption_required(accounts):
    step = server(accounts).start("PLAIN", b"\0juliet\0r0m30myr0m30")
    assert step == Failure(SASLFailure.ENCRYPTION_REQUIRED, "PLAIN needs TLS")


@pytest.mark.parametrize("name", ["DIGEST-MD5", "SCRAM-SHA-1-PLUS", "scram-sha-1", ""])
def test_unknown_mechanism_is_invalid_mechanism(accounts, name):
    assert server(accounts).start(name, b"") == Failure(SASLFailure.INVALID_MECHANISM)


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("mechanism", [SHA256, SHA1, PLAIN])
def test_round_trip(accounts, mechanism):
    client = ClientAuth("juliet", "r0m30myr0m30", mechanism)
    step = authenticate(client, server(accounts, tls=True), mechanism)
    assert isinstance(step, Success) and step.username == "juliet"
    assert (step.additional_data is None) == (mechanism is PLAIN)


@pytest.mark.parametrize("mechanism", [SHA256, SHA1, PLAIN])
def test_wrong_password_is_not_authorized(accounts, mechanism):
    client = ClientAuth("juliet", "wherefore", mechanism)
    step = authenticate(client, server(accounts, tls=True), mechanism)
    assert step == Failure(SASLFailure.NOT_AUTHORIZED)


@pytest.mark.parametrize("mechanism", [SHA256, SHA1, PLAIN])
def test_username_is_prepared_as_a_localpart(accounts, mechanism):
    client = ClientAuth("Juliet", "r0m30myr0m30", mechanism)
    step = authenticate(client, server(accounts, tls=True), mechanism)
    assert step == Success(step.additional_data, "juliet")


def test_scram_without_initial_response_starts_with_an_empty_challenge(accounts):
    """RFC 6120 §6.4.2: no initial response; the server's first challenge is empty."""
    auth = server(accounts)
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256)
    assert auth.start(SHA256, None) == Challenge(b"")
    step = auth.respond(client.start())
    step = auth.respond(client.respond(step.data))
    assert isinstance(step, Success)


def test_server_final_message_in_a_challenge_is_accepted_by_the_client(accounts):
    """RFC 6120 §6.3.10: the final data may come in a challenge, then an empty success."""
    auth = server(accounts)
    client = ClientAuth("juliet", "r0m30myr0m30", SHA1)
    first = auth.start(SHA1, client.start())
    success = auth.respond(client.respond(first.data))
    assert client.respond(success.additional_data) == b""
    client.verify_success(None)


def test_escaped_username_round_trip(accounts):
    """RFC 5802 §5.1: ',' travels as '=2C' and '=' as '=3D'."""
    client = ClientAuth("a,b=c", "commas and equals", SHA256)
    assert client.start().startswith(b"n,,n=a=2Cb=3Dc,r=")
    client = ClientAuth("a,b=c", "commas and equals", SHA256)
    step = authenticate(client, server(accounts), SHA256)
    assert isinstance(step, Success) and step.username == "a,b=c"


def test_saslprep_makes_equivalent_passwords_equal():
    accounts = Accounts()
    accounts.add("romeo", "I\u00adX")            # soft hyphen: mapped to nothing
    for mechanism in (SHA256, PLAIN):
        client = ClientAuth("romeo", "IX", mechanism)
        assert isinstance(authenticate(client, server(accounts, tls=True), mechanism), Success)


# ---------------------------------------------------------------------------
# Unknown users look exactly like wrong passwords


SERVER_FIRST = re.compile(rb"r=[\x21-\x2b\x2d-\x7e]+,s=([A-Za-z0-9+/]{22}==),i=4096")


@pytest.mark.parametrize("mechanism", [SHA256, SHA1])
def test_unknown_user_gets_the_same_challenge_shape_and_failure(accounts, mechanism):
    shapes, failures = [], []
    for username, password in (("juliet", "wrong"), ("nobody", "wrong")):
        client = ClientAuth(username, password, mechanism)
        auth = server(accounts)
        first = auth.start(mechanism, client.start())
        shapes.append(SERVER_FIRST.fullmatch(first.data) is not None)
        failures.append(auth.respond(client.respond(first.data)))
    assert shapes == [True, True]
    assert failures == [Failure(SASLFailure.NOT_AUTHORIZED)] * 2


def salt_for(accounts, username, secret=SECRET):
    client = ClientAuth(username, "x", SHA256)
    first = ServerAuth(accounts.lookup, DOMAIN, secret=secret).start(SHA256, client.start())
    return SERVER_FIRST.fullmatch(first.data).group(1)


def test_unknown_user_salt_is_stable_like_a_real_one(accounts):
    assert salt_for(accounts, "nobody") == salt_for(accounts, "nobody")
    assert salt_for(accounts, "juliet") == salt_for(accounts, "juliet")
    assert salt_for(accounts, "nobody") != salt_for(accounts, "somebody")
    assert salt_for(accounts, "nobody") != salt_for(accounts, "nobody", secret=b"t" * 32)


def server_work(accounts, username, mechanism, monkeypatch):
    """Run a wrong-password exchange; count PBKDF2 runs and HMACs on the server side."""
    counts = collections.Counter()

    def counting(name, real):
        def wrapper(*args):
            counts[name] += 1
            return real(*args)
        return wrapper

    def on_server(call, *args):
        with monkeypatch.context() as patch:
            patch.setattr(sasl.hashlib, "pbkdf2_hmac", counting("pbkdf2", hashlib.pbkdf2_hmac))
            patch.setattr(sasl, "_hmac", counting("hmac", sasl._hmac))
            return call(*args)

    client = ClientAuth(username, "wrong", mechanism)
    auth = server(accounts, tls=True)
    step = on_server(auth.start, mechanism, client.start())
    if isinstance(step, Challenge):
        step = on_server(auth.respond, client.respond(step.data))
    assert step == Failure(SASLFailure.NOT_AUTHORIZED)
    return counts


@pytest.mark.parametrize("mechanism", [SHA256, SHA1, PLAIN])
def test_unknown_user_costs_what_a_wrong_password_costs(accounts, mechanism, monkeypatch):
    known = server_work(accounts, "juliet", mechanism, monkeypatch)
    assert known == server_work(accounts, "nobody", mechanism, monkeypatch)
    assert known["pbkdf2"] == (1 if mechanism is PLAIN else 0)


def test_unknown_user_with_an_invalid_localpart_is_just_unknown(accounts):
    client = ClientAuth("no<body>", "wrong", SHA256)
    assert authenticate(client, server(accounts), SHA256) == Failure(SASLFailure.NOT_AUTHORIZED)


# ---------------------------------------------------------------------------
# authzid (RFC 6120 §6.3.8)


@pytest.mark.parametrize("mechanism", [SHA256, PLAIN])
@pytest.mark.parametrize("authzid", [None, "juliet@example.com", "Juliet@EXAMPLE.com"])
def test_own_bare_jid_is_an_acceptable_authzid(accounts, mechanism, authzid):
    client = ClientAuth("juliet", "r0m30myr0m30", mechanism, authzid=authzid)
    assert isinstance(authenticate(client, server(accounts, tls=True), mechanism), Success)


@pytest.mark.parametrize("mechanism", [SHA256, PLAIN])
@pytest.mark.parametrize("authzid", ["romeo@example.com", "juliet@example.org",
                                     "juliet@example.com/balcony", "example.com", "@@"])
def test_any_other_authzid_is_invalid_authzid(accounts, mechanism, authzid):
    client = ClientAuth("juliet", "r0m30myr0m30", mechanism, authzid=authzid)
    step = authenticate(client, server(accounts, tls=True), mechanism)
    assert isinstance(step, Failure) and step.condition is SASLFailure.INVALID_AUTHZID


# ---------------------------------------------------------------------------
# Channel binding flags (RFC 5802 §6) and malformed SCRAM messages


def scram_exchange(accounts, client_first, mechanism=SHA1):
    auth = server(accounts)
    return auth, auth.start(mechanism, client_first)


def rfc5802_client_final(password, bare, server_first, gs2_header, hash_name="sha1"):
    """RFC 5802 §3, written out independently of the module under test."""
    attributes = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), base64.b64decode(attributes["s"]),
                                 int(attributes["i"]))
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    stored_key = hashlib.new(hash_name, client_key).digest()
    without_proof = f"c={base64.b64encode(gs2_header.encode()).decode()},r={attributes['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, hash_name)
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_flag_y_is_accepted_because_we_offer_no_plus(accounts):
    """The client could bind but believes we cannot: right, since no -PLUS is offered."""
    bare = "n=juliet,r=abc"
    auth, first = scram_exchange(accounts, b"y,," + bare.encode())
    assert isinstance(first, Challenge)
    final = rfc5802_client_final("r0m30myr0m30", bare, first.data.decode(), "y,,")
    assert final.startswith(b"c=eSws,")
    assert isinstance(auth.respond(final), Success)


def test_flag_p_is_refused(accounts):
    _, step = scram_exchange(accounts, b"p=tls-unique,,n=juliet,r=abc")
    assert step.condition is SASLFailure.MALFORMED_REQUEST
    assert "channel binding" in step.text


@pytest.mark.parametrize("client_first", [
    b"", b"n", b"n,", b"x,,n=juliet,r=abc", b"n,b=juliet,n=juliet,r=abc",
    b"n,,m=ext,n=juliet,r=abc", b"n,,n=juliet", b"n,,r=abc,n=juliet", b"n,,n=,r=abc",
    b"n,,n=jul=2Xiet,r=abc", b"n,,n=juliet,r=a\x7fc", b"n,,n=juliet,r=", b"n,,n=ju\xffliet,r=abc",
    b"n,,n=juliet\0,r=abc", b"n,a=,n=juliet,r=abc", b"n,,n=juliet,r=abc,", b"n,,=x,r=abc",
])
def test_malformed_client_first_is_malformed_request(accounts, client_first):
    _, step = scram_exchange(accounts, client_first)
    assert step.condition is SASLFailure.MALFORMED_REQUEST


def test_extensions_after_the_nonce_are_ignored(accounts):
    _, step = scram_exchange(accounts, b"n,,n=juliet,r=abc,x=future")
    assert isinstance(step, Challenge)


@pytest.fixture
def halfway(accounts):
    """A server that has sent its server-first message to a well-behaved client."""
    client = ClientAuth("juliet", "r0m30myr0m30", SHA1, nonce="abc")
    auth, first = scram_exchange(accounts, client.start())
    return auth, client.respond(first.data)


@pytest.mark.parametrize("change, condition", [
    (lambda m: m.replace(b"c=biws", b"c=eSws"), SASLFailure.MALFORMED_REQUEST),
    (lambda m: m.replace(b"c=biws", b"c=b!ws"), SASLFailure.INCORRECT_ENCODING),
    (lambda m: m.replace(b"r=abc", b"r=abd"), SASLFailure.MALFORMED_REQUEST),
    (lambda m: m[: m.index(b",p=") + 3] + b"*", SASLFailure.INCORRECT_ENCODING),
    (lambda m: m[: m.index(b",p=") + 3] + b"AAAA", SASLFailure.NOT_AUTHORIZED),
    (lambda m: m[: m.index(b",p=")], SASLFailure.MALFORMED_REQUEST),
    (lambda m: m.split(b",", 1)[1], SASLFailure.MALFORMED_REQUEST),
    (lambda m: b"", SASLFailure.MALFORMED_REQUEST),
    (lambda m: m + b",x=1", SASLFailure.MALFORMED_REQUEST),
])
def test_bad_client_final(halfway, change, condition):
    auth, client_final = halfway
    step = auth.respond(change(client_final))
    assert isinstance(step, Failure) and step.condition is condition


def test_extensions_before_the_proof_are_accepted_but_signed(accounts):
    client = ClientAuth("juliet", "r0m30myr0m30", SHA1, nonce="abc")
    auth, first = scram_exchange(accounts, client.start())
    final = client.respond(first.data)
    tampered = final.replace(b",p=", b",x=extra,p=")    # not in the client's AuthMessage
    assert auth.respond(tampered) == Failure(SASLFailure.NOT_AUTHORIZED)


# ---------------------------------------------------------------------------
# PLAIN (RFC 4616)


@pytest.mark.parametrize("message", [
    b"", b"juliet", b"\0juliet", b"\0\0r0m30myr0m30", b"\0juliet\0", b"\0juliet\0pw\0",
    b"\0jul\xffiet\0pw",
])
def test_malformed_plain_is_malformed_request(accounts, message):
    step = server(accounts, tls=True).start(PLAIN, message)
    assert step.condition is SASLFailure.MALFORMED_REQUEST


def test_plain_password_that_saslprep_refuses_is_simply_wrong(accounts):
    step = server(accounts, tls=True).start(PLAIN, b"\0juliet\0bell\x07")
    assert step == Failure(SASLFailure.NOT_AUTHORIZED)


def test_plain_user_with_only_sha1_credentials(accounts):
    sha1_only = {"old": {SHA1: derive_credentials("pw", SHA1)}}
    auth = ServerAuth(sha1_only.get, DOMAIN, tls=True)
    assert auth.start(PLAIN, b"\0old\0pw") == Success(None, "old")


# ---------------------------------------------------------------------------
# The negotiation around the mechanisms (RFC 6120 §6.4)


def test_abort_then_retry(accounts):
    auth = server(accounts)
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256)
    auth.start(SHA256, client.start())
    assert auth.abort() == Failure(SASLFailure.ABORTED)
    assert auth.respond(b"c=biws") == Failure(SASLFailure.MALFORMED_REQUEST,
                                              "no authentication in progress")
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256)
    assert isinstance(authenticate(client, auth, SHA256), Success)


def test_a_new_auth_discards_the_handshake_in_progress(accounts):
    auth = server(accounts)
    auth.start(SHA1, ClientAuth("juliet", "x", SHA1).start())
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256)
    assert isinstance(authenticate(client, auth, SHA256), Success)


def test_retry_after_failure(accounts):
    auth = server(accounts)
    assert isinstance(authenticate(ClientAuth("juliet", "no", SHA256), auth, SHA256), Failure)
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256)
    assert isinstance(authenticate(client, auth, SHA256), Success)


def test_feeding_a_server_that_succeeded_is_a_local_error(accounts):
    auth = server(accounts)
    authenticate(ClientAuth("juliet", "r0m30myr0m30", SHA256), auth, SHA256)
    with pytest.raises(LocalProtocolError):
        auth.respond(b"")
    with pytest.raises(LocalProtocolError):
        auth.start(SHA256, None)


@pytest.mark.parametrize("data, text", [(None, ""), (b"", "="), (b"\0user\0pw", "AHVzZXIAcHc=")])
def test_payload_encoding(data, text):
    """RFC 6120 §6.4.2: "=" is zero-length data; an empty element is no data."""
    assert encode_payload(data) == text
    assert decode_payload(text) == data


@pytest.mark.parametrize("text", ["A", "AHVzZXIAcHc", "AHVz ZXIAcHc=", "====", "*"])
def test_bad_base64_payload(text):
    with pytest.raises(ValueError, match="base64"):
        decode_payload(text)


# ---------------------------------------------------------------------------
# The client refuses what a hostile server might send


def started_client(**options):
    client = ClientAuth("juliet", "r0m30myr0m30", SHA256, nonce="abc", **options)
    client.start()
    return client


@pytest.mark.parametrize("server_first, message", [
    (b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours"),
    (b"r=abc,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours"),
    (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4095", "4095 SCRAM iterations"),
    (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=99999999", "99999999 SCRAM iterations"),
    (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=\xc2\xb2", "not a number"),
    (b"r=abcdef,s=Q!,i=4096", "not valid base64"),
    (b"m=x,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096", "malformed"),
    (b"r=abcdef,i=4096", "malformed"),
    (b"\xff", "not UTF-8"),
])
def test_client_refuses_a_bad_server_first(server_first, message):
    with pytest.raises(ClientAuthError, match=message):
        started_client().respond(server_first)


def test_client_reports_a_server_error():
    client = ClientAuth("user", "pencil", SHA1, nonce=RFC5802["client_nonce"])
    client.start()
    client.respond(RFC5802["server_first"])
    with pytest.raises(ClientAuthError, match="refused: invalid-proof"):
        client.verify_success(b"e=invalid-proof")


def test_client_wants_the_server_signature():
    client = ClientAuth("user", "pencil", SHA1, nonce=RFC5802["client_nonce"])
    client.start()
    client.respond(RFC5802["server_first"])
    with pytest.raises(ClientAuthError, match="without proving"):
        client.verify_success(None)


def test_plain_client():
    client = ClientAuth("juliet", "r0m30myr0m30", PLAIN, authzid="juliet@example.com")
    assert client.start() == b"juliet@example.com\0juliet\0r0m30myr0m30"
    client.verify_success(None)
    with pytest.raises(ClientAuthError):
        client.respond(b"")


def test_client_refuses_an_empty_password():
    with pytest.raises(ValueError, match="empty password"):
        ClientAuth("juliet", "", SHA256)


# ---------------------------------------------------------------------------
# SASLprep (RFC 4013 §3, the examples)


@pytest.mark.parametrize("text, prepared", [
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"),
    ("\u2168", "IX"), ("a\u00a0b", "a b"),
])
def test_saslprep_examples(text, prepared):
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "a\ue000"])
def test_saslprep_refusals_do_not_echo_the_text(text):
    with pytest.raises(ValueError) as info:
        saslprep(text)
    assert text not in str(info.value)


# ---------------------------------------------------------------------------
# Property: nothing a peer sends makes either side raise something unexpected


@settings(max_examples=300, deadline=None)
@given(mechanism=st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]),
       first=st.one_of(st.none(), st.binary(max_size=200)), second=st.binary(max_size=200))
def test_server_never_raises_on_peer_input(accounts, mechanism, first, second):
    auth = server(accounts, tls=True)
    step = auth.start(mechanism, first)
    assert isinstance(step, (Challenge, Failure, Success))
    if isinstance(step, Challenge):
        assert isinstance(auth.respond(second), (Challenge, Failure, Success))


scram_like = st.lists(
    st.tuples(st.sampled_from("cnprsivem"), st.text(max_size=12)), max_size=6,
).map(lambda pairs: ",".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(scram_like, st.binary(max_size=200)))
def test_server_never_raises_on_a_scram_like_client_final(accounts, data):
    client = ClientAuth("juliet", "r0m30myr0m30", SHA1, nonce="abc")
    auth = server(accounts)
    auth.start(SHA1, client.start())
    step = auth.respond(b"c=biws,r=abc" + data if data[:1] == b"," else data)
    assert isinstance(step, Failure)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(scram_like, st.binary(max_size=200)),
       final=st.one_of(st.none(), scram_like, st.binary(max_size=100)))
def test_client_raises_only_client_auth_error(data, final):
    client = started_client()
    try:
        client.respond(data)
        client.verify_success(final)
    except ClientAuthError:
        pass
