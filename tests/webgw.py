"""An in-process server with the XMPP/HTTP gateway on, and RFC 7395 / XEP-0206 transcript helpers.

``WebServer`` runs ``iim.server.app.Server`` in the test's event loop (no
process start), on real sockets on 127.0.0.1: ``iim_server.port`` for direct
TCP clients and ``iim_server.httpport`` for the gateway. Its keystore is a
PKCS#12 file made with cryptography from the run's CA (the format does not
matter here; keytool-made stores are tested in test_keystore), its users
those of tests/test_router.py (password "secret"), copied from a template
database. ``WsClient`` is aiohttp's WebSocket client with the ``xmpp``
subprotocol, reading and writing whole frames as text.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
from pathlib import Path
from xml.etree import ElementTree as ET

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from iim.conf import from_text
from iim.server.app import Server
from support import free_port
from support.process import DEADLINE   # bounds a failure, not an expectation of speed
from test_router import DOMAIN, make_storage

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
STREAMS = "http://etherx.jabber.org/streams"
PASSWORD = "secret"
STOREPASS = b"web-store-pw"
OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>"
CLOSE = f"<close xmlns='{FRAMING}'/>"


class WebServer:
    def __init__(self, folder: Path, ca, *, requiressl: bool = False, tls: bool = True,
                 extra: str = "", mux: bool = False) -> None:
        self.folder, self.ca = folder, ca
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port, self.link_port = free_port(), free_port(), free_port()
        make_storage(folder).close()                    # iim.db with the users
        lines = [f'iim_server.domainname = "{DOMAIN}"',
                 f'iim_server.port = "127.0.0.1:{self.port}"',
                 f'iim_server.usemuxport = "{str(mux).lower()}"',
                 f'iim_mux.serverport = "127.0.0.1:{self.link_port}"',
                 f'iim_server.httpport = "127.0.0.1:{self.http_port}"',
                 f'iim_server.requiressl = "{str(requiressl).lower()}"',
                 'iim_server.database = "iim.db"',
                 'iim_server.auth_failure_delay = "0"']
        if tls:
            (folder / "server.p12").write_bytes(_keystore(ca))
            os.chmod(folder / "server.p12", 0o600)
            password = folder / "sslpassword.conf"
            password.write_text(f"Internal (Software) Token:{STOREPASS.decode()}\n")
            os.chmod(password, 0o600)
            lines.append('iim_server.sslkeystore = "server.p12"')
        self.conf = folder / "iim.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.log = logging.getLogger(f"webgw.{folder.name}")
        self.server: Server | None = None
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))

    async def start(self) -> "WebServer":
        config = from_text(self.conf.read_text(), str(self.conf), base_dir=self.folder)
        self.server = Server(config, self.log)
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def url(self, path: str, *, secure: bool = True, ws: bool = False) -> str:
        scheme = ("wss" if ws else "https") if secure else ("ws" if ws else "http")
        return f"{scheme}://127.0.0.1:{self.http_port}{path}"

    async def __aenter__(self) -> "WebServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


_keystores: dict[int, bytes] = {}


def _keystore(ca) -> bytes:
    """One PKCS#12 keystore per CA and process (an RSA key takes a while to make)."""
    if id(ca) not in _keystores:
        issued = ca.issue(DOMAIN, "127.0.0.1", "localhost", key_kind="ec")   # loads fast
        cheap = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(1000)
                 .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                 .hmac_hash(hashes.SHA256()).build(STOREPASS))   # each start decrypts it
        _keystores[id(ca)] = pkcs12.serialize_key_and_certificates(
            b"iim", issued.key, issued.cert, None, cheap)
    return _keystores[id(ca)]


def run(coroutine_function, *args, **kwargs):
    """A test's scenario in a fresh event loop."""
    return asyncio.run(coroutine_function(*args, **kwargs))


