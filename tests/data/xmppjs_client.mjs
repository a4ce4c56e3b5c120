// An XMPP client nobody here wrote: xmpp.js (@xmpp/client, pinned by ./dev setup
// into .venv/node) under Node, over WebSocket (RFC 7395) only.
//
//   node --experimental-websocket xmppjs_client.mjs SERVICE DOMAIN USER PASSWORD PEER BODY
//
// Logs in at SERVICE (wss://host:port/ws), sends initial presence, reports
// {"event": "online", "jid": ...}, then waits for a chat message from PEER's
// bare JID, reports {"event": "message", "from": ..., "body": ...}, answers it
// with BODY, reports {"event": "sent"} and goes offline. Every report is one
// JSON line on stdout; an error is {"event": "error", ...} and exit code 1.
// The CA to trust comes from NODE_EXTRA_CA_CERTS (Node's TLS reads it at start).

import { createRequire } from "node:module";
import path from "node:path";

const modules = process.env.XMPPJS_MODULES;     // .venv/node/node_modules
const require = createRequire(path.join(modules, "noop.js"));
const { client, xml } = require("@xmpp/client");

const [service, domain, username, password, peer, answer] = process.argv.slice(2);
const report = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

const xmpp = client({ service, domain, username, password, resource: "xmppjs" });
xmpp.reconnect.stop();                          // one try: the test judges it

xmpp.on("error", (err) => {
  report({ event: "error", message: String(err && (err.condition || err.message || err)) });
  process.exit(1);
});

xmpp.on("online", async (address) => {
  await xmpp.send(xml("presence"));
  report({ event: "online", jid: address.toString() });
});

xmpp.on("stanza", async (stanza) => {
  if (!stanza.is("message") || !stanza.getChildText("body")) return;
  const from = stanza.attrs.from || "";
  if (from.split("/")[0] !== peer) return;
  report({ event: "message", from, body: stanza.getChildText("body") });
  await xmpp.send(xml("message", { to: from, type: "chat", id: "xmppjs-1" },
                      xml("body", {}, answer)));
  report({ event: "sent" });
  await xmpp.stop();
  process.exit(0);
});

xmpp.start().catch((err) => {
  report({ event: "error", message: String(err && (err.condition || err.message || err)) });
  process.exit(1);
});
