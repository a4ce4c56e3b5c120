"""The one exception key-material code raises for things a user can cause."""


class KeyMaterialError(Exception):
    """A keystore, NSS database or password file cannot be used.

    The message is one line, names the file (and parameter when known) and
    says what to do. It never contains a password or key bytes.
    """