class WsClient:
    """One RFC 7395 connection: ``send`` a frame, ``frame()`` the next one as an Element."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http, self.ws = http, ws

    @classmethod
    async def connect(cls, server: WebServer, *, secure: bool = True,
                      protocols=("xmpp",), origin: str | None = None) -> "WsClient":
        http = aiohttp.ClientSession()
        headers = {"Origin": origin} if origin else {}
        try:
            ws = await http.ws_connect(server.url("/ws", secure=secure, ws=True),
                                       protocols=protocols, headers=headers,
                                       ssl=server.client_tls() if secure else False,
                                       autoping=True)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def text(self) -> str:
        message = await asyncio.wait_for(self.ws.receive(), DEADLINE)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {message.type} {message.data!r}")
        return message.data

    async def frame(self) -> ET.Element:
        return ET.fromstring(await self.text())

    async def closed(self) -> int:
        """The code of the server's WebSocket close frame (RFC 6455 §7.4)."""
        message = await asyncio.wait_for(self.ws.receive(), DEADLINE)
        assert message.type is aiohttp.WSMsgType.CLOSE, (message.type, message.data)
        return message.data

    async def login(self, user: str, resource: str = "web") -> str:
        """SASL PLAIN, restart, bind: the full JID."""
        await self.send(OPEN)
        assert (await self.frame()).tag == f"{{{FRAMING}}}open"
        features = await self.frame()
        assert features.tag == f"{{{STREAMS}}}features", ET.tostring(features)
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        success = await self.frame()
        assert success.tag == f"{{{SASL}}}success", ET.tostring(success)
        await self.send(OPEN)
        assert (await self.frame()).tag == f"{{{FRAMING}}}open"
        assert (await self.frame()).find(f"{{{BIND}}}bind") is not None
        await self.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{BIND}'>"
                        f"<resource>{resource}</resource></bind></iq>")
        result = await self.frame()
        assert result.get("type") == "result", ET.tostring(result)
        return result.findtext(f".//{{{BIND}}}jid")

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"


class BoshClient:
    """XEP-0124/0206 by hand: ``post`` a body, get (status, parsed body)."""

    def __init__(self, server: WebServer, *, secure: bool = True, origin: str | None = None):
        self.server, self.secure = server, secure
        self.http = aiohttp.ClientSession()
        self.headers = {"Content-Type": "text/xml; charset=utf-8"}
        if origin:
            self.headers["Origin"] = origin
        self.rid = 4000
        self.sid: str | None = None
        self.last_headers = None

    async def raw(self, data: str | bytes) -> tuple[int, str]:
        async with self.http.post(self.server.url("/http-bind", secure=self.secure), data=data,
                                  headers=self.headers,
                                  ssl=self.server.client_tls() if self.secure else False) as r:
            self.last_headers = r.headers
            return r.status, await r.text()

    async def post(self, content: str = "", *, rid: int | None = None, **attrs) -> ET.Element:
        if rid is None:
            self.rid += 1
            rid = self.rid
        attrs = {"rid": str(rid), **({"sid": self.sid} if self.sid else {}), **attrs}
        written = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        status, text = await asyncio.wait_for(
            self.raw(f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}'{written}>{content}</body>"),
            DEADLINE + 60)
        assert status == 200, (status, text)
        return ET.fromstring(text)

    async def create(self, *, wait: int = 10, hold: int = 1) -> ET.Element:
        first = await self.post(to=DOMAIN, wait=wait, hold=hold, ver="1.11",
                                xmpp__version="1.0")
        self.sid = first.get("sid")
        return first

    async def login(self, user: str, resource: str = "bosh") -> str:
        first = await self.create()
        assert first.find(f"{{{STREAMS}}}features") is not None
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        reply = await self.post(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        assert reply.find(f"{{{SASL}}}success") is not None, ET.tostring(reply)
        reply = await self.post(to=DOMAIN, xmpp__restart="true")
        assert reply.find(f".//{{{BIND}}}bind") is not None
        reply = await self.post(f"<iq xmlns='jabber:client' type='set' id='b1'><bind "
                                f"xmlns='{BIND}'><resource>{resource}</resource></bind></iq>")
        return reply.findtext(f".//{{{BIND}}}jid")

    async def close(self) -> None:
        await self.http.close()
