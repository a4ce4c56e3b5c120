"""The multiplexor link codec (iim.muxlink), in memory: docs/muxlink.md byte for byte."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from iim.muxlink import (
    MAX_PAYLOAD, Auth, Challenge, Close, CloseReason, Frame, FrameDecoder, FrameType, Hello,
    LinkProtocolError, Ready, SessionOpen, check_mux_proof, check_server_proof,
    decode_payload, decode_window, encode_frame, encode_window, mux_proof, server_proof,
)

MUX_NONCE = bytes(range(32))
SERVER_NONCE = bytes(range(100, 132))


def h(text: str) -> bytes:
    """Hex as the doc writes it: spaces, line breaks and <32-byte nonce> placeholders."""
    return bytes.fromhex(" ".join(text.split()))


def decode_all(data: bytes) -> list[Frame]:
    return FrameDecoder().feed(data)


# --- the byte-level example of docs/muxlink.md ------------------------------------------

EXAMPLE = [
    # (frame as the codec builds it, header hex, payload hex, nonce appended)
    (FrameType.HELLO, 0, Hello(0, 1, MUX_NONCE).encode(),
     "01 00 0000 00000000 0000002a", "49 49 4d 58 0002 0000 0001", MUX_NONCE),
    (FrameType.CHALLENGE, 0, Challenge(False, SERVER_NONCE).encode(),
     "02 00 0000 00000000 00000023", "0002 00", SERVER_NONCE),
    (FrameType.AUTH, 0, Auth().encode(), "03 00 0000 00000000 00000000", "", b""),
    (FrameType.READY, 0, Ready(65536).encode(), "04 00 0000 00000000 00000004",
     "00010000", b""),
    (FrameType.OPEN, 1, SessionOpen("127.0.0.1", 40000, 5222).encode(),
     "10 00 0000 00000001 00000018",
     "04 7f000001 000000000000000000000000 9c40 1466 00 00 00", b""),
    (FrameType.DATA, 1, b"<?xml version='1.0'?>", "11 00 0000 00000001 00000015",
     "3c 3f 78 6d 6c 20 76 65 72 73 69 6f 6e 3d 27 31 2e 30 27 3f 3e", b""),
    (FrameType.WINDOW, 1, encode_window(21), "13 00 0000 00000001 00000004", "00000015", b""),
    (FrameType.CLOSE, 1, Close(CloseReason.NORMAL).encode(), "12 00 0000 00000001 00000001",
     "00", b""),
]


@pytest.mark.parametrize("ftype, sid, payload, header, body, nonce", EXAMPLE,
                         ids=[e[0].name for e in EXAMPLE])
def test_doc_example_byte_for_byte(ftype, sid, payload, header, body, nonce):
    wire = encode_frame(ftype, sid, payload)
    assert wire == h(header) + h(body) + nonce
    [frame] = decode_all(wire)
    assert frame == Frame(ftype, sid, payload)


def test_doc_example_frames_decode_to_the_documented_values():
    wire = b"".join(encode_frame(t, s, p) for t, s, p, *_ in EXAMPLE)
    values = [decode_payload(f) for f in decode_all(wire)]
    assert values == [Hello(0, 1, MUX_NONCE), Challenge(False, SERVER_NONCE), Auth(b""),
                      Ready(65536, b""), SessionOpen("127.0.0.1", 40000, 5222),
                      b"<?xml version='1.0'?>", 21, Close(CloseReason.NORMAL, "")]


def test_the_doc_states_the_example_lengths_the_codec_produces():
    """The example in docs/muxlink.md itself, not a copy: every header line whose
    type we know must be what encode_frame makes for that example."""
    from pathlib import Path
    doc = (Path(__file__).parent.parent / "docs" / "muxlink.md").read_text()
    example = doc.split("## Byte-level example", 1)[1]
    headers = [line.split() for line in example.splitlines()
               if len(line.split()) == 5 and line.startswith("  ") and
               all(len(w) in (2, 4, 8) for w in line.split())]
    assert [" ".join(words) for words in headers] == [e[3] for e in EXAMPLE]


# --- round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    Hello(3, 7, MUX_NONCE),
    Challenge(True, SERVER_NONCE),
    Auth(b"p" * 32),
    Ready(1, b"q" * 32),
    Ready(2**32 - 1),
    SessionOpen("2001:db8::1", 1, 65535, True, "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    SessionOpen("10.1.2.3", 0, 5223, True, "", ""),
    Close(CloseReason.TLS, "handshake failed: no shared cipher ü"),
    Close(CloseReason.SHUTDOWN),
], ids=lambda v: type(v).__name__)
def test_payload_round_trip(value):
    assert type(value).decode(value.encode()) == value


def test_frame_round_trip_for_every_type():
    for ftype in FrameType:
        sid = 7 if ftype.is_session else 0
        frame = Frame(ftype, sid, b"x" * 9)
        assert decode_all(frame.encode()) == [frame]


def test_largest_payload_and_largest_session_id():
    wire = encode_frame(FrameType.DATA, 2**32 - 1, b"z" * MAX_PAYLOAD)
    assert decode_all(wire) == [Frame(FrameType.DATA, 2**32 - 1, b"z" * MAX_PAYLOAD)]


def test_session_open_peer_names():
    assert SessionOpen("127.0.0.1", 40000, 5222).peer == "mux:127.0.0.1:40000"
    assert SessionOpen("::1", 40000, 5222).peer == "mux:[::1]:40000"


# --- the decoder is incremental ------------------------------------------------------------

def test_decoder_fed_byte_by_byte():
    wire = b"".join(encode_frame(t, s, p) for t, s, p, *_ in EXAMPLE) * 3
    decoder = FrameDecoder()
    frames = []
    for i in range(len(wire)):
        frames += decoder.feed(wire[i:i + 1])
    assert frames == decode_all(wire)
    assert len(frames) == 3 * len(EXAMPLE) and decoder.buffered == 0


def test_decoder_holds_a_partial_frame():
    wire = encode_frame(FrameType.DATA, 5, b"hello")
    decoder = FrameDecoder()
    assert decoder.feed(wire[:14]) == [] and decoder.buffered == 2
    assert decoder.feed(wire[14:] + wire[:3]) == [Frame(FrameType.DATA, 5, b"hello")]
    assert decoder.buffered == 3


# --- every bad input is a LinkProtocolError -----------------------------------------------

def header(ftype, sid=0, length=0, flags=0, reserved=0):
    return struct.pack("!BBHII", ftype, flags, reserved, sid, length)


@pytest.mark.parametrize("wire, words", [
    (header(0x7F), "unknown frame type 0x7f"),
    (header(0x00), "unknown frame type 0x00"),
    (header(FrameType.DATA, 1, MAX_PAYLOAD + 1), "exceeds 65536"),
    (header(FrameType.DATA, 1, 2**32 - 1), "exceeds 65536"),
    (header(FrameType.PING, 0, 8, flags=1), "flags"),
    (header(FrameType.PING, 0, 8, reserved=1), "reserved"),
    (header(FrameType.DATA, 0, 1), "without a session id"),
    (header(FrameType.HELLO, 3, 0), "with session id 3"),
], ids=["unknown", "type-zero", "oversized", "huge", "flags", "reserved", "sid-0-data",
        "sid-on-link-frame"])
def test_bad_header(wire, words):
    decoder = FrameDecoder()
    with pytest.raises(LinkProtocolError) as err:
        decoder.feed(wire)
    assert words in str(err.value) and err.value.reason is CloseReason.PROTOCOL


def test_oversized_length_fails_on_the_header_alone():
    decoder = FrameDecoder()
    with pytest.raises(LinkProtocolError):
        decoder.feed(header(FrameType.DATA, 1, MAX_PAYLOAD + 1))   # no payload needed


def test_decoder_stays_failed():
    decoder = FrameDecoder()
    with pytest.raises(LinkProtocolError):
        decoder.feed(header(0x7F))
    with pytest.raises(LinkProtocolError):
        decoder.feed(encode_frame(FrameType.PING, 0, b"8 bytes!"))


def frame(ftype, payload, sid=None):
    return Frame(ftype, sid if sid is not None else (1 if ftype.is_session else 0), payload)


HELLO = Hello(0, 1, MUX_NONCE).encode()
OPEN = SessionOpen("127.0.0.1", 40000, 5222).encode()


@pytest.mark.parametrize("ftype, payload, words", [
    (FrameType.HELLO, b"HTTP" + HELLO[4:], "magic"),
    (FrameType.HELLO, HELLO[:-1], "too short"),
    (FrameType.HELLO, HELLO + b"\0", "too many"),
    (FrameType.CHALLENGE, b"\0\x02\x02" + SERVER_NONCE, "secret-required"),
    (FrameType.CHALLENGE, b"\0\x02\x00" + SERVER_NONCE[:5], "too short"),
    (FrameType.AUTH, b"x" * 31, "AUTH payload of 31"),
    (FrameType.READY, b"\0\0\0", "READY payload of 3"),
    (FrameType.READY, b"\0\0\0\0", "window of 0"),
    (FrameType.LINKCLOSE, b"", "too short"),
    (FrameType.LINKCLOSE, b"\x08", "unknown close reason 8"),
    (FrameType.CLOSE, b"\x00\xff\xfe", "not UTF-8"),
    (FrameType.PING, b"1234567", "PING/PONG payload of 7"),
    (FrameType.PONG, b"123456789", "PING/PONG payload of 9"),
    (FrameType.DATA, b"", "empty DATA"),
    (FrameType.WINDOW, b"\0\0\0", "WINDOW payload of 3"),
    (FrameType.OPEN, b"\x05" + OPEN[1:], "address family 5"),
    (FrameType.OPEN, OPEN[:5] + b"\x01" + OPEN[6:], "IPv4 address with bytes"),
    (FrameType.OPEN, OPEN[:21] + b"\x02" + OPEN[22:], "transport 2"),
    (FrameType.OPEN, OPEN[:22] + b"\x03ab", "too short"),
    (FrameType.OPEN, OPEN + b"\0", "too many"),
    (FrameType.OPEN, OPEN[:22] + b"\x07TLSv1.3\x00", "plain session with TLS"),
    (FrameType.OPEN, OPEN[:21] + b"\x01\x02\xc3\x28\x00", "not UTF-8"),
])
def test_bad_payload(ftype, payload, words):
    with pytest.raises(LinkProtocolError) as err:
        decode_payload(frame(ftype, payload))
    assert words in str(err.value) and err.value.reason is CloseReason.PROTOCOL


def test_other_versions_close_with_reason_version():
    for value in (Hello(0, 1, MUX_NONCE, version=1), Challenge(False, SERVER_NONCE, 9)):
        with pytest.raises(LinkProtocolError) as err:
            type(value).decode(value.encode())
        assert err.value.reason is CloseReason.VERSION
    with pytest.raises(LinkProtocolError) as err:      # a v3 HELLO may have another size
        Hello.decode(b"IIMX\x00\x03")
    assert err.value.reason is CloseReason.VERSION


# --- our own mistakes are ValueError ------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: encode_frame(FrameType.DATA, 1, b"x" * (MAX_PAYLOAD + 1)),
    lambda: encode_frame(FrameType.DATA, 2**32, b"x"),
    lambda: encode_frame(256, 1, b"x"),
    lambda: encode_frame(FrameType.DATA, 1, b"x", flags=256),
    lambda: Hello(0, 1, b"short").encode(),
    lambda: Auth(b"not 32 bytes").encode(),
    lambda: Ready(0).encode(),
    lambda: SessionOpen("not an address", 1, 2).encode(),
    lambda: SessionOpen("127.0.0.1", 1, 2, False, "TLSv1.3").encode(),
    lambda: SessionOpen("127.0.0.1", 1, 2, True, "x" * 256).encode(),
    lambda: encode_window(2**32),
])
def test_unencodable_values_are_value_errors(make):
    with pytest.raises(ValueError):
        make()


def test_close_text_is_cut_on_a_character_boundary():
    payload = Close(CloseReason.NORMAL, "é" * 40000).encode()
    assert len(payload) <= MAX_PAYLOAD
    assert Close.decode(payload).text == "é" * ((MAX_PAYLOAD - 1) // 2)


# --- proofs -------------------------------------------------------------------------------

def test_proofs_are_the_documented_hmacs():
    import hashlib
    import hmac
    secret = b"correct horse battery staple"
    want = hmac.new(secret, b"iim-muxlink-2 mux" + MUX_NONCE + SERVER_NONCE,
                    hashlib.sha256).digest()
    assert mux_proof(secret, MUX_NONCE, SERVER_NONCE) == want
    want = hmac.new(secret, b"iim-muxlink-2 server" + MUX_NONCE + SERVER_NONCE,
                    hashlib.sha256).digest()
    assert server_proof(secret, MUX_NONCE, SERVER_NONCE) == want
    binding = bytes(range(32))                     # a TLS session's tls-exporter
    want = hmac.new(secret, b"iim-muxlink-2 mux" + MUX_NONCE + SERVER_NONCE + binding,
                    hashlib.sha256).digest()
    assert mux_proof(secret, MUX_NONCE, SERVER_NONCE, binding) == want
    assert mux_proof(secret, MUX_NONCE, SERVER_NONCE, bytes(32)) != want


def test_proofs_check_and_differ_by_direction_secret_and_nonces():
    secret = b"s3cret"
    proof = mux_proof(secret, MUX_NONCE, SERVER_NONCE)
    assert check_mux_proof(secret, MUX_NONCE, SERVER_NONCE, proof)
    assert not check_server_proof(secret, MUX_NONCE, SERVER_NONCE, proof)   # no reflection
    assert not check_mux_proof(b"s3creT", MUX_NONCE, SERVER_NONCE, proof)
    assert not check_mux_proof(secret, SERVER_NONCE, MUX_NONCE, proof)
    assert not check_mux_proof(secret, MUX_NONCE, SERVER_NONCE, b"")
    assert check_server_proof(secret, MUX_NONCE, SERVER_NONCE,
                              server_proof(secret, MUX_NONCE, SERVER_NONCE))
    assert secret not in proof


# --- nothing but LinkProtocolError, whatever the bytes --------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_random_bytes_raise_only_link_protocol_errors(chunks):
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for decoded in decoder.feed(chunk):
                decode_payload(decoded)
    except LinkProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(list(FrameType)), st.binary(max_size=64))
def test_random_payloads_raise_only_link_protocol_errors(ftype, payload):
    wire = encode_frame(ftype, 1 if ftype.is_session else 0, payload)
    try:
        [decoded] = FrameDecoder().feed(wire)
        decode_payload(decoded)
    except LinkProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([t for t in FrameType if t is not FrameType.DATA]),
       st.integers(0, 255), st.binary(max_size=40))
def test_mutated_valid_payloads_raise_only_link_protocol_errors(ftype, byte, tail):
    valid = {FrameType.HELLO: HELLO, FrameType.OPEN: OPEN,
             FrameType.CHALLENGE: Challenge(True, SERVER_NONCE).encode()}.get(ftype, b"\0" * 8)
    for cut in range(len(valid) + 1):
        payload = valid[:cut] + bytes([byte]) + tail
        try:
            decode_payload(frame(ftype, payload))
        except LinkProtocolError:
            pass


def test_window_decodes():
    assert decode_window(encode_window(2**32 - 1)) == 2**32 - 1
