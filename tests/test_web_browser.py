"""The web client in a real browser (issue 15): Debian's chromium, headless,
driven over WebDriver (tests/support/webdriver.py), against what ``./dev run``
starts (the dev-setup configuration, tests/devsystem.py) with the gateway on
``iim_server.httpport``.

Over HTTPS, with the dev CA really trusted (an NSS database made by certutil
in the browser's HOME): alice logs in from the page; a message bob sent while
she was away is there, marked so; bob's subscription request is accepted with
the page's button, and bob appears in her roster, online; bob (slixmpp,
through the multiplexor) writes, the page shows it; she answers with Enter and
bob receives it; the lock is closed, and its panel shows what the server said
about her session (TLS version, cipher, certificate, where TLS ends). A
screenshot of the main window is saved in the test's folder (its path is
printed). A request alice denies reaches bob as ``unsubscribed``; when the
server restarts, the page logs in again by itself; at phone width nothing
overflows. Then the same page over plain HTTP (``iim_server.http_allow_plain``)
shows the open lock and says why.

One browser and one server for the module: the browser is what costs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from devsystem import DevSystem
from live import Client, next_item
from support.process import DEADLINE
from support.webdriver import Chromium, available



@pytest.fixture(autouse=True, scope="module")
def _browser_installed():
    """./dev installs chromium, chromium-driver and certutil: without them this is a
    failed set-up, never a skip."""
    missing = available()
    if missing is not None:
        pytest.fail(missing)

ENTER = "\ue007"                # WebDriver's Enter key


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """The dev system with the gateway, and the browser (``system.browser``),
    which starts (certutil, chromedriver, chromium) while the daemons do."""
    system = DevSystem(tmp_path_factory.mktemp("web") / "dev", web=True)    # gateway on system.http_port
    system.web = system.variant("web.conf", {
        "iim_server.http_allow_plain": "true",              # as dev-setup writes it
        "iim_server.auth_failure_delay": "0"})     # a wrong password is answered at once
    with ThreadPoolExecutor(1) as pool:
        browser = pool.submit(Chromium, tmp_path_factory.mktemp("chromium-home"),
                              trust=[system.folder / "ca.pem"])
        try:
            system.server = system.start_server(system.web).wait_port(system.http_port)
            system.start_mux(system.web)
        finally:
            system.browser = browser.result()
    yield system
    try:
        system.browser.quit()
    finally:
        system.stop_all()


@pytest.fixture(scope="module")
def browser(system):
    return system.browser


@pytest.fixture(autouse=True)
def no_script_errors(browser):
    """After each test: no script error and no Content-Security-Policy
    violation on the page's console (the gateway's CSP: 'self' only)."""
    browser.console()
    yield
    bad = [entry["message"] for entry in browser.console()
           if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]
    assert bad == []


def log_in(browser: Chromium, url: str, password: str) -> None:
    browser.get(url)
    browser.type("#jid", "alice@localhost")
    browser.type("#password", password + ENTER)
    browser.wait_for("return !document.getElementById('main-view').hidden", "alice logged in")


def wait_text(browser: Chromium, css: str, text: str) -> str:
    return browser.wait_for(
        "const e = [...document.querySelectorAll(arguments[0])]"
        "  .find(e => e.textContent.includes(arguments[1])); return e ? e.textContent : null;",
        f"{text!r} in {css}", css, text)


def lock_settled(browser: Chromium) -> str:
    """The lock's summary once the server's answer (or its absence) is in."""
    return browser.wait_for(
        "const s = document.getElementById('lock-summary').textContent;"
        "return s && !s.includes('has not confirmed') ? s : null;", "the security answer")


def test_alice_chats_with_bob_over_https_and_the_lock_is_closed(system, browser, tmp_path):
    async def scenario():
        bob = await Client("bob@localhost", system.users["bob"],
                           system.folder / "ca.pem").online(system.mux_port)
        bob.send_message(mto="alice@localhost", mbody="sent while you were away", mtype="chat")
        bob.send_presence(pto="alice@localhost", ptype="subscribe")
        # the server answers a ping after what bob sent before it: the message is
        # stored offline before alice's page comes online
        await bob.plugin["xep_0199"].ping(jid="localhost", timeout=DEADLINE)
        page = f"https://localhost:{system.http_port}/"
        await asyncio.to_thread(log_in, browser, page, system.users["alice"])

        await asyncio.to_thread(wait_text, browser, ".msg.in", "sent while you were away")
        assert "while you were away" in browser.text(".msg.in time")
        await asyncio.to_thread(wait_text, browser, "#requests li", "bob@localhost")
        browser.click("#requests li button[aria-label='Accept bob@localhost']")
        asked_back = await next_item(bob.subscribe_requests)    # the page asks back
        assert asked_back["from"].bare == "alice@localhost"
        bob.send_presence(pto="alice@localhost", ptype="subscribed")
        await asyncio.to_thread(wait_text, browser, "#roster li.available", "bob@localhost")

        bob.send_message(mto="alice@localhost", mbody="hello from bob", mtype="chat")
        await asyncio.to_thread(wait_text, browser, ".msg.in .body", "hello from bob")
        browser.type(".chat:not([hidden]) textarea", "hello bob, from the browser" + ENTER)
        answer = await next_item(bob.received)
        assert (answer["body"], answer["from"].bare) == ("hello bob, from the browser",
                                                         "alice@localhost")
        await asyncio.to_thread(check_the_lock, browser, tmp_path)
        await bob.offline()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def check_the_lock(browser: Chromium, folder) -> None:
    summary = lock_settled(browser)
    assert browser.text("#lock-text") == "secure", summary
    assert browser.script("return document.getElementById('lock').className") == "lock closed"
    browser.click("#lock")
    assert browser.script("return document.getElementById('lock').getAttribute("
                          "'aria-expanded')") == "true"
    facts = browser.text("#lock-facts")
    assert "wss://localhost" in facts
    assert "TLSv1.3" in facts or "TLSv1.2" in facts
    assert "at the iim server" in facts and "CN=iim dev server" in facts
    assert "CN=iim development CA" in facts
    shot = browser.screenshot(folder / "web-client.png")
    print(f"\nscreenshot of the main window: {shot}")
    browser.click("#lock-close")


def test_a_denied_subscription_request_is_unsubscribed_for_the_asker(system, browser):
    """Bob withdraws his subscription (RFC 6121 §3.3) and asks again: the page
    shows the request, alice denies it, bob hears <presence type='unsubscribed'/>."""
    ensure_logged_in(system, browser)

    async def scenario():
        bob = await Client("bob@localhost", system.users["bob"],
                           system.folder / "ca.pem").online(system.mux_port)
        answers = asyncio.Queue()
        bob.add_event_handler("presence_unsubscribed", answers.put_nowait)
        bob.send_presence(pto="alice@localhost", ptype="unsubscribe")
        bob.send_presence(pto="alice@localhost", ptype="subscribe")
        await asyncio.to_thread(wait_text, browser, "#requests li", "bob@localhost")
        browser.click("#requests li button[aria-label='Deny bob@localhost']")
        denied = await next_item(answers)
        assert denied["from"].bare == "alice@localhost"
        assert browser.script("return document.getElementById('requests-box').hidden")
        await bob.offline()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def ensure_logged_in(system, browser: Chromium) -> None:
    if browser.script("return document.getElementById('main-view').hidden"):
        log_in(browser, f"https://localhost:{system.http_port}/", system.users["alice"])


def test_after_a_server_restart_the_page_logs_in_again(system, browser):
    """The connection drops (the server stops: <system-shutdown/>); the page
    says it will try again, tries when its timer says (attempt 2 after the
    first retry failed), and, told the network is back, at once: logged in
    again, the lock closes again on the new session's answer."""
    ensure_logged_in(system, browser)
    system.stop(system.server)
    wait_text(browser, "#status", "Reconnecting in")
    assert browser.text("#lock-text") == "not secure"
    wait_text(browser, "#status", "(attempt 2)")        # the first retry found no server
    system.server = system.restart_server(system.web).wait_port(system.http_port)
    browser.script("window.dispatchEvent(new Event('online'))")     # no waiting out the backoff
    wait_text(browser, "#status", "Online as alice@localhost/")
    lock_settled(browser)
    assert browser.text("#lock-text") == "secure"


