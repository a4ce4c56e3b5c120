"""JIDs (RFC 7622): the RFC's own examples first, then the edges."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iim.xmpp import jid as jid_module
from iim.xmpp.jid import JID, InvalidJID

# ---------------------------------------------------------------------------
# RFC 7622 §3.5, "Examples": valid JIDs, with the canonical form we keep.

RFC_7622_VALID = [
    ("juliet@example.com", "juliet@example.com"),  # 1. a "bare JID"
    ("juliet@example.com/foo", "juliet@example.com/foo"),  # 2. a "full JID"
    ("juliet@example.com/foo bar", "juliet@example.com/foo bar"),  # 3. space in the resource
    ("juliet@example.com/foo@bar", "juliet@example.com/foo@bar"),  # 4. '@' in the resource
    ("foo\\20bar@example.com", "foo\\20bar@example.com"),  # 5. XEP-0106 escaping in the localpart
    ("fussball@example.com", "fussball@example.com"),  # 6.
    ("fußball@example.com", "fußball@example.com"),  # 7. eszett stays (toLowerCase, not folding)
    ("π@example.com", "π@example.com"),  # 8.
    ("Σ@example.com/foo", "σ@example.com/foo"),  # 9. capital sigma is lower-cased
    ("σ@example.com/foo", "σ@example.com/foo"),  # 10.
    ("ς@example.com/foo", "ς@example.com/foo"),  # 11. final sigma is its own letter
    ("king@example.com/♚", "king@example.com/♚"),  # 12. a symbol in the resource
    ("example.com", "example.com"),  # 13. a domain-only JID
    ("example.com/foobar", "example.com/foobar"),  # 14. a domain with a resource
    ("a.example.com/b@example.net", "a.example.com/b@example.net"),  # 15.
]

# RFC 7622 §3.5: invalid JIDs, with the one-line reason we give.
RFC_7622_INVALID = [
    ('"juliet"@example.com', "localpart contains forbidden character '\"'"),  # 16.
    ("foo bar@example.com", "localpart contains forbidden character ' '"),  # 17.
    ("juliet@example.com/", "empty resourcepart"),  # 18.
    ("@example.com/", "empty localpart"),  # 19.
    # 20. ROMAN NUMERAL FOUR has a compatibility decomposition (IV): not an identifier.
    ("henry\u2163@example.com", "localpart contains forbidden character U+2173"),
    ("\u265a@example.com", "localpart contains forbidden character U+265A"),  # 21. a chess king
    ("juliet@", "empty domainpart"),  # 22.
    ("/foobar", "empty domainpart"),  # 23.
]


@pytest.mark.parametrize("text, canonical", RFC_7622_VALID)
def test_rfc_7622_valid_examples(text, canonical):
    jid = JID.parse(text)
    assert str(jid) == canonical
    assert JID.parse(str(jid)) == jid


@pytest.mark.parametrize("text, reason", RFC_7622_INVALID)
def test_rfc_7622_invalid_examples(text, reason):
    with pytest.raises(InvalidJID) as caught:
        JID.parse(text)
    assert str(caught.value).startswith(reason)


# ---------------------------------------------------------------------------
# Splitting (RFC 7622 §3.1)


def test_parts():
    jid = JID.parse("juliet@example.com/balcony")
    assert (jid.local, jid.domain, jid.resource) == ("juliet", "example.com", "balcony")
    assert JID.parse("example.com").local is None
    assert JID.parse("example.com").resource is None


def test_resource_is_everything_after_the_first_slash():
    jid = JID.parse("a@example.com/b/c@d/e")
    assert (jid.local, jid.domain, jid.resource) == ("a", "example.com", "b/c@d/e")


def test_localpart_is_everything_before_the_first_at():
    with pytest.raises(InvalidJID, match="domainpart"):
        JID.parse("a@b@example.com")


def test_an_at_sign_in_the_resource_does_not_make_a_localpart():
    jid = JID.parse("example.com/user@host")
    assert jid.local is None and jid.resource == "user@host"


# ---------------------------------------------------------------------------
# Comparison after preparation


def test_localpart_and_domainpart_are_case_insensitive_resource_is_not():
    assert JID.parse("Juliet@Example.COM/balcony") == JID.parse("juliet@example.com/balcony")
    assert JID.parse("juliet@example.com/Balcony") != JID.parse("juliet@example.com/balcony")


def test_sigmas():
    assert JID.parse("Σ@example.com") == JID.parse("σ@example.com")
    assert JID.parse("ς@example.com") != JID.parse("σ@example.com")


def test_eszett_is_not_folded_to_ss():
    assert JID.parse("fußball@example.com") != JID.parse("fussball@example.com")


def test_nfc_normalization_in_localpart_and_resource():
    decomposed = JID.parse("re\u0301sume\u0301@example.com/cafe\u0301")
    assert decomposed == JID.parse("résumé@example.com/café")
    assert decomposed.local == "r\u00e9sum\u00e9"


def test_fullwidth_localpart_is_narrowed():
    assert JID.parse("\uff2a\uff55\uff4c\uff49\uff45\uff54@example.com").local == "juliet"


def test_jids_are_hashable_values():
    seen = {JID.parse("juliet@example.com"): 1}
    assert seen[JID.parse("JULIET@example.com.")] == 1


# ---------------------------------------------------------------------------
# The localpart (RFC 7622 §3.3)


@pytest.mark.parametrize("char", list("\"&'/:<>@"))
def test_localpart_forbidden_ascii(char):
    # '/' and '@' are split away by the parser, so build the JID directly.
    with pytest.raises(InvalidJID, match="localpart contains forbidden character"):
        JID(f"a{char}b", "example.com")


@pytest.mark.parametrize("char", ["\x00", "\x07", "\t", "\x7f", "\u00a0", "\u200b", "\u202e"])
def test_localpart_controls_spaces_and_format_characters(char):
    with pytest.raises(InvalidJID, match="localpart contains forbidden character U\\+"):
        JID(f"a{char}b", "example.com")


def test_localpart_other_ascii_punctuation_is_fine():
    assert JID.parse("a!#$%*+-.=?^_`{|}~\\b@example.com").local == "a!#$%*+-.=?^_`{|}~\\b"


def test_localpart_error_names_the_character_without_echoing_the_jid():
    with pytest.raises(InvalidJID) as caught:
        JID.parse("x" * 5000 + "<@example.com")
    assert str(caught.value) == "localpart contains forbidden character '<'"


# ---------------------------------------------------------------------------
# The domainpart (RFC 7622 §3.2)


def test_one_trailing_dot_is_stripped():
    assert JID.parse("juliet@example.com.").domain == "example.com"
    with pytest.raises(InvalidJID, match="empty label"):
        JID.parse("juliet@example.com..")


def test_ideographic_full_stop_is_a_label_separator():
    assert JID.parse("juliet@example\u3002com").domain == "example.com"


@pytest.mark.parametrize(
    "domain, reason",
    [
        ("exa_mple.com", "not a host name label"),
        ("-example.com", "not a host name label"),
        ("example-.com", "not a host name label"),
        ("a" * 64 + ".com", "not a host name label"),
        ("exa mple.com", "not a host name label"),
        (".example.com", "empty label"),
        ("xn--zz.example", "not a valid A-label"),
        ("\u2603.example", "not valid IDNA"),  # a snowman: a symbol, not IDNA2008
        ("example.com:5222", "IPv6 address must be in [brackets]"),
    ],
)
def test_invalid_domainparts(domain, reason):
    with pytest.raises(InvalidJID, match=reason.replace("[", "\\[").replace("]", "\\]")):
        JID.parse(f"juliet@{domain}")


def test_idna_a_label_becomes_u_label():
    # RFC 7622 §3.2.1: A-labels are converted to U-labels.
    assert JID.parse("juliet@xn--bcher-kva.example").domain == "bücher.example"
    assert JID.parse("juliet@XN--BCHER-KVA.example") == JID.parse("juliet@BÜCHER.example")


def test_idna_u_labels():
    assert JID.parse("用户@例子.广告").domain == "例子.广告"
    assert JID.parse("juliet@ｅｘａｍｐｌｅ.com").domain == "example.com"


def test_without_the_idna_package_the_builtin_codec_is_used(monkeypatch):
    monkeypatch.setattr(jid_module, "_idna", None)
    assert JID.parse("juliet@xn--bcher-kva.example").domain == "bücher.example"
    assert JID.parse("juliet@Bücher.example").domain == "bücher.example"
    with pytest.raises(InvalidJID, match="IDNA"):
        JID.parse("juliet@" + "ü" * 70 + ".example")


@pytest.mark.parametrize(
    "text, domain",
    [
        ("juliet@192.0.2.1", "192.0.2.1"),
        ("192.0.2.1/res", "192.0.2.1"),
        ("juliet@[2001:DB8::1]", "[2001:db8::1]"),
        ("juliet@[2001:db8:0:0:0:0:0:1]/balcony", "[2001:db8::1]"),
        ("[::1]", "[::1]"),
        ("juliet@[::ffff:192.0.2.1]", "[::ffff:c000:201]"),
    ],
)
def test_ip_literals(text, domain):
    assert JID.parse(text).domain == domain


@pytest.mark.parametrize(
    "domain", ["[::1", "[]", "[::g]", "[fe80::1%eth0]", "[192.0.2.1]", "192.0.2.256"]
)
def test_invalid_ip_literals(domain):
    with pytest.raises(InvalidJID, match="IPv4|IPv6"):
        JID.parse(f"juliet@{domain}")


# ---------------------------------------------------------------------------
# The resourcepart (RFC 7622 §3.4)


def test_resource_keeps_case_spaces_and_symbols():
    assert JID.parse("a@example.com/My Phone ♚ (2)").resource == "My Phone ♚ (2)"


def test_resource_non_ascii_spaces_become_ascii_space():
    assert JID.parse("a@example.com/my\u00a0phone\u3000x").resource == "my phone x"


@pytest.mark.parametrize(
    "char", ["\x00", "\x07", "\n", "\x7f", "\u200b", "\u202e", "\ue000", "\ufffe"]
)
def test_resource_forbidden_characters(char):
    with pytest.raises(InvalidJID, match="resourcepart contains forbidden character U\\+"):
        JID.parse(f"a@example.com/x{char}y")


# ---------------------------------------------------------------------------
# Length limits: 1023 octets per part, after preparation


def test_localpart_length_limit():
    assert len(JID.parse("a" * 1023 + "@example.com").local) == 1023
    with pytest.raises(InvalidJID, match="^localpart longer than 1023 octets$"):
        JID.parse("a" * 1024 + "@example.com")


def test_length_limit_is_in_octets_not_characters():
    assert JID.parse("é" * 511 + "@example.com")  # 1022 octets
    with pytest.raises(InvalidJID, match="localpart longer than 1023 octets"):
        JID.parse("é" * 512 + "@example.com")  # 1024 octets, 512 characters


def test_resourcepart_length_limit():
    assert len(JID.parse("a@example.com/" + "r" * 1023).resource) == 1023
    with pytest.raises(InvalidJID, match="^resourcepart longer than 1023 octets$"):
        JID.parse("a@example.com/" + "r" * 1024)


def test_domainpart_length_limit():
    label = "a" * 63
    longest = ".".join([label] * 16)  # 16 * 63 + 15 = 1023 octets
    assert len(JID.parse(longest).domain) == 1023
    with pytest.raises(InvalidJID, match="^domainpart longer than 1023 octets$"):
        JID.parse(longest + ".b")


# ---------------------------------------------------------------------------
# Bare and full JIDs


def test_bare_and_full():
    full = JID.parse("juliet@example.com/balcony")
    assert not full.is_bare
    assert full.bare == JID.parse("juliet@example.com")
    assert full.bare.is_bare
    bare = full.bare
    assert bare.bare is bare
    assert full.bare.with_resource("balcony") == full


def test_with_resource_prepares_the_resource():
    bare = JID.parse("juliet@example.com")
    assert bare.with_resource("cafe\u0301").resource == "café"
    with pytest.raises(InvalidJID, match="empty resourcepart"):
        bare.with_resource("")


def test_constructor_prepares_and_validates():
    assert JID("Juliet", "Example.COM", "balcony") == JID.parse("juliet@example.com/balcony")
    assert JID(None, "example.com") == JID.parse("example.com")
    with pytest.raises(InvalidJID, match="empty localpart"):
        JID("", "example.com")
    with pytest.raises(InvalidJID, match="empty domainpart"):
        JID("juliet", "")


def test_jid_is_immutable():
    jid = JID.parse("juliet@example.com")
    with pytest.raises(AttributeError):
        jid.local = "romeo"


def test_repr_and_str():
    jid = JID.parse("juliet@example.com/balcony")
    assert str(jid) == "juliet@example.com/balcony"
    assert repr(jid) == "JID('juliet@example.com/balcony')"


def test_invalid_jid_is_a_value_error():
    assert issubclass(InvalidJID, ValueError)


# ---------------------------------------------------------------------------
# Preparation is idempotent: what we print, we parse back to the same JID.


@given(st.text(max_size=40))
def test_parse_either_refuses_or_round_trips(text):
    try:
        jid = JID.parse(text)
    except InvalidJID as error:
        assert "\n" not in str(error)
        return
    assert JID.parse(str(jid)) == jid
    assert str(JID.parse(str(jid))) == str(jid)


@given(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.sampled_from(["example.com", "bücher.example", "[::1]", "192.0.2.1"]),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
)
def test_parts_round_trip(local, domain, resource):
    try:
        jid = JID(local, domain, resource)
    except InvalidJID:
        return
    assert JID.parse(str(jid)) == jid
