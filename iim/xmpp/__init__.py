"""The sans-I/O XMPP core (RFC 6120, RFC 6121, RFC 7622).

Everything under ``iim.xmpp`` is pure protocol logic: it takes bytes and
returns events and bytes. It never imports asyncio, socket or ssl I/O, and it
never reads a clock; the adapters in ``iim.server`` move the bytes.

- ``jid``     JIDs: parsing, preparation and comparison (RFC 7622).
- ``errors``  stream and stanza error conditions as enums, and the exceptions
              that carry them (RFC 6120 §4.9, §8.3).
- ``xml``     the incremental restricted-XML stream parser and the stanza
              serializer (RFC 6120 §4, §11).
"""
