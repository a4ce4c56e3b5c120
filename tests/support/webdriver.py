"""A real browser for tests: Debian's chromium, driven by chromedriver over the
W3C WebDriver protocol (https://www.w3.org/TR/webdriver2/), spoken here with
urllib.

Why not selenium: the part of WebDriver a test needs (a session, navigate,
find, click, type, read, run a script, take a screenshot) is a dozen JSON
requests; and selenium 4 brings Selenium Manager, which fetches drivers and
browsers from the network when it thinks one is missing. Nothing here
downloads anything: the driver and the browser are the Debian packages
``chromium-driver`` and ``chromium`` (./dev installs them).

Trust. Chromium on Linux trusts the CAs in the NSS database
``$HOME/.pki/nssdb``; ``Chromium(home, trust=[ca.pem])`` makes that database
with the real ``certutil`` in a HOME of the test's own and runs the browser
there, so the dev CA is really trusted (no ``--ignore-certificate-errors``).

``--no-sandbox`` only as root: chromium's sandbox refuses to run as root,
and the tests run as root (in containers and in CI); this browser opens only
pages of the server under test, on loopback. As any other user the sandbox
stays on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from support.ports import free_port
from support.process import Process, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"     # WebDriver §12.1


def available() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER, shutil.which("certutil")):
        if not path or not Path(path).exists():
            return f"{path or 'certutil'} is missing: ./dev installs chromium and chromium-driver"
    return None


class WebDriverError(AssertionError):
    pass


def make_nssdb(home: Path, cas: list[Path]) -> Path:
    """``home``/.pki/nssdb trusting each CA in ``cas`` for TLS servers (certutil)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True,
                   capture_output=True)
    for i, ca in enumerate(cas):
        subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", f"test CA {i}",
                        "-t", "C,,", "-i", str(ca)], check=True, capture_output=True)
    return db


class Chromium:
    """One chromedriver and one headless chromium session."""

    def __init__(self, home: Path, *, trust: list[Path] = (), width: int = 1100,
                 height: int = 900) -> None:
        self.home = Path(home)
        make_nssdb(self.home, list(trust))
        self.port = free_port()
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.driver = Process([CHROMEDRIVER, f"--port={self.port}"], self.home, "chromedriver",
                              env=env)
        self.driver.wait_port(self.port)
        # Chromium's sandbox will not start as root, and the tests run as root (containers,
        # CI); as any other user the sandbox stays on.
        sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
        args = ["--headless=new", *sandbox, "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--password-store=basic", f"--window-size={width},{height}",
                f"--user-data-dir={self.home / 'profile'}"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "acceptInsecureCerts": False,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    # -- the protocol ------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.loads(answer.read())["value"]
        except urllib.error.HTTPError as exc:
            value = json.loads(exc.read() or b"{}").get("value", {})
            raise WebDriverError(f"{method} {path}: {value.get('error')}: "
                                 f"{value.get('message', '')[:500]}") from None

    def _session(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    # -- what tests use ------------------------------------------------------------------

    def get(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        found = self._session("POST", "/element", {"using": "css selector", "value": css})
        return found[W3C_ELEMENT]

    def click(self, css: str) -> None:
        self._session("POST", f"/element/{self.find(css)}/click")

    def type(self, css: str, text: str) -> None:
        """Keys into the element (WebDriver key codes: "\\ue007" is Enter)."""
        self._session("POST", f"/element/{self.find(css)}/value", {"text": text})

    def press(self, keys: str) -> None:
        """Keys into whatever has the focus (as a user's keyboard would)."""
        active = self._session("GET", "/element/active")[W3C_ELEMENT]
        self._session("POST", f"/element/{active}/value", {"text": keys})

    def script(self, source: str, *args):
        return self._session("POST", "/execute/sync", {"script": source, "args": list(args)})

    def text(self, css: str) -> str:
        return self.script("const e = document.querySelector(arguments[0]);"
                           "return e ? e.textContent : null;", css) or ""

    def wait_for(self, source: str, what: str, *args, timeout: float = 30):
        """Until the script returns something true; that value."""
        return wait_until(lambda: self.script(source, *args), what, timeout=timeout,
                          interval=0.05, alive=self.driver._ended)

    def window_size(self, width: int, height: int) -> None:
        self._session("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._session("GET", "/screenshot")))
        return path

    def console(self) -> list[dict]:
        """What the pages wrote to the console since the last call (chromedriver's
        log endpoint): script errors, CSP violations, failed loads."""
        return self._session("POST", "/se/log", {"type": "browser"})

    def logs(self) -> str:
        return self.driver.stderr()

    def quit(self) -> None:
        try:
            self._session("DELETE", "")
        finally:
            self.driver.stop()
