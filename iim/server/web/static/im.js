/* The iim web client (issue 15): log in, roster with presence, chats,
 * subscription requests, offline messages, reconnect with backoff.
 *
 * XMPP is Strophe.js (static/vendor/, pinned): XMPP over WebSocket (RFC 7395)
 * at /ws on this page's own host, BOSH (XEP-0206) at /http-bind when a
 * WebSocket cannot be opened. SASL is SCRAM only (SHA-256, else SHA-1), so
 * the password itself never crosses the connection; it is kept in this
 * page's memory while logged in, to log in again after a lost connection,
 * and forgotten at logout. Nothing is stored in the browser.
 *
 * Everything a peer sends is shown with textContent, never parsed as HTML.
 * No inline script or style: the page's CSP allows 'self' only.
 */
"use strict";

(() => {
    const ROSTER_NS = "jabber:iq:roster";
    const DELAY_NS = "urn:xmpp:delay";
    const BACKOFF_FIRST = 1;        // seconds; doubles per failure...
    const BACKOFF_MAX = 60;         // ...up to this, with jitter
    const SECURITY_TIMEOUT = 10000;

    const $ = (id) => document.getElementById(id);
    const bare = (jid) => Strophe.getBareJidFromJid(jid || "").toLowerCase();

    const state = {
        conn: null,
        jid: "",
        password: "",
        service: "",
        transports: [],             // service URLs to try, WebSocket first
        everConnected: false,
        loggingOut: false,
        failures: 0,
        retryTimer: null,
        roster: new Map(),          // bare JID -> {jid, name, subscription, ask, resources}
        requests: new Set(),        // bare JIDs asking to see our presence
        chats: new Map(),           // bare JID -> {tab, panel, log, unread}
        current: null,
    };

    // -- connection -----------------------------------------------------------------

    /* WebSocket first, BOSH if no WebSocket opens; ?transport=bosh or
     * ?transport=websocket on the page's URL asks for one only (a network
     * whose proxy breaks WebSockets; a test). */
    function serviceUrls() {
        const secure = location.protocol === "https:";
        const ws = `${secure ? "wss:" : "ws:"}//${location.host}/ws`;
        const bosh = `${location.origin}/http-bind`;
        const asked = new URLSearchParams(location.search).get("transport");
        if (asked === "bosh" || !("WebSocket" in window)) {
            return [bosh];
        }
        return asked === "websocket" ? [ws] : [ws, bosh];
    }

    function connect() {
        clearTimeout(state.retryTimer);
        state.retryTimer = null;
        state.service = state.transports[0];
        IimLock.show(state.service, undefined);
        const conn = new Strophe.Connection(state.service, {
            mechanisms: [Strophe.SASLSHA256, Strophe.SASLSHA1],
        });
        state.conn = conn;
        setStatus("Connecting…");
        conn.connect(state.jid, state.password, (status, condition) => onStatus(conn, status,
                                                                                 condition));
    }

    function onStatus(conn, status, condition) {
        if (conn !== state.conn) {
            return;                 // an old connection's last words
        }
        const S = Strophe.Status;
        switch (status) {
        case S.CONNECTING:
            setStatus("Connecting…");
            break;
        case S.AUTHENTICATING:
            setStatus("Logging in…");
            break;
        case S.CONNECTED:
            connected(conn);
            break;
        case S.AUTHFAIL:
            state.loggingOut = true;        // wrong password: do not retry
            state.password = "";
            loginFailed(condition === "not-authorized" || !condition
                ? "Wrong address or password."
                : `Login refused (${condition}).`);
            $("password").value = "";
            $("password").focus();
            break;
        case S.CONNFAIL:
        case S.CONNTIMEOUT:
        case S.ERROR:
            setStatus(`Connection failed${condition ? ` (${condition})` : ""}.`);
            break;
        case S.DISCONNECTED:
            disconnected();
            break;
        default:
            break;
        }
    }

    function connected(conn) {
        state.everConnected = true;
        state.failures = 0;
        state.roster.clear();
        conn.addHandler(onMessage, null, "message");
        conn.addHandler(onPresence, null, "presence");
        conn.addHandler(onRosterPush, ROSTER_NS, "iq", "set");
        showMain();
        setStatus(`Online as ${conn.jid}.`);
        askSecurity(conn);
        conn.sendIQ($iq({type: "get"}).c("query", {xmlns: ROSTER_NS}), (iq) => {
            for (const item of iq.getElementsByTagNameNS(ROSTER_NS, "item")) {
                updateItem(item);
            }
            renderRoster();
            conn.send($pres());     // initial presence: offline messages follow
        }, () => conn.send($pres()));
    }

    function askSecurity(conn) {
        const iq = $iq({type: "get"}).c("security", {xmlns: IimLock.NS});
        conn.sendIQ(iq, (result) => {
            IimLock.show(state.service, IimLock.parseAnswer(result));
        }, () => IimLock.show(state.service, null), SECURITY_TIMEOUT);
    }

    function disconnected() {
        if (state.retryTimer !== null) {
            return;                 // Strophe may say DISCONNECTED twice (error, then close)
        }
        IimLock.show(state.service, undefined);
        if (state.loggingOut) {
            showLogin();
            return;
        }
        if (!state.everConnected) {         // the first login did not get through
            if (state.transports.length > 1) {
                state.transports.shift();   // no WebSocket here: BOSH
                connect();
            } else {
                state.loggingOut = true;
                loginFailed("Cannot reach the server; try again later.");
            }
            return;
        }
        const delay = backoff(state.failures++);
        const attempt = state.failures > 1 ? ` (attempt ${state.failures})` : "";
        setStatus(`Connection lost. Reconnecting in ${delay} s${attempt}…`);
        for (const entry of state.roster.values()) {
            entry.resources.clear();
        }
        renderRoster();
        state.retryTimer = setTimeout(connect, delay * 1000);
    }

    /* 1, 2, 4, ... BACKOFF_MAX seconds, each between half and all of that. */
    function backoff(failures) {
        const ceiling = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** failures);
        return Math.max(1, Math.round(ceiling * (0.5 + Math.random() / 2)));
    }

    // -- login and logout -----------------------------------------------------------

    function onLogin(event) {
        event.preventDefault();
        const jid = $("jid").value.trim();
        const password = $("password").value;
        if (!/^[^@/\s]+@[^@/\s]+$/.test(jid)) {
            loginFailed("Give your address as name@domain.");
            $("jid").focus();
            return;
        }
        if (!password) {
            loginFailed("Give your password.");
            $("password").focus();
            return;
        }
        if (!(window.crypto && window.crypto.subtle)) {
            loginFailed("This browser offers no WebCrypto on this page (plain HTTP on a " +
                        "remote host), so SCRAM cannot run and the password would have to " +
                        "cross the network in the clear: use the https:// address.");
            return;
        }
        $("login-error").textContent = "";
        $("login-button").disabled = true;
        if (jid !== state.jid) {
            forget();
        }
        Object.assign(state, {jid, password, loggingOut: false, everConnected: false,
                              failures: 0, transports: serviceUrls()});
        connect();
    }

    function loginFailed(text) {
        $("login-error").textContent = text;
        $("login-button").disabled = false;
        if (state.conn) {
            state.conn.disconnect();
        }
        showLogin();
    }

    function logout() {
        state.loggingOut = true;
        clearTimeout(state.retryTimer);
        state.retryTimer = null;
        if (state.conn && state.conn.connected) {
            state.conn.send($pres({type: "unavailable"}));
            state.conn.disconnect("logout");
        }
        state.password = "";
        $("password").value = "";
        forget();
        showLogin();
    }

    /* Nothing of one account stays on the page for the next. */
    function forget() {
        state.roster.clear();
        state.requests.clear();
        state.chats.clear();
        state.current = null;
        $("tabs").replaceChildren();
        $("panels").replaceChildren($("no-chat"));
        $("no-chat").hidden = false;
        renderRoster();
        renderRequests();
        IimLock.show(serviceUrls()[0], undefined);
    }

    function showLogin() {
        $("main-view").hidden = true;
        $("logout").hidden = true;
        $("login-view").hidden = false;
        $("login-button").disabled = false;
        setStatus("Not connected.");
        if (!state.jid) {
            $("jid").focus();
        }
    }

    function showMain() {
        const first = $("main-view").hidden;
        $("login-view").hidden = true;
        $("main-view").hidden = false;
        $("logout").hidden = false;
        $("password").value = "";
        if (first) {
            $("add-jid").focus();
        }
    }

    function setStatus(text) {
        $("status").textContent = text;
    }

    // -- roster and presence --------------------------------------------------------

    function entryFor(jid) {
        let entry = state.roster.get(jid);
        if (!entry) {
            entry = {jid, name: "", subscription: "none", ask: false, resources: new Map()};
            state.roster.set(jid, entry);
        }
        return entry;
    }

    function updateItem(item) {
        const jid = bare(item.getAttribute("jid"));
        if (item.getAttribute("subscription") === "remove") {
            state.roster.delete(jid);
            return;
        }
        const entry = entryFor(jid);
        entry.name = item.getAttribute("name") || "";
        entry.subscription = item.getAttribute("subscription") || "none";
        entry.ask = item.getAttribute("ask") === "subscribe";
    }

    function onRosterPush(iq) {
        const from = iq.getAttribute("from");
        if (from && bare(from) !== bare(state.conn.jid)) {
            return true;            // RFC 6121 §2.1.6: only our own server pushes
        }
        for (const item of iq.getElementsByTagNameNS(ROSTER_NS, "item")) {
            updateItem(item);
        }
        state.conn.send($iq({type: "result", id: iq.getAttribute("id")}));
        renderRoster();
        return true;
    }

    function onPresence(presence) {
        const from = presence.getAttribute("from") || "";
        const jid = bare(from);
        const type = presence.getAttribute("type") || "available";
        if (jid === bare(state.conn.jid)) {
            return true;            // our own resources
        }
        if (type === "subscribe") {
            state.requests.add(jid);
            renderRequests();
        } else if (type === "unavailable" || type === "error") {
            const entry = state.roster.get(jid);
            if (entry) {
                entry.resources.delete(Strophe.getResourceFromJid(from) || "");
            }
        } else if (type === "available") {
            const show = childText(presence, "show") || "available";
            entryFor(jid).resources.set(Strophe.getResourceFromJid(from) || "",
                                        {show, status: childText(presence, "status")});
        }
        renderRoster();
        return true;
    }

    function presenceOf(entry) {
        const order = ["chat", "available", "away", "xa", "dnd"];
        let best = null;
        for (const r of entry.resources.values()) {
            if (best === null || order.indexOf(r.show) < order.indexOf(best.show)) {
                best = r;
            }
        }
        return best;
    }

    const SHOW_TEXT = {chat: "free to chat", available: "online", away: "away",
                       xa: "away for a while", dnd: "do not disturb"};

    function renderRoster() {
        const list = $("roster");
        const focused = list.contains(document.activeElement)
            ? document.activeElement.closest("li").dataset.jid : null;
        list.replaceChildren();
        const entries = [...state.roster.values()].sort(
            (a, b) => (a.name || a.jid).localeCompare(b.name || b.jid));
        for (const entry of entries) {
            const best = presenceOf(entry);
            const li = document.createElement("li");
            li.dataset.jid = entry.jid;
            li.className = best ? `contact ${best.show}` : "contact offline";
            const button = document.createElement("button");
            button.type = "button";
            const dot = document.createElement("span");
            dot.className = "dot";
            dot.setAttribute("aria-hidden", "true");
            const name = document.createElement("span");
            name.className = "name";
            name.textContent = entry.name || entry.jid;
            const show = document.createElement("span");
            show.className = "show";
            let text = best ? SHOW_TEXT[best.show] || best.show : "offline";
            if (best && best.status) {
                text += `: ${best.status}`;
            }
            if (entry.ask) {
                text += " (waiting for approval)";
            }
            show.textContent = text;
            button.append(dot, name, show);
            button.setAttribute("aria-label", `Chat with ${entry.name || entry.jid}, ${text}`);
            button.addEventListener("click", () => openChat(entry.jid, true));
            li.append(button);
            list.append(li);
            if (entry.jid === focused) {
                button.focus();     // a presence update must not take the keyboard's place
            }
        }
    }

    function renderRequests() {
        const list = $("requests");
        list.replaceChildren();
        for (const jid of state.requests) {
            const li = document.createElement("li");
            li.dataset.jid = jid;
            const text = document.createElement("span");
            text.textContent = `${jid} wants to see your presence.`;
            const accept = button("Accept", `Accept ${jid}`, () => answerRequest(jid, true));
            const deny = button("Deny", `Deny ${jid}`, () => answerRequest(jid, false));
            li.append(text, accept, deny);
            list.append(li);
        }
        $("requests-box").hidden = state.requests.size === 0;
    }

    function answerRequest(jid, accept) {
        state.requests.delete(jid);
        state.conn.send($pres({to: jid, type: accept ? "subscribed" : "unsubscribed"}));
        const entry = state.roster.get(jid);
        const seesThem = entry && (entry.subscription === "to" || entry.subscription === "both");
        if (accept && !seesThem && !(entry && entry.ask)) {
            state.conn.send($pres({to: jid, type: "subscribe"}));   // and ask back
        }
        renderRequests();
        $("add-jid").focus();
    }

    function onAdd(event) {
        event.preventDefault();
        const input = $("add-jid");
        const jid = bare(input.value.trim());
        if (!/^[^@/\s]+@[^@/\s]+$/.test(jid)) {
            setStatus("Give the contact's address as name@domain.");
            input.focus();
            return;
        }
        state.conn.sendIQ($iq({type: "set"}).c("query", {xmlns: ROSTER_NS})
            .c("item", {jid}), () => {
            state.conn.send($pres({to: jid, type: "subscribe"}));
            setStatus(`Asked ${jid} to share presence.`);
        }, () => setStatus(`Could not add ${jid}.`));
        input.value = "";
    }

    // -- chats ------------------------------------------------------------------------

    function onMessage(message) {
        const from = message.getAttribute("from") || "";
        const type = message.getAttribute("type") || "normal";
        const jid = bare(from);
        if (type === "error") {
            const chat = state.chats.get(jid);
            if (chat) {
                addLine(chat, "error", `Not delivered: ${errorText(message)}`);
            }
            return true;
        }
        const body = childText(message, "body");
        if (!body || type === "groupchat") {
            return true;
        }
        const chat = openChat(jid, false);
        const delay = message.getElementsByTagNameNS(DELAY_NS, "delay")[0];
        const stamp = delay ? new Date(delay.getAttribute("stamp")) : null;
        addLine(chat, "in", body, stamp);
        if (state.current !== jid) {
            chat.unread += 1;
            renderTab(chat);
        }
        return true;
    }

    function openChat(jid, focus) {
        let chat = state.chats.get(jid);
        if (!chat) {
            chat = makeChat(jid);
            state.chats.set(jid, chat);
        }
        if (focus || state.current === null) {
            selectChat(jid, focus);
        }
        return chat;
    }

    function makeChat(jid) {
        const id = `chat-${state.chats.size + 1}`;
        const panel = $("chat-template").content.firstElementChild.cloneNode(true);
        panel.id = id;
        panel.dataset.jid = jid;
        panel.hidden = true;
        panel.setAttribute("aria-label", `Chat with ${jid}`);
        const textarea = panel.querySelector("textarea");
        textarea.id = `${id}-text`;
        panel.querySelector("label").htmlFor = textarea.id;
        panel.querySelector("label").textContent = `Message to ${jid}`;
        const tab = document.createElement("button");
        tab.type = "button";
        tab.className = "tab";
        tab.id = `${id}-tab`;
        tab.setAttribute("role", "tab");
        tab.setAttribute("aria-controls", id);
        tab.dataset.jid = jid;
        panel.setAttribute("aria-labelledby", tab.id);
        const chat = {jid, tab, panel, log: panel.querySelector(".log"), unread: 0};
        tab.addEventListener("click", () => selectChat(jid, true));
        tab.addEventListener("keydown", (event) => moveTab(event, jid));
        panel.querySelector("form").addEventListener("submit", (event) => {
            event.preventDefault();
            send(chat, textarea);
        });
        textarea.addEventListener("keydown", (event) => {
            if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
                event.preventDefault();
                send(chat, textarea);
            }
        });
        $("tabs").append(tab);
        $("panels").append(panel);
        $("no-chat").hidden = true;
        renderTab(chat);
        return chat;
    }

    function renderTab(chat) {
        const entry = state.roster.get(chat.jid);
        const name = (entry && entry.name) || chat.jid;
        chat.tab.textContent = chat.unread ? `${name} (${chat.unread})` : name;
        chat.tab.setAttribute("aria-label", chat.unread
            ? `${name}, ${chat.unread} unread` : name);
    }

    function selectChat(jid, focus) {
        state.current = jid;
        for (const chat of state.chats.values()) {
            const on = chat.jid === jid;
            chat.panel.hidden = !on;
            chat.tab.setAttribute("aria-selected", String(on));
            chat.tab.tabIndex = on ? 0 : -1;
            if (on) {
                chat.unread = 0;
                renderTab(chat);
                chat.log.scrollTop = chat.log.scrollHeight;
                if (focus) {
                    chat.panel.querySelector("textarea").focus();
                }
            }
        }
    }

    /* Arrow keys move between tabs (WAI-ARIA tabs pattern). */
    function moveTab(event, jid) {
        const keys = [...state.chats.keys()];
        const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
        if (!step) {
            return;
        }
        event.preventDefault();
        const next = keys[(keys.indexOf(jid) + step + keys.length) % keys.length];
        selectChat(next, false);
        state.chats.get(next).tab.focus();
    }

    function send(chat, textarea) {
        const text = textarea.value.trim();
        if (!text) {
            return;
        }
        if (!state.conn || !state.conn.authenticated) {
            addLine(chat, "error", "Not connected: the message was not sent.");
            return;
        }
        state.conn.send($msg({to: chat.jid, type: "chat", id: state.conn.getUniqueId("m")})
            .c("body").t(text));
        addLine(chat, "out", text);
        textarea.value = "";
    }

    function addLine(chat, kind, text, stamp) {
        const li = document.createElement("li");
        li.className = `msg ${kind}`;
        const when = document.createElement("time");
        const date = stamp && !isNaN(stamp) ? stamp : new Date();
        when.dateTime = date.toISOString();
        when.textContent = stamp ? `${date.toLocaleString()} (while you were away)`
                                 : date.toLocaleTimeString();
        const who = document.createElement("span");
        who.className = "who";
        who.textContent = kind === "out" ? "me" : kind === "in" ? chat.jid : "";
        const body = document.createElement("span");
        body.className = "body";
        body.textContent = text;
        li.append(when, who, body);
        chat.log.append(li);
        chat.log.scrollTop = chat.log.scrollHeight;
    }

    // -- small helpers ----------------------------------------------------------------

    function childText(element, name) {
        for (const child of element.children) {
            if (child.localName === name) {
                return child.textContent;
            }
        }
        return "";
    }

    function errorText(stanza) {
        const error = stanza.getElementsByTagName("error")[0];
        const condition = error && error.firstElementChild;
        return condition ? condition.localName : "unknown error";
    }

    function button(text, label, onClick) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = text;
        b.setAttribute("aria-label", label);
        b.addEventListener("click", onClick);
        return b;
    }

    // -- start ------------------------------------------------------------------------

    function start() {
        IimLock.bindPanel();
        IimLock.show(serviceUrls()[0], undefined);
        const warning = IimLock.plainWarning();
        if (warning) {
            $("plain-warning").textContent = warning;
            $("plain-warning").hidden = false;
        }
        $("login-form").addEventListener("submit", onLogin);
        $("add-form").addEventListener("submit", onAdd);
        $("logout").addEventListener("click", logout);
        window.addEventListener("online", () => {
            if (state.retryTimer && !state.loggingOut) {
                connect();          // the network is back: do not wait out the backoff
            }
        });
        $("jid").focus();
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
