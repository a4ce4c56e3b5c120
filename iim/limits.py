"""Process limits iim raises for itself (never rely on the shell's ulimit)."""

from __future__ import annotations

import resource


def raise_nofile() -> tuple[int, int]:
    """Raise the open-files soft limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard
