"""A real TLS handshake on 127.0.0.1: our server context, a verifying client."""

from __future__ import annotations

import socket
import ssl
import threading

from cryptography import x509


def handshake(server_ctx: ssl.SSLContext, ca_pem: bytes, hostname: str, *, alpn=None):
    """Run one handshake; return (leaf certificate the client saw, TLS version).

    The client trusts only ``ca_pem`` and checks ``hostname``, as a user's
    client would. Raises ssl.SSLError when verification fails.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    errors = []

    def serve():
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    if alpn:
        client_ctx.set_alpn_protocols(alpn)
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
            tls.sendall(b"x")
    finally:
        thread.join(10)
        listener.close()
    return x509.load_der_x509_certificate(der), version
