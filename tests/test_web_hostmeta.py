"""The gateway's other pages: XEP-0156 discovery, the web client's static files and
their headers, the listener (TLS and plain on one port), and the gateway's
parameters (iim.conf errors, iim.admin check)."""

from __future__ import annotations

import asyncio
import json
import ssl
import socket
from xml.etree import ElementTree as ET

import aiohttp
import pytest

import pki
from iim.admin.check import check
from iim.conf import ConfigError, from_text
from webgw import WebServer, run

XRD = "{http://docs.oasis-open.org/ns/xri/xrd-1.0}"
WS_REL = "urn:xmpp:alt-connections:websocket"
BOSH_REL = "urn:xmpp:alt-connections:xbosh"


async def get(server: WebServer, path: str, *, secure: bool = True, **kw):
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url(path, secure=secure), allow_redirects=False,
                            ssl=server.client_tls() if secure else False, **kw) as response:
            return response.status, response.headers, await response.read()


async def get_with(server: WebServer, path: str, context: ssl.SSLContext):
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url(path), ssl=context, allow_redirects=False) as response:
            return response.status


# -- XEP-0156 --------------------------------------------------------------------------------


def test_host_meta_xml_and_json_name_both_endpoints(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=True) as server:
            base = f"127.0.0.1:{server.http_port}"
            status, headers, data = await get(server, "/.well-known/host-meta")
            assert status == 200 and headers["Content-Type"].startswith("application/xrd+xml")
            assert headers["Access-Control-Allow-Origin"] == "*"
            links = {(l.get("rel"), l.get("href")) for l in ET.fromstring(data).iter(XRD + "Link")}
            assert links == {(WS_REL, f"wss://{base}/ws"), (BOSH_REL, f"https://{base}/http-bind")}
            status, headers, data = await get(server, "/.well-known/host-meta.json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            found = {(l["rel"], l["href"]) for l in json.loads(data)["links"]}
            assert found == links
    run(scenario)


def test_host_meta_lists_the_plain_endpoints_when_plain_sessions_are_allowed(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=False) as server:
            _, _, data = await get(server, "/.well-known/host-meta.json",
                                   headers={"Host": "chat.example.com:5280"})
            hrefs = [l["href"] for l in json.loads(data)["links"]]
            assert hrefs == ["wss://chat.example.com:5280/ws",
                             "https://chat.example.com:5280/http-bind",
                             "ws://chat.example.com:5280/ws",
                             "http://chat.example.com:5280/http-bind"]
    run(scenario)


def test_a_host_header_that_is_no_host_is_not_echoed(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            _, headers, data = await get(server, "/.well-known/host-meta.json",
                                         headers={"Host": "evil.example/\"><script>"})
            assert b"script" not in data and b"evil" not in data
            assert "<script>" not in headers["Content-Security-Policy"]
            assert "evil" not in headers["Content-Security-Policy"]
    run(scenario)


# -- static files ------------------------------------------------------------------------------


def test_the_root_sends_the_browser_to_im_html(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            status, headers, _ = await get(server, "/")
            assert status == 302 and headers["Location"] == "/im.html"
    run(scenario)


def test_static_files_have_their_types_and_the_security_headers(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=True) as server:
            static = server.server.web.static_dir
            (tmp_path / "static").mkdir()
            (tmp_path / "static" / "im.html").write_text("<!DOCTYPE html><title>t</title>")
            (tmp_path / "static" / "app.js").write_text("1;")
            (tmp_path / "static" / "app.css").write_text("p{}")
            server.server.web.static_dir = tmp_path / "static"
            status, headers, data = await get(server, "/im.html")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert headers["Cache-Control"] == "no-store"
            assert headers["X-Content-Type-Options"] == "nosniff"
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert f"connect-src 'self' wss://127.0.0.1:{server.http_port}" in csp
            assert "ws://" not in csp                    # plain sessions refused here
            assert headers["Strict-Transport-Security"] == "max-age=31536000"
            status, headers, _ = await get(server, "/static/app.js")
            assert status == 200 and headers["Content-Type"].startswith("text/javascript")
            assert headers["Cache-Control"] == "no-cache"
            status, headers, _ = await get(server, "/static/app.css")
            assert headers["Content-Type"].startswith("text/css")
            assert static.name == "static"
    run(scenario)


@pytest.mark.parametrize("path", ["/static/../../../../etc/passwd", "/static/%2e%2e/webgw.py",
                                  "/static/.hidden", "/nothing.html", "/static/missing.js"])
def test_nothing_outside_the_static_folder_is_served(tmp_path, ca, path):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            (tmp_path / "static").mkdir()
            (tmp_path / "static" / ".hidden").write_text("secret")
            server.server.web.static_dir = tmp_path / "static"
            status, _, data = await get(server, path)
            assert status == 404 and b"secret" not in data and b"root:" not in data
    run(scenario)


def test_plain_http_is_redirected_to_https_under_requiressl(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, requiressl=True) as server:
            status, headers, _ = await get(server, "/im.html?x=1", secure=False)
            assert status == 301
            assert headers["Location"] == f"https://127.0.0.1:{server.http_port}/im.html?x=1"
    run(scenario)


def test_the_shipped_web_client_page_is_served(tmp_path, ca):
    """Whatever iim/server/web/static/im.html holds (the web client's), it is
    served as HTML with the headers."""
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            if not (server.server.web.static_dir / "im.html").is_file():
                pytest.fail("iim/server/web/static/im.html is missing")
            status, headers, data = await get(server, "/im.html")
            assert status == 200 and data.lstrip().lower().startswith(b"<!doctype html")
            assert headers["Cache-Control"] == "no-store"
            assert "Strict-Transport-Security" not in headers   # plain allowed: no HSTS
    run(scenario)


# -- the listener ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_on_the_gateway_is_1_2_or_later(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            context = server.client_tls()
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.minimum_version = ssl.TLSVersion.TLSv1
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                async with aiohttp.ClientSession() as http:
                    await http.get(server.url("/"), ssl=context)
    run(scenario)


def test_a_connection_that_closes_before_a_byte_costs_nothing(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", server.http_port))
                sock.close()
            status, _, _ = await get(server, "/")
            assert status == 302
    run(scenario)


def test_failed_tls_handshakes_leave_nothing_behind(tmp_path, ca):
    """A client that does not trust the certificate: no handshake, no handler."""
    other = pki.CA.root("another CA", key_kind="ec")

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            stranger = ssl.create_default_context(cadata=other.cert_pem().decode())
            for _ in range(3):
                with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                    await get_with(server, "/", stranger)
            gateway = server.server.web
            for _ in range(200):
                if not gateway.listener.watches:
                    break
                await asyncio.sleep(0.01)
            assert gateway.listener.watches == {}
            status, _, _ = await get(server, "/")
            assert status == 302
    run(scenario)


def test_a_request_head_dripped_slowly_is_cut_off(tmp_path, ca):
    """slowloris: the head must be complete within negotiation_timeout."""
    async def scenario():
        extra = 'iim_server.negotiation_timeout = "1"\n'
        async with WebServer(tmp_path, ca, requiressl=False, extra=extra) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")     # and never the blank line
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()
    run(scenario)


def test_a_tls_connection_that_never_sends_a_request_is_cut_off(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.negotiation_timeout = "1"\n'
        async with WebServer(tmp_path, ca, extra=extra) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port,
                                                           ssl=server.client_tls())
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()
    run(scenario)


def test_new_connections_per_source_are_rate_limited_before_a_byte_is_read(tmp_path, ca):
    """accept_rate_per_source 1: 4 TCP connections a second, bursts of 8; the
    rest of a burst of 30 is closed unread (unless opening them took 5 s)."""
    async def scenario():
        extra = 'iim_server.accept_rate_per_source = "1"\n'
        async with WebServer(tmp_path, ca, requiressl=False, extra=extra) as server:
            opened = [await asyncio.open_connection("127.0.0.1", server.http_port)
                      for _ in range(30)]
            answers = []
            for reader, writer in opened:
                try:
                    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answers.append(await asyncio.wait_for(reader.read(), 20))
                except ConnectionError:
                    answers.append(b"")
                writer.close()
            served = [a for a in answers if a.startswith(b"HTTP/1.1 302")]
            assert 8 <= len(served) < 30 and len(served) + answers.count(b"") == 30
    run(scenario)


def test_a_bosh_body_dripped_slowly_is_cut_off(tmp_path, ca):
    async def scenario():
        extra = 'iim_server.stanza_timeout = "1"\n'
        async with WebServer(tmp_path, ca, requiressl=False, extra=extra) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(b"POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                         b"Content-Length: 1000\r\n\r\n<body rid='1'")
            assert b"200 OK" not in await asyncio.wait_for(reader.read(), 20)
            writer.close()
    run(scenario)


# -- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ('iim_server.httpport = "5269"', "iim.conf:1: iim_server.httpport: :5269 is also "
                                     "iim_server.port; the gateway needs a port of its own"),
    ('iim_server.httpport = "web"', "iim.conf:1: iim_server.httpport: expected a port "
                                    '(1-65535) or host:port, got "web"'),
    ('iim_server.http_origins = "chat.example.com"',
     'iim.conf:1: iim_server.http_origins: expected "*" or comma-separated origins such as '
     '"https://chat.example.com", got "chat.example.com"'),
    ('iim_server.http_allow_plain = "maybe"', "iim.conf:1: iim_server.http_allow_plain: "),
])
def test_gateway_parameters_are_checked_with_one_line_errors(text, expected):
    with pytest.raises(ConfigError) as failed:
        from_text(text, check_files=False)
    assert str(failed.value).splitlines()[0].startswith(expected)


def test_origins_are_kept_as_browsers_send_them():
    config = from_text('iim_server.http_origins = "HTTPS://Chat.Example.com:443, '
                       'http://localhost:8080/"', check_files=False)
    assert config.server.http_origins == ("https://chat.example.com", "http://localhost:8080")
    assert from_text("", check_files=False).server.httpport is None      # off by default


def test_admin_check_mentions_the_gateway(tmp_path, ca):
    server = WebServer(tmp_path, ca, requiressl=True)
    lines = [str(finding) for finding in check(server.conf)]
    assert any(line.startswith("OK: iim_server.httpport: the gateway on 127.0.0.1:"
                               f"{server.http_port}") for line in lines), lines
    off = tmp_path / "off.conf"
    off.write_text(server.conf.read_text().replace("iim_server.httpport", "! x"))
    assert any("iim_server.httpport is not set" in str(f) for f in check(off))


def test_admin_status_lists_the_gateways_address(tmp_path, ca):
    """The control socket's status (iim/server/control.py) and iim.admin status's lines."""
    from iim.admin.status import _server_lines
    from iim.server.control import describe

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            return describe(server.server), server.port, server.http_port
    status, port, http_port = run(scenario)
    assert status["http_listening"] == [f"127.0.0.1:{http_port}"]
    [listening] = [line for line in _server_lines(status) if line.startswith("listening")]
    assert f"127.0.0.1:{port} (client and server streams)" in listening
    assert f"127.0.0.1:{http_port} (XMPP over WebSocket and BOSH)" in listening
    del status["http_listening"]            # a server from before the gateway: no such entry
    assert "WebSocket" not in "".join(_server_lines(status))


def test_without_a_keystore_the_gateway_is_plain_http_only(tmp_path, ca):
    async def scenario():
        async with WebServer(tmp_path, ca, tls=False) as server:
            status, _, data = await get(server, "/.well-known/host-meta.json", secure=False)
            hrefs = [link["href"] for link in json.loads(data)["links"]]
            assert status == 200 and all(h.startswith(("ws://", "http://")) for h in hrefs)
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):   # a ClientHello: closed
                await get(server, "/")
    run(scenario)


def test_sessions_that_come_and_go_leave_no_descriptor_task_or_entry(tmp_path, ca):
    """After WebSocket and BOSH users log in and out: no session, no BOSH sid,
    no connection watch, no task but the accept loop, and the process holds
    the file descriptors it held before."""
    import os

    from webgw import BoshClient, WsClient

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario():
        async with WebServer(tmp_path, ca) as server:
            gateway = server.server.web
            gateway.bosh.inactivity = 0.2
            await get(server, "/")
            before = fds()
            for n in range(3):
                ws = await WsClient.connect(server)
                await ws.login("juliet", f"w{n}")
                await ws.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
                await ws.close()
                bosh = BoshClient(server)
                await bosh.login("romeo", f"b{n}")
                await bosh.post(type="terminate")
                await bosh.close()
            for _ in range(500):
                if not (server.server.ctx.sessions or gateway.bosh.by_sid or gateway.listener.watches
                        or len(gateway.listener.tasks) > 1) and fds() <= before:
                    break
                await asyncio.sleep(0.01)
            assert not server.server.ctx.sessions and not gateway.bosh.by_sid
            assert not gateway.listener.watches and len(gateway.listener.tasks) == 1        # the accept loop
            assert fds() <= before
    run(scenario)
