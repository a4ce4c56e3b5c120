"""The link protocol exists once (iim/muxlink.py); the relay core's C copies agree.

iim/_fastmux.pyx keeps the wire constants it needs as C enum values (the loop
runs without the GIL and cannot look Python names up), and hands them out with
``wire_constants()``. Each is compared here with the definition it copies, and
every name in the .pyx's wire-format block must be one of them, so a constant
added there without a check, or changed on one side only, fails this file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iim import _fastmux
from iim.muxlink import (
    BINDING_BYTES, EXPORTER_LABEL, HEADER, HEADER_BYTES, MAX_PAYLOAD, CloseReason, FrameType,
)

PYX = Path(__file__).resolve().parents[1] / "iim" / "_fastmux.pyx"


def definition(c_name: str):
    """What the Python definition says the C constant ``c_name`` is."""
    if c_name.startswith("T_"):
        return FrameType[c_name[2:]]
    if c_name.startswith("R_"):
        return CloseReason[c_name[2:]]
    return {
        "HEADER": HEADER_BYTES,
        "MAX_PAYLOAD": MAX_PAYLOAD,
        "REASON_NAMES": tuple(str(reason) for reason in CloseReason),
        "EXPORTER_LABEL": EXPORTER_LABEL,
        "CHANNEL_BINDING_BYTES": BINDING_BYTES,
    }[c_name]


def wire_block_names() -> list[str]:
    """The names of the .pyx's wire-format enum (the block after its heading)."""
    source = PYX.read_text()
    block = source.split("# --- wire format", 1)[1].split("cdef enum:", 1)[1]
    body = block.split("\n\n", 1)[0]
    return re.findall(r"^\s+([A-Z_][A-Z0-9_]*)\s*=", body, re.MULTILINE)


@pytest.mark.parametrize("c_name", sorted(_fastmux.wire_constants()))
def test_each_relay_constant_is_the_protocol_definition(c_name):
    assert _fastmux.wire_constants()[c_name] == definition(c_name), (
        f"iim/_fastmux.pyx {c_name} differs from iim/muxlink.py")


def test_every_constant_of_the_wire_block_is_checked():
    names = wire_block_names()
    assert "T_DATA" in names and "MAX_PAYLOAD" in names       # the block was found
    assert set(names) <= set(_fastmux.wire_constants())


def test_reason_names_are_in_code_order():
    names = _fastmux.wire_constants()["REASON_NAMES"]
    assert [CloseReason(code) for code in range(len(names))] == list(CloseReason)


def test_the_relay_accepts_exactly_the_protocol_frame_types():
    """header_ok() takes T_HELLO..T_PONG and T_OPEN..T_WINDOW: the enum, no gap."""
    c = _fastmux.wire_constants()
    accepted = set(range(c["T_HELLO"], c["T_PONG"] + 1)) | set(range(c["T_OPEN"],
                                                                     c["T_WINDOW"] + 1))
    assert accepted == set(FrameType)


def test_the_header_layout_is_twelve_bytes():
    assert HEADER.size == HEADER_BYTES == _fastmux.wire_constants()["HEADER"]