def test_at_phone_width_nothing_overflows_and_the_contacts_sit_above_the_chats(
        system, browser, tmp_path):
    ensure_logged_in(system, browser)
    browser.window_size(390, 844)
    try:
        layout = browser.wait_for(
            "const r = (s) => document.querySelector(s).getBoundingClientRect();"
            "return window.innerWidth < 500 ? {overflow: document.documentElement.scrollWidth"
            " - window.innerWidth, side: r('.side').bottom, chats: r('.chats').top} : null;",
            "the narrow window")
        assert layout["overflow"] <= 0, layout
        assert layout["side"] <= layout["chats"], layout
        print(f"\nscreenshot at phone width: {browser.screenshot(tmp_path / 'phone.png')}")
    finally:
        browser.window_size(1100, 900)


def test_a_contact_added_with_the_form_appears_in_the_roster(system, browser):
    """A roster set, then a subscription request (RFC 6121 §2.4, §3.1); the
    roster push puts the new contact on the page."""
    ensure_logged_in(system, browser)
    browser.script("document.getElementById('add-jid').focus()")
    browser.press("Carol@localhost" + ENTER)
    wait_text(browser, "#roster li[data-jid='carol@localhost']", "carol@localhost")
    wait_text(browser, "#status", "Asked carol@localhost to share presence.")


