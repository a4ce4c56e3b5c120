"""Whatever is in the file, the reader answers with a Config or a ConfigError.

Random text, random bytes and small mutations of real files (the product's
two examples and our sample) go through `load` and `from_text`; the only
exception allowed out is ConfigError, and no diagnostic shows a password.
"""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from iim.conf import Config, ConfigError, from_text, load

ROOT = Path(__file__).parent.parent
SEEDS = [
    ROOT / "tests" / "data" / "example-12-1.conf",
    ROOT / "tests" / "data" / "example-12-2.conf",
    ROOT / "conf" / "iim.conf",
]
SEED_BYTES = [path.read_bytes() for path in SEEDS]

#: Pieces that matter to the lexer, as bytes (some not UTF-8 on purpose).
TRICKY = [b'"', b"\\", b"=", b";", b"!", b"\r", b"\n", b"\r\n", b"\0", b" ", b"\t", b",",
          b":", b"[", b"]", b"\xff", b"\xc3", b"\xef\xbb\xbf", "\u201d".encode(),
          "\u201c".encode(), "\u2019".encode(), b";lang-fr", b"iim_server.", b"coserver1",
          b"iim_mux.usessl = on\n", b"iim_server.coservers = coserver1,coserver2\n"]
TRICKY_TEXT = [piece.decode("utf-8", "replace") for piece in TRICKY]

FUZZ = settings(max_examples=300, deadline=None)
SECRET = "Fuzz-Secret-9f3a"


def read(load_it):
    """Run `load_it`; a Config or a ConfigError are the only acceptable outcomes."""
    try:
        result = load_it()
    except ConfigError as error:
        assert error.diagnostics, "a ConfigError always says why"
        return error.diagnostics + error.warnings
    assert isinstance(result, Config)
    return list(result.warnings)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "iim.conf"


def mutate(data: bytes, edits) -> bytes:
    for position, kind, piece in edits:
        at = position % (len(data) + 1)
        if kind == "insert":
            data = data[:at] + piece + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(piece):]
        else:
            data = data[:at] + piece + data[at + len(piece):]
    return data


edit = st.tuples(st.integers(0, 4000), st.sampled_from(["insert", "delete", "replace"]),
                 st.sampled_from(TRICKY) | st.binary(min_size=1, max_size=4))
text_pieces = st.lists(st.sampled_from(TRICKY_TEXT) | st.text(max_size=8), max_size=40)


@FUZZ
@given(st.text())
def test_random_text(text):
    read(lambda: from_text(text))


@FUZZ
@given(text_pieces)
def test_random_text_made_of_tricky_pieces(pieces):
    read(lambda: from_text("".join(pieces), check_files=True))


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(scratch, data):
    scratch.write_bytes(data)
    read(lambda: load(scratch))


@FUZZ
@given(st.sampled_from(SEED_BYTES), st.lists(edit, min_size=1, max_size=6))
def test_mutated_real_files(scratch, seed, edits):
    scratch.write_bytes(mutate(seed, edits))
    read(lambda: load(scratch, check_files=bool(len(edits) % 2)))


#: Edits that break syntax without spelling a new parameter name around a secret.
punctuation_edit = st.tuples(
    st.integers(0, 4000), st.sampled_from(["insert", "delete", "replace"]),
    st.sampled_from([piece for piece in TRICKY if not piece.isalnum() and b"iim" not in piece
                     and b"coserver" not in piece and b"lang" not in piece]))

PASSWORD_LINES = [
    f'iim_server.password = "{SECRET}"\n',
    f"iim_server.password = {SECRET}\n",
    f'iim_server.coserver1.password = "{SECRET}"\n',
    f"IIM_SERVER.COSERVER2.PASSWORD = {SECRET}\n",
]


@FUZZ
@given(st.sampled_from(SEED_BYTES), st.sampled_from(PASSWORD_LINES),
       st.lists(punctuation_edit, max_size=4), st.integers(0, 10))
def test_no_mutation_makes_a_message_show_a_password(scratch, seed, line, edits, where):
    lines = seed.split(b"\n")
    lines.insert(where % len(lines), line.encode())
    body = b"\n".join(lines)
    start = body.index(SECRET.encode())
    end = start + len(SECRET)
    # Mutate around the password, never inside it, so the secret stays whole.
    data = mutate(body[:start], edits) + body[start:end] + mutate(body[end:], edits)
    scratch.write_bytes(data)
    for diagnostic in read(lambda: load(scratch)):
        assert SECRET not in str(diagnostic)
