"""Usernames that look alike (RFC 7622 §13.5; Unicode TR39 §4 skeletons).

RFC 7622 allows localparts in any script, so ``аlice`` (with U+0430 CYRILLIC
SMALL LETTER A) is a valid account distinct from ``alice``, and shown side by
side the two cannot be told apart: the RFC asks deployments to guard against
such look-alikes when accounts are made. ``skeleton`` maps a name to a form
in which confusable characters coincide: each character becomes the smallest
code point of its class of homoglyphs in the Unicode confusables data (so
ASCII wins: ``а`` and ``ａ`` both become ``a``).
Two names with the same skeleton are look-alikes. The data is Unicode's
confusables.txt as packaged by ``confusable_homoglyphs`` (MIT licence), a
dependency chosen because it ships that table and keeps it current, which is
better than a copy of our own.

Only characters that map to one character are used: the few multi-character
homoglyphs (``rn`` for ``m``) are left to the operator's eye.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from importlib import resources

__all__ = ["lookalike", "skeleton", "describe_difference"]


@functools.cache
def _representatives() -> dict[str, str]:
    """Character -> the smallest character of its confusable class.

    The packaged table lists, for each character, its homoglyphs, but not
    TR39's prototype for the class; the classes are rebuilt here as the
    connected components of that relation (union-find), so the mapping is the
    same for every member, as TR39's is."""
    raw = json.loads(resources.files("confusable_homoglyphs")
                     .joinpath("confusables.json").read_text(encoding="utf-8"))
    parent: dict[str, str] = {}

    def root(char: str) -> str:
        while parent.get(char, char) != char:
            parent[char] = parent.get(parent[char], parent[char])     # path halving
            char = parent[char]
        return char

    for char, glyphs in raw.items():
        for glyph in (g["c"] for g in glyphs):
            if len(char) == 1 and len(glyph) == 1:
                a, b = sorted((root(char), root(glyph)))
                parent[b] = a                                          # the smaller is root
    return {char: root(char) for char in parent if root(char) != char}


def skeleton(name: str) -> str:
    """``name`` with every character replaced by its confusable representative."""
    table = _representatives()
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(table.get(char, char) for char in folded)


def lookalike(name: str, existing) -> str | None:
    """The first of ``existing`` (other than ``name`` itself) that looks like ``name``."""
    target = skeleton(name)
    return next((other for other in existing if other != name and skeleton(other) == target),
                None)


def describe_difference(name: str, other: str) -> str:
    """The first character of ``name`` that differs from ``other``, named:
    "U+0430 CYRILLIC SMALL LETTER A where 'alice' has 'a'"."""
    for mine, theirs in zip(name, other):
        if mine != theirs:
            return (f"U+{ord(mine):04X} {unicodedata.name(mine, 'UNNAMED CHARACTER')} "
                    f"where {other!r} has {theirs!r}")
    return f"{name!r} and {other!r} differ only in length"
