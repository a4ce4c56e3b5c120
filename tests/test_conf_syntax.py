"""iim.conf syntax, rule by rule (the rules in iim/conf/syntax.py's theory of operation).

Each test states one rule; error tests assert the exact line a user sees.
"""

import pytest
from hypothesis import given, settings, strategies as st

from iim.conf import (
    ConfigError, Diagnostic, RawValue, Severity, format_value, from_text, load, parse_text,
)


def values(text):
    """key -> value of a file that must parse cleanly."""
    return {key: raw.value for key, raw in parse_text(text).entries.items()}


def errors(text, path="iim.conf"):
    """The error lines parse_text reports for `text`."""
    with pytest.raises(ConfigError) as caught:
        parse_text(text, path)
    return str(caught.value).split("\n")


def warnings(text):
    return [str(w) for w in parse_text(text).warnings]


# -- lines, comments, keys ----------------------------------------------------

def test_comments_and_blank_lines_are_ignored():
    text = "! a comment\n\n   \t\n   ! an indented comment\niim_mux.maxsessions = 10\n"
    assert parse_text(text).entries == {"iim_mux.maxsessions": RawValue("10", 5)}


def test_blanks_around_the_equals_sign_do_not_matter():
    text = "a=1\nb = 2\nc\t=\t3\n  d  =  4  \n"
    assert values(text) == {"a": "1", "b": "2", "c": "3", "d": "4"}


def test_the_key_ends_at_the_first_equals_sign_so_values_may_hold_more():
    assert values("iim.policy = a=b=c\n") == {"iim.policy": "a=b=c"}


def test_keys_are_case_insensitive_and_stored_lower_case():
    assert values("IIM_Mux.MaxSessions = 10\n") == {"iim_mux.maxsessions": "10"}


def test_an_empty_value_is_the_empty_string():
    assert values("iim_mux.keydbprefix =\niim_mux.certdbprefix = \"\"\n") == {
        "iim_mux.keydbprefix": "", "iim_mux.certdbprefix": ""}


def test_a_line_without_an_equals_sign_is_an_error_naming_the_line():
    assert errors("! fine\niim_mux.usessl on\n") == [
        'iim.conf:2: expected "parameter = value", found no "="']


def test_a_language_variant_without_an_equals_sign_is_an_error():
    assert errors("iim.banner;lang-fr bonjour\n") == [
        'iim.conf:1: expected "parameter;lang-xx = value", found no "="']


def test_a_missing_parameter_name_is_an_error():
    assert errors(" = 5\n") == ['iim.conf:1: expected a parameter name before "="']


def test_a_parameter_name_with_blanks_is_an_error_that_does_not_echo_the_line():
    assert errors("iim_server.password secret;x = 1\n") == [
        "iim.conf:1: a parameter name cannot contain blanks or quotes"]


# -- language variants ----------------------------------------------------------

def test_a_language_variant_is_kept_apart_from_the_base_key():
    raw = parse_text('iim.banner = "Hello"\niim.banner;lang-fr = "Bonjour"\n'
                     'iim.banner;LANG-pt-BR = "Olá"\n')
    assert raw.entries == {"iim.banner": RawValue("Hello", 1)}
    assert raw.variants == {"iim.banner": {"fr": RawValue("Bonjour", 2),
                                           "pt-br": RawValue("Olá", 3)}}


def test_a_variant_that_is_not_lang_xx_is_an_error():
    assert errors("iim.banner;fr = x\n") == [
        'iim.conf:1: iim.banner: expected a language variant like ";lang-fr", got ";fr"']


def test_a_repeated_variant_is_warned_about_like_a_repeated_key():
    assert warnings("a;lang-fr = 1\na;lang-fr = 2\n") == [
        "iim.conf:2: a;lang-fr: set twice (lines 1 and 2); the last one wins"]


# -- quoting and escapes ----------------------------------------------------------

def test_quotes_are_removed_and_keep_inner_blanks():
    assert values('a = "  two words  "\n') == {"a": "  two words  "}


def test_unquoted_values_lose_surrounding_blanks_only():
    assert values("a =   two  words \t \n") == {"a": "two  words"}


@pytest.mark.parametrize(("written", "meant"), [
    (r'"say \"hi\""', 'say "hi"'),
    (r'"C:\\dir"', "C:\\dir"),
    (r'"one\ntwo"', "one\ntwo"),
    (r'"cr\r"', "cr\r"),
    (r'"a\tb"', "a\tb"),
])
def test_escapes_inside_quotes(written, meant):
    assert values(f"a = {written}\n") == {"a": meant}


def test_backslashes_in_unquoted_values_are_literal():
    assert values(r"a = C:\dir\n" + "\n") == {"a": "C:\\dir\\n"}


def test_any_other_escape_is_an_error_naming_the_line():
    assert errors('! x\niim_mux.certnickname = "Mux\\qCert"\n') == [
        'iim.conf:2: iim_mux.certnickname: invalid escape \\q in a quoted value '
        '(use \\", \\\\, \\n, \\r or \\t)']


