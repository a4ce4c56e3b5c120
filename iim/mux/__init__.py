"""The multiplexor (``python -m iim.mux``): many client connections, few server links.

* :mod:`iim.mux.supervisor` - starts ``iim_mux.numinstances`` worker
  processes and restarts any that dies; passes SIGTERM/SIGHUP on.
* :mod:`iim.mux.worker` - one process: ``iim_mux.maxthreads`` relay threads,
  each with its own SO_REUSEPORT listener and its own server link,
  reconnecting with backoff; statistics every ``iim_mux.stat_frequency`` s.
* :mod:`iim.mux.link` - the link set-up (HELLO, CHALLENGE, AUTH, READY) of
  docs/muxlink.md, before the socket is handed to the relay core.
* :mod:`iim.mux.tls` - legacy-SSL key material: NSS database -> in-memory PEM
  -> ``iim._fastmux.TlsContext``.

The bytes themselves are moved by the compiled relay core ``iim._fastmux``
(epoll, without the GIL); nothing in this package knows about epoll, and
nothing in the core knows about XMPP.
"""
