/* The lock icon of the iim web client (issue 15).
 *
 * The lock is closed only when all three hold:
 *   1. this page came over HTTPS (location.protocol),
 *   2. the XMPP connection is TLS (a wss: WebSocket or an https: BOSH URL), and
 *   3. the server confirms it: asked with the security query
 *      (urn:xmpp:iim:security:0, docs/web-client.md), it answers secure='true'
 *      about this very session, and the session's outer layer is the gateway's
 *      HTTPS, ended by the server itself.
 * A browser does not tell a page which TLS version or certificate its own
 * connection uses; the server's answer does, and the panel shows it, as
 * `iim.admin verify` does for a desktop client: TLS version, cipher,
 * certificate subject, issuer, expiry, and where TLS ends.
 *
 * This file only judges and draws; im.js asks the server and calls
 * IimLock.show(...).
 */
"use strict";

const IimLock = (() => {
    const NS = "urn:xmpp:iim:security:0";

    /* The <security/> element of a result IQ -> a plain object. */
    function parseAnswer(iq) {
        const security = iq.getElementsByTagNameNS(NS, "security")[0];
        if (!security) {
            return null;
        }
        const layers = Array.from(security.getElementsByTagNameNS(NS, "tls"), (tls) => {
            const cert = tls.getElementsByTagNameNS(NS, "certificate")[0];
            return {
                layer: tls.getAttribute("layer") || "",
                ends: tls.getAttribute("ends") || "",
                version: tls.getAttribute("version") || "",
                cipher: tls.getAttribute("cipher") || "",
                bits: tls.getAttribute("bits") || "0",
                certificate: cert ? {
                    subject: cert.getAttribute("subject") || "",
                    issuer: cert.getAttribute("issuer") || "",
                    notAfter: cert.getAttribute("not-after") || "",
                } : null,
            };
        });
        return {secure: security.getAttribute("secure") === "true", layers,
                undescribed: security.getElementsByTagNameNS(NS, "undescribed").length > 0};
    }

    /* What the page can see of its own transport. */
    function pageFacts(serviceUrl) {
        const url = new URL(serviceUrl, location.href);
        return {
            pageTls: location.protocol === "https:",
            transportTls: url.protocol === "wss:" || url.protocol === "https:",
            transport: url.protocol.startsWith("ws") ? "WebSocket" : "BOSH",
            serviceUrl: url.href,
        };
    }

    /* -> {secure, reasons[]}: reasons say why the lock is open. */
    function verdict(page, answer) {
        const reasons = [];
        if (!page.pageTls) {
            reasons.push("this page was loaded over plain HTTP: anyone on the network " +
                         "can read or change it, and your password with it");
        }
        if (!page.transportTls) {
            reasons.push(`the ${page.transport} connection to the server is not encrypted`);
        }
        if (answer === undefined) {
            reasons.push("the server has not confirmed the session yet");
        } else if (answer === null) {
            reasons.push("the server did not answer the security query");
        } else if (answer.undescribed) {
            reasons.push("the server cannot say how this session's connection is protected");
        } else if (!answer.secure) {
            reasons.push("the server says this session is not encrypted");
        } else if (!answer.layers.length || answer.layers[0].layer !== "https" ||
                   answer.layers[0].ends !== "server") {
            reasons.push("the server does not confirm that TLS runs from this browser to it");
        }
        return {secure: reasons.length === 0, reasons};
    }

    function endsText(layer) {
        if (layer.ends === "server") {
            return layer.layer === "https"
                ? "at the iim server (its web gateway, in the server process)"
                : "at the iim server";
        }
        if (layer.ends === "multiplexor") {
            return "at the multiplexor, which relays to the server over its link";
        }
        return layer.ends;
    }

    const LAYER_NAMES = {https: "HTTPS (WebSocket/BOSH)", starttls: "STARTTLS",
                         "legacy-ssl": "legacy SSL"};

    function factRows(page, answer) {
        const rows = [
            ["Page", page.pageTls ? `HTTPS (${location.host})` : `plain HTTP (${location.host})`],
            ["Connection", `${page.transport}, ${page.serviceUrl}`],
        ];
        if (!answer) {
            return rows;
        }
        if (answer.undescribed) {
            rows.push(["TLS", "not described: the server knows the connection is protected " +
                              "but not how (TLS version, cipher, certificate)"]);
        } else if (!answer.layers.length) {
            rows.push(["TLS", "none: the server says this session is not encrypted"]);
        }
        for (const layer of answer.layers) {
            const name = LAYER_NAMES[layer.layer] || layer.layer;
            rows.push(["TLS", `${name}: ${layer.version}, cipher ${layer.cipher}` +
                              (layer.bits !== "0" ? ` (${layer.bits} bits)` : "")]);
            rows.push(["TLS ends", endsText(layer)]);
            if (layer.certificate) {
                rows.push(["Certificate", layer.certificate.subject]);
                rows.push(["Issuer", layer.certificate.issuer]);
                rows.push(["Expires", layer.certificate.notAfter]);
            }
        }
        return rows;
    }

    /* Draw the icon and fill the panel. `answer`: undefined (not asked yet),
     * null (no answer), or parseAnswer's object. */
    function show(serviceUrl, answer) {
        const page = pageFacts(serviceUrl);
        const judged = verdict(page, answer);
        const button = document.getElementById("lock");
        button.classList.toggle("closed", judged.secure);
        button.classList.toggle("open", !judged.secure);
        const word = judged.secure ? "secure" : "not secure";
        document.getElementById("lock-text").textContent = word;
        button.setAttribute("aria-label", `Connection security: ${word}. Show details.`);
        document.getElementById("lock-summary").textContent = judged.secure
            ? "Secure: the page, the connection and the server all confirm TLS."
            : "Not secure: " + judged.reasons.join("; ") + ".";
        const list = document.getElementById("lock-facts");
        list.replaceChildren();
        for (const [label, text] of factRows(page, answer)) {
            const dt = document.createElement("dt");
            dt.textContent = label;
            const dd = document.createElement("dd");
            dd.textContent = text;
            list.append(dt, dd);
        }
        return judged;
    }

    /* The page-level warning shown before login when the page is plain HTTP. */
    function plainWarning() {
        if (location.protocol === "https:") {
            return null;
        }
        return "This page came over plain HTTP, so the lock is open: the page, your password " +
               "exchange and your messages cross the network unencrypted and could be read " +
               "or changed. Use the https:// address if the server has one.";
    }

    function bindPanel() {
        const button = document.getElementById("lock");
        const panel = document.getElementById("lock-panel");
        const close = () => {
            panel.hidden = true;
            button.setAttribute("aria-expanded", "false");
            button.focus();
        };
        button.addEventListener("click", () => {
            const opening = panel.hidden;
            panel.hidden = !opening;
            button.setAttribute("aria-expanded", String(opening));
            if (opening) {
                document.getElementById("lock-close").focus();
            }
        });
        document.getElementById("lock-close").addEventListener("click", close);
        panel.addEventListener("keydown", (event) => {
            if (event.key === "Escape") {
                close();
            }
        });
    }

    return {NS, parseAnswer, pageFacts, verdict, show, plainWarning, bindPanel};
})();
