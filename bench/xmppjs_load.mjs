// Load from a client nobody here wrote: xmpp.js (@xmpp/client, installed by ./dev setup
// into .venv/node) under Node, for bench/web_side_by_side.py.
//
//   node --experimental-websocket xmppjs_load.mjs SERVICE DOMAIN PREFIX PASSWORD USERS PAIRS MESSAGES WINDOW
//
// SERVICE is wss://host:port/path (RFC 7395) or xmpp://host:port (TCP, STARTTLS).
// Logs in USERS users PREFIX0..PREFIX{USERS-1} (SASL PLAIN over TLS, bind),
// each sends initial presence; reports {"event": "online", "users": N, "seconds": s}.
// On "go" on stdin: PAIRS senders (users 0, 2, 4, ...) each send MESSAGES / PAIRS chat
// messages to the next user, at most WINDOW of them not yet received at once; reports
// {"event": "done", "messages": M, "seconds": s} when every message has arrived.
// On "quit" (or the end of stdin): every client goes offline, exit 0. Errors:
// {"event": "error", ...}, exit 1. The CA comes from NODE_EXTRA_CA_CERTS.

import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(process.env.XMPPJS_MODULES, "noop.js"));
const { client, xml } = require("@xmpp/client");

const [service, domain, prefix, password] = process.argv.slice(2, 6);
const [users, pairs, messages, window] = process.argv.slice(6, 10).map(Number);
const report = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const fail = (err) => {
  report({ event: "error", message: String(err && (err.condition || err.message || err)) });
  process.exit(1);
};
const CONCURRENT_LOGINS = 20;

const clients = [];
const received = [];                            // per receiver: a callback per message

async function login(i) {
  // PLAIN over TLS when offered (both servers offer it): the bench is about
  // sessions and messages, not about PBKDF2 in JavaScript
  const credentials = { username: `${prefix}${i}`, password };
  const xmpp = client({
    service, domain, resource: "load", timeout: 60000,
    credentials: (authenticate, mechanisms) =>
      authenticate(credentials, mechanisms.includes("PLAIN") ? "PLAIN" : mechanisms[0]),
  });
  xmpp.reconnect.stop();
  xmpp.on("error", fail);
  xmpp.on("stanza", (stanza) => {
    if (stanza.is("message") && received[i]) received[i]();
  });
  await xmpp.start();
  await xmpp.send(xml("presence"));
  clients[i] = xmpp;
}

async function pair(k, count) {
  const sender = clients[2 * k], to = `${prefix}${2 * k + 1}@${domain}/load`;
  let sent = 0, got = 0, inFlight = 0;
  await new Promise((resolve, reject) => {
    const pump = () => {
      while (inFlight < window && sent < count) {
        inFlight += 1;
        sender.send(xml("message", { to, type: "chat", id: `m${sent}` },
                        xml("body", {}, `message ${sent} of pair ${k}`))).catch(reject);
        sent += 1;
      }
    };
    received[2 * k + 1] = () => {
      got += 1;
      inFlight -= 1;
      if (got === count) resolve();
      else pump();
    };
    pump();
  });
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
try {
  const began = performance.now();
  for (let i = 0; i < users; i += CONCURRENT_LOGINS) {
    const batch = [];
    for (let j = i; j < Math.min(users, i + CONCURRENT_LOGINS); j++) batch.push(login(j));
    await Promise.all(batch);
  }
  report({ event: "online", users, seconds: (performance.now() - began) / 1000 });
  for (;;) {
    const { value, done } = await lines.next();
    if (done || value.trim() === "quit") break;
    if (value.trim() !== "go") continue;
    const start = performance.now(), each = Math.floor(messages / pairs);
    await Promise.all(Array.from({ length: pairs }, (_, k) => pair(k, each)));
    report({ event: "done", messages: each * pairs,
             seconds: (performance.now() - start) / 1000 });
  }
  await Promise.all(clients.map((xmpp) => xmpp.stop().catch(() => {})));
  process.exit(0);
} catch (err) {
  fail(err);
}
