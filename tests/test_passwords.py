"""Password files: ``Internal (Software) Token:password``, split on the first colon."""

import os

import pytest

from iim.keys.errors import KeyMaterialError
from iim.keys.passwords import read_password_file

SECRET = "S3cret:with:colons"


def write(tmp_path, text, mode=0o600, name="sslpassword.conf"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("token", ["Internal (Software) Token", "NSS Certificate DB"])
def test_both_token_names_are_accepted(tmp_path, token):
    pf = read_password_file(write(tmp_path, f"{token}:{SECRET}\n"))
    assert pf.password == SECRET
    assert pf.warnings == ()


def test_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "p.conf"
    path.write_bytes(b"\r\nInternal (Software) Token:pw\r\n\r\n")
    os.chmod(path, 0o600)
    assert read_password_file(path).password == "pw"


def test_password_is_not_in_repr(tmp_path):
    pf = read_password_file(write(tmp_path, f"Internal (Software) Token:{SECRET}"))
    assert SECRET not in repr(pf)


def test_group_readable_file_is_warned(tmp_path):
    path = write(tmp_path, "Internal (Software) Token:pw", mode=0o644)
    assert read_password_file(path, "iim_mux.keystorepasswordfile").warnings == (
        f"iim_mux.keystorepasswordfile: {path}: readable by group or others (mode 0644); "
        f"run chmod 600 {path}",)


@pytest.mark.parametrize("text,message", [
    ("", 'the file is empty; expected one line "Internal (Software) Token:PASSWORD"'),
    ("\n  \n", 'the file is empty; expected one line "Internal (Software) Token:PASSWORD"'),
    (SECRET.replace(":", ""),
     '1: expected "Internal (Software) Token:PASSWORD" (token name, colon, password)'),
    (f"\nInternal Token:{SECRET}",
     '2: the token name before the first colon is not one of "Internal (Software) Token", '
     '"NSS Certificate DB"'),
    ("Internal (Software) Token:",
     "1: the password after the colon is empty"),
])
def test_bad_files_say_what_is_expected_and_never_the_password(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(KeyMaterialError) as err:
        read_password_file(path)
    sep = "" if message[0].isdigit() else " "
    assert str(err.value) == f"iim_server.keystorepasswordfile: {path}:{sep}{message}"
    assert "S3cret" not in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "none.conf"
    with pytest.raises(KeyMaterialError) as err:
        read_password_file(path)
    assert str(err.value) == (f"iim_server.keystorepasswordfile: {path}: no such file; create it "
                              'with one line "Internal (Software) Token:PASSWORD" (chmod 600)')


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.conf"
    path.write_bytes(b"Internal (Software) Token:caf\xe9")
    with pytest.raises(KeyMaterialError) as err:
        read_password_file(path)
    assert str(err.value) == (f"iim_server.keystorepasswordfile: {path}: not UTF-8 text; "
                              'expected one line "Internal (Software) Token:PASSWORD"')


def test_directory(tmp_path):
    with pytest.raises(KeyMaterialError) as err:
        read_password_file(tmp_path)
    assert str(err.value) == (f"iim_server.keystorepasswordfile: {tmp_path}: is a directory, "
                              "not a password file")