def test_a_bad_escape_in_a_password_does_not_show_the_character():
    assert errors('iim_server.password = "se\\cret"\n') == [
        'iim.conf:1: iim_server.password: invalid escape in a quoted value '
        '(use \\", \\\\, \\n, \\r or \\t)']


def test_an_unterminated_quote_is_an_error_naming_the_line():
    assert errors('a = 1\niim_server.serverid = "Iami-zed\nb = 2\n') == [
        'iim.conf:2: iim_server.serverid: unterminated quoted value (no closing ")']


def test_text_after_the_closing_quote_is_an_error():
    assert errors('iim_mux.usessl = "on" please\n') == [
        "iim.conf:1: iim_mux.usessl: unexpected text after the closing quote"]


def test_blanks_after_the_closing_quote_are_fine():
    assert values('a = "on"   \t\n') == {"a": "on"}


def test_only_a_leading_double_quote_opens_a_quoted_value():
    assert values("a = it's \"quoted\"\n") == {"a": 'it\'s "quoted"'}


# -- typographic quotes ----------------------------------------------------------------

def test_a_value_closing_with_a_typographic_quote_is_accepted_with_a_warning():
    raw = parse_text('! c\niim_server.useport = "True\u201d\n')
    assert raw.entries == {"iim_server.useport": RawValue("True", 2)}
    assert [str(w) for w in raw.warnings] == [
        'iim.conf:2: iim_server.useport: value closes with a typographic quote (\u201d) instead of "']
    assert raw.warnings[0].severity is Severity.WARNING


def test_a_closing_typographic_apostrophe_is_accepted_with_a_warning():
    assert warnings('a = "x\u2019  \n') == [
        'iim.conf:1: a: value closes with a typographic quote (\u2019) instead of "']


def test_a_value_wholly_in_typographic_quotes_is_accepted_with_a_warning():
    raw = parse_text("a = \u201cx\u201d\n")
    assert raw.entries["a"].value == "x"
    assert [str(w) for w in raw.warnings] == [
        'iim.conf:1: a: value is quoted with typographic quotes (\u201c \u201d) instead of "']


def test_a_typographic_opening_quote_closed_by_a_plain_one_is_warned_about():
    assert warnings('a = \u201cx"\n') == [
        'iim.conf:1: a: value opens with a typographic quote (\u201c) instead of "']


def test_a_typographic_quote_inside_a_value_is_just_a_character():
    raw = parse_text('a = "the client\u2019s \u201dview\u201d"\n')
    assert raw.entries["a"].value == "the client\u2019s \u201dview\u201d"
    assert raw.warnings == []


# -- continuation lines -------------------------------------------------------------------

def test_a_backslash_at_the_end_continues_an_unquoted_value():
    raw = parse_text("iim_server.coservers = coserver1,\\\ncoserver2\nb = 1\n")
    assert raw.entries == {"iim_server.coservers": RawValue("coserver1,coserver2", 1),
                           "b": RawValue("1", 3)}


def test_a_backslash_at_the_end_continues_a_quoted_value():
    raw = parse_text('a = "one \\\ntwo\\t\\\n three"\nb = 1\n')
    assert raw.entries == {"a": RawValue("one two\t three", 1), "b": RawValue("1", 4)}


def test_the_continuation_line_is_taken_verbatim_even_if_it_looks_like_a_comment():
    assert values("a = x\\\n  ! y\n") == {"a": "x  ! y"}


def test_blanks_after_the_continuation_backslash_are_allowed():
    assert values('a = x\\   \ny\nb = "p\\  \nq"\n') == {"a": "xy", "b": "pq"}


def test_an_escaped_backslash_at_the_end_of_a_quoted_line_does_not_continue():
    assert errors('a = "x\\\\\n"\n') == [
        'iim.conf:1: a: unterminated quoted value (no closing ")',
        'iim.conf:2: expected "parameter = value", found no "="',
    ]


def test_an_unquoted_continuation_on_the_last_line_is_an_error():
    assert errors("a = 1\nb = x\\") == [
        "iim.conf:2: b: a \\ at the end of the file continues nothing"]


def test_a_quoted_continuation_on_the_last_line_leaves_the_quote_unterminated():
    assert errors('a = "x\\\n') == [
        'iim.conf:1: a: unterminated quoted value (no closing ")']


# -- line endings ---------------------------------------------------------------------------

LINES = ["! comment", "a = 1", "b = \"two\\", "lines\"", "c = 3"]
EXPECTED = {"a": RawValue("1", 2), "b": RawValue("twolines", 3), "c": RawValue("3", 5)}


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_lines_end_with_lf_cr_or_crlf(newline):
    assert parse_text(newline.join(LINES) + newline).entries == EXPECTED


def test_line_endings_may_be_mixed():
    text = LINES[0] + "\r\n" + LINES[1] + "\r" + LINES[2] + "\n" + LINES[3] + "\r\n" + LINES[4]
    assert parse_text(text).entries == EXPECTED


def test_error_line_numbers_count_cr_only_lines():
    assert errors("a = 1\rb = 2\r\rc\r") == ['iim.conf:4: expected "parameter = value", found no "="']


def test_form_feeds_and_line_separators_do_not_end_lines():
    assert values("a = x\x0cy\u2028z\n") == {"a": "x\x0cy\u2028z"}


