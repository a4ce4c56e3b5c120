"""The web client's static files (iim/server/web/static/, docs/web-client.md):
what the CSP and the vendoring rules ask of them, checked on the files.

- no inline script, no inline style, no event-handler attribute (the gateway's
  Content-Security-Policy allows 'self' only: any of them would be blocked);
- everything the page loads comes from this origin (no CDN);
- the vendored Strophe.js is the file vendor/README.md names (sha256), its
  licence beside it;
- peer data goes on the page as text: no innerHTML, outerHTML,
  insertAdjacentHTML, document.write or eval in our scripts.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "iim" / "server" / "web" / "static"
OUR_SCRIPTS = ("im.js", "lock.js")


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.inline_script: list[str] = []
        self.styles = 0
        self.handlers: list[str] = []
        self.style_attrs: list[str] = []
        self.links: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.handlers += [f"<{tag} {name}>" for name in attrs if name.startswith("on")]
        if "style" in attrs:
            self.style_attrs.append(tag)
        if tag == "script":
            self.scripts.append(attrs)
            self._in_script = True
        elif tag == "style":
            self.styles += 1
        for name in ("src", "href"):
            if name in attrs and tag in ("script", "link", "img"):
                self.links.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script.append(data.strip())


@pytest.fixture(scope="module")
def page() -> Page:
    parsed = Page()
    parsed.feed((STATIC / "im.html").read_text())
    return parsed


def test_no_inline_script_style_or_handler(page):
    assert page.scripts and all(s.get("src") for s in page.scripts)
    assert page.inline_script == []
    assert page.styles == 0 and page.style_attrs == []
    assert page.handlers == []


def test_everything_comes_from_this_origin(page):
    assert page.links
    for link in page.links:
        if link == "data:,":                # the empty favicon: no request at all
            continue
        assert link.startswith("/static/"), link
        assert (STATIC / link.removeprefix("/static/")).is_file(), link


def test_the_vendored_strophe_is_the_one_the_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    for name in ("strophe.umd.min.js", "strophe.LICENSE.txt"):
        digest = hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(name)}`.*`{digest}`", readme), name
    assert "MIT License" in (STATIC / "vendor" / "strophe.LICENSE.txt").read_text() or \
        "Permission is hereby granted" in (STATIC / "vendor" / "strophe.LICENSE.txt").read_text()


@pytest.mark.parametrize("name", OUR_SCRIPTS)
def test_our_scripts_never_parse_text_as_html(name):
    source = (STATIC / name).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in source, f"{name} uses {sink}"