def test_logging_out_leaves_nothing_of_the_account_on_the_page(system, browser):
    ensure_logged_in(system, browser)
    wait_text(browser, "#roster li", "bob@localhost")
    browser.click("#logout")
    browser.wait_for("return !document.getElementById('login-view').hidden", "the login form")
    state = browser.script(
        "return {tabs: document.getElementById('tabs').children.length,"
        " chats: document.querySelectorAll('.chat').length,"
        " roster: document.getElementById('roster').children.length,"
        " password: document.getElementById('password').value,"
        " lock: document.getElementById('lock-text').textContent};")
    assert state == {"tabs": 0, "chats": 0, "roster": 0, "password": "", "lock": "not secure"}


def test_over_bosh_alice_chats_too(system, browser):
    """The page with ?transport=bosh: XEP-0206 at /http-bind instead of the
    WebSocket, the same chat, and the lock closed on the server's answer."""
    log_in(browser, f"https://localhost:{system.http_port}/im.html?transport=bosh",
           system.users["alice"])

    async def scenario():
        bob = await Client("bob@localhost", system.users["bob"],
                           system.folder / "ca.pem").online(system.mux_port)
        bob.send_message(mto="alice@localhost", mbody="over BOSH?", mtype="chat")
        await asyncio.to_thread(wait_text, browser, ".msg.in .body", "over BOSH?")
        browser.type(".chat:not([hidden]) textarea", "yes, over BOSH" + ENTER)
        answer = await next_item(bob.received)
        assert answer["body"] == "yes, over BOSH"
        await bob.offline()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    summary = lock_settled(browser)
    assert browser.text("#lock-text") == "secure", summary
    facts = browser.text("#lock-facts")
    assert f"BOSH, https://localhost:{system.http_port}/http-bind" in facts
    assert "at the iim server" in facts and "CN=iim dev server" in facts


TAB = "\ue004"                  # WebDriver's Tab key


def test_the_login_form_works_from_the_keyboard_with_focus_visible(system, browser):
    """Focus starts in the address field, Tab goes to the password and then to
    the button, each with a visible outline; Enter logs in; a wrong password
    is said so, and not tried again."""
    browser.get(f"https://localhost:{system.http_port}/im.html")
    focused = ("const e = document.activeElement;"
               "return [e.id, getComputedStyle(e).outlineStyle, getComputedStyle(e).outlineWidth];")
    order = [browser.script(focused)]
    for _ in range(2):
        browser.press(TAB)
        order.append(browser.script(focused))
    assert [o[0] for o in order] == ["jid", "password", "login-button"], order
    assert all(style != "none" and width != "0px" for _, style, width in order), order
    browser.script("document.getElementById('jid').focus()")
    browser.press("alice@localhost" + TAB + "not her password" + ENTER)
    wait_text(browser, "#login-error", "Wrong address or password.")
    assert browser.script("return document.getElementById('main-view').hidden")
    browser.script("document.getElementById('password').focus()")
    browser.press(system.users["alice"] + ENTER)
    browser.wait_for("return !document.getElementById('main-view').hidden", "alice logged in")
    assert browser.script("return document.activeElement.id") == "add-jid"


def test_over_plain_http_the_lock_is_open_and_the_page_says_why(system, browser, tmp_path):
    log_in(browser, f"http://localhost:{system.http_port}/im.html", system.users["alice"])
    summary = lock_settled(browser)
    assert browser.text("#lock-text") == "not secure"
    assert browser.script("return document.getElementById('lock').className") == "lock open"
    assert "plain HTTP" in summary
    assert "the server says this session is not encrypted" in summary
    assert "plain HTTP" in browser.text("#plain-warning")
    assert browser.script("return document.getElementById('plain-warning').hidden") is False
    browser.click("#lock")
    print(f"\nscreenshot over plain HTTP: {browser.screenshot(tmp_path / 'plain.png')}")
