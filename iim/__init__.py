"""iim: an XMPP server and a Cython epoll multiplexor, secured with TLS."""

__version__ = "0.1.0"
