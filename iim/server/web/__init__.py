"""The XMPP/HTTP gateway (issue 15): XMPP over WebSocket (RFC 7395) and BOSH
(XEP-0124/0206) on ``iim_server.httpport``, the web client's static files and
XEP-0156 discovery. See app.py for the listener and the policies, framing.py
for how the web framings meet the TCP stream the XMPP core reads."""
