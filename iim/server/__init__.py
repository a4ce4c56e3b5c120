"""The server's asyncio side: listeners, sessions, routing, federation, storage.

Everything here moves bytes and state around the sans-I/O core in
``iim.xmpp``; imports run one way, ``iim.xmpp`` never imports from here.

- ``storage``  accounts (SCRAM credentials only), rosters and offline
               messages in SQLite.
"""
