"""The server's control socket answers by a table (one entry per request of
iim.control.OPS), not by looking a method up from the request's text."""

from __future__ import annotations

import json
import logging
import os

from iim import control
from iim.server.control import ControlServer


class FakeServer:
    log = logging.getLogger("iim.test.control")

    def status(self) -> dict:
        return {"component": "server"}


def ask(server: ControlServer, op: str) -> tuple[dict, object]:
    return server.answer(json.dumps({"op": op}).encode() + b"\n")


def test_every_request_has_exactly_one_answer():
    assert set(ControlServer._answers) == set(control.OPS)


def test_requests_are_answered_from_the_table():
    stopped = []
    server = ControlServer(FakeServer(), path=None, on_stop=lambda: stopped.append(1),
                           started=12.0)
    response, after = ask(server, "status")
    assert response == {"ok": True, "component": "server", "started": 12.0} and after is None
    response, after = ask(server, "stop")
    assert response == {"ok": True, "pid": os.getpid()}
    after()
    assert stopped == [1]


def test_a_name_outside_the_table_is_refused_not_looked_up():
    server = ControlServer(FakeServer(), path=None, on_stop=None)
    for op in ("close", "__init__", "_status", "answer"):
        response, after = ask(server, op)
        assert response["ok"] is False and "unknown request" in response["error"]
        assert after is None
