"""iim/text.py: peer text made safe for one log line, addresses shown."""

from iim.text import host_port, printable


def test_control_characters_and_line_separators_are_shown_escaped():
    assert printable("a\nb\x07c\u2028d\U000e0001") == "a\\x0ab\\x07c\\u2028d\\U000e0001"


def test_long_text_is_cut_unless_no_limit_is_asked():
    assert printable("x" * 201) == "x" * 200 + "..."
    assert printable("x" * 201, limit=None) == "x" * 201


def test_an_ipv6_host_is_bracketed():
    assert host_port("::1", 5222) == "[::1]:5222"
    assert host_port("127.0.0.1", 5222) == "127.0.0.1:5222"