# -- duplicates ------------------------------------------------------------------------------

def test_the_last_occurrence_wins_with_a_warning_naming_both_lines():
    raw = parse_text("iim_mux.maxsessions = 10\n! x\nIIM_MUX.maxsessions = 20\n")
    assert raw.entries == {"iim_mux.maxsessions": RawValue("20", 3)}
    assert [str(w) for w in raw.warnings] == [
        "iim.conf:3: iim_mux.maxsessions: set twice (lines 1 and 3); the last one wins"]


def test_each_repeat_is_warned_about_against_the_one_before():
    assert warnings("a = 1\na = 2\na = 3\n") == [
        "iim.conf:2: a: set twice (lines 1 and 2); the last one wins",
        "iim.conf:3: a: set twice (lines 2 and 3); the last one wins",
    ]


# -- encoding ---------------------------------------------------------------------------------

def test_a_byte_order_mark_is_ignored(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_bytes(b"\xef\xbb\xbfiim_mux.maxsessions = 10\n")
    assert load(conf).mux.maxsessions == 10
    assert values("\ufeffa = 1\n") == {"a": "1"}


def test_values_are_utf8(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_bytes('iim_server.serverid = "Ünïcødé"\n'.encode())
    assert load(conf).server.serverid == "Ünïcødé"


def test_an_invalid_utf8_byte_in_a_comment_is_a_warning(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_bytes(b"! caf\xe9\niim_mux.maxsessions = 10\n")
    config = load(conf)
    assert config.mux.maxsessions == 10
    assert [str(w) for w in config.warnings] == [
        f"{conf}:1: comment is not valid UTF-8 (byte 0xe9)"]


def test_an_invalid_utf8_byte_elsewhere_is_an_error_naming_the_line(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_bytes(b"a = 1\niim_server.serverid = caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load(conf)
    assert str(caught.value) == f"{conf}:2: not valid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_an_invalid_byte_on_a_continuation_line_is_an_error_on_that_line(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_bytes(b"a = x\\\r\n! \xff\r\n")
    with pytest.raises(ConfigError) as caught:
        load(conf)
    assert str(caught.value) == f"{conf}:2: not valid UTF-8 (byte 0xff); save the file as UTF-8"


def test_a_nul_character_is_an_error_even_in_a_comment():
    assert errors("! a\x00b\nc = d\x00\n") == [
        "iim.conf:1: NUL character; iim.conf must be plain text",
        "iim.conf:2: NUL character; iim.conf must be plain text",
    ]


# -- reporting ---------------------------------------------------------------------------------

def test_every_error_is_reported_not_just_the_first():
    text = 'a = "x\nb\nc = "y" z\n= 1\n'
    assert errors(text, "/etc/iim/iim.conf") == [
        '/etc/iim/iim.conf:1: a: unterminated quoted value (no closing ")',
        '/etc/iim/iim.conf:2: expected "parameter = value", found no "="',
        "/etc/iim/iim.conf:3: c: unexpected text after the closing quote",
        '/etc/iim/iim.conf:4: expected a parameter name before "="',
    ]


def test_an_entry_with_a_syntax_error_gets_no_second_error_from_its_type():
    with pytest.raises(ConfigError) as caught:
        from_text('iim_mux.maxsessions = "lots\n')
    assert str(caught.value) == (
        'iim.conf:1: iim_mux.maxsessions: unterminated quoted value (no closing ")')


def test_config_error_carries_the_diagnostics_and_the_warnings_apart():
    with pytest.raises(ConfigError) as caught:
        parse_text('a = "x\u201d\nb\n')
    assert caught.value.diagnostics == [
        Diagnostic("iim.conf", 2, None, 'expected "parameter = value", found no "="')]
    assert [w.line for w in caught.value.warnings] == [1]


@pytest.mark.parametrize(("diagnostic", "shown"), [
    (Diagnostic("iim.conf", 14, "iim_mux.maxsessions", "m"), "iim.conf:14: iim_mux.maxsessions: m"),
    (Diagnostic("iim.conf", None, "iim_mux.maxsessions", "m"), "iim.conf: iim_mux.maxsessions: m"),
    (Diagnostic("iim.conf", 3, None, "m"), "iim.conf:3: m"),
    (Diagnostic("/etc/iim.conf", None, None, "m"), "/etc/iim.conf: m"),
])
def test_a_diagnostic_reads_path_line_parameter_message(diagnostic, shown):
    assert str(diagnostic) == shown


# -- writing values back ------------------------------------------------------------------------

def test_format_value_quotes_and_escapes():
    assert format_value('a "b" \\ \n\r\t') == '"a \\"b\\" \\\\ \\n\\r\\t"'


def test_format_value_refuses_what_iim_conf_cannot_hold():
    with pytest.raises(ValueError):
        format_value("a\x00b")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")))
def test_any_value_written_by_format_value_reads_back_unchanged(value):
    raw = parse_text(f"iim.test = {format_value(value)}\n")
    assert raw.entries == {"iim.test": RawValue(value, 1)}
    assert raw.warnings == []
