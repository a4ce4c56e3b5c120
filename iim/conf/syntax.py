"""The iim.conf lexer: text in, parameter names and raw string values out.

Theory of operation
-------------------
1. Bytes are decoded as UTF-8 with ``surrogateescape`` after dropping a BOM.
   An invalid byte survives as a lone surrogate, so it can be blamed on its
   line later, once we know whether that line is a comment (a warning) or part
   of an entry (an error).  A NUL is an error wherever it is.
2. The text is cut into physical lines at LF, CR or CRLF, and nowhere else
   (``str.splitlines`` would also cut at form feeds and U+2028), so line
   numbers are the ones an editor shows.
3. A physical line is blank, a comment (first non-blank character ``!``) or
   the start of an entry ``key[;lang-xx] = value``.  The key runs to the first
   ``=`` or ``;``.  The value is read by `_ValueScanner`, which may pull in
   more physical lines: a ``\\`` that is the last non-blank character of a line
   continues the value on the next line, which is taken verbatim.  Inside
   double quotes the scanner also decodes the escapes ``\\" \\\\ \\n \\r \\t``
   and finds the closing quote.  A typographic closing quote (U+201D, U+2019)
   closes a value only when nothing but blanks follows it, so ``"it’s"`` is
   still one value; it is accepted with a warning.
4. Nothing raises.  Problems become `Diagnostic`s; an entry with an error is
   dropped and its key remembered as *broken*, so that the settings layer does
   not pile a second, confusing error on the same line.
5. Keys are lower-cased.  When a key appears twice the last value wins, with a
   warning naming both lines.  ``key;lang-fr`` goes to ``variants`` under the
   base key and the tag ``fr``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from iim.text import printable

from .diagnostics import ConfigError, Diagnostic, Severity, is_secret

__all__ = ["RawConfig", "RawValue", "Lexed", "lex", "lex_bytes", "parse_text", "split_lines"]

_BOM = "\ufeff"
_NEWLINE = re.compile(r"\r\n|\r|\n")
_HEAD_END = re.compile(r"[=;]")
_BAD_KEY_CHAR = re.compile(r"[\s\"“”]")
_LANG_TAG = re.compile(r"lang-([a-z0-9]+(?:-[a-z0-9]+)*)", re.IGNORECASE)
_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_TYPOGRAPHIC_CLOSE = "”’"
_OPEN_QUOTES = '"“'


@dataclass(frozen=True)
class RawValue:
    """A value as written (quotes and escapes already undone) and its line."""

    value: str
    line: int


@dataclass(frozen=True)
class RawConfig:
    """The syntax of one file: what each key was set to, before any typing."""

    entries: dict[str, RawValue] = field(default_factory=dict)
    variants: dict[str, dict[str, RawValue]] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)

    def get(self, key: str) -> RawValue | None:
        return self.entries.get(key.lower())

    def __repr__(self) -> str:   # values may be passwords: show where, never what
        shown = ", ".join(f"{k}@{v.line}" for k, v in self.entries.items())
        return f"RawConfig({shown})"


@dataclass(frozen=True)
class Lexed:
    """Everything the lexer found, errors included (they are not raised)."""

    raw: RawConfig
    errors: list[Diagnostic]
    broken: frozenset[str]


class _HeadError(Exception):
    """The part before the value cannot be read."""


def split_lines(text: str) -> list[str]:
    """Physical lines, cut at LF, CR or CRLF only."""
    return _NEWLINE.split(text)


def lex_bytes(data: bytes, path: str = "iim.conf") -> Lexed:
    """Lex a file's bytes; see the module docstring for how bytes are decoded."""
    if data.startswith(_BOM.encode()):
        data = data[3:]
    return lex(data.decode("utf-8", "surrogateescape"), path)


def lex(text: str, path: str = "iim.conf") -> Lexed:
    """Lex text; never raises."""
    lexer = _Lexer(split_lines(text.removeprefix(_BOM)), path)
    lexer.run()
    return lexer.result()


def parse_text(text: str, path: str = "iim.conf") -> RawConfig:
    """Syntax only: the raw entries of `text`, or ConfigError with every error."""
    lexed = lex(text, path)
    if lexed.errors:
        raise ConfigError(lexed.errors, lexed.raw.warnings)
    return lexed.raw


class _Lexer:
    """Walks the physical lines once, filling entries, variants and diagnostics."""

    def __init__(self, lines: list[str], path: str) -> None:
        self.lines = lines
        self.path = path
        self.entries: dict[str, RawValue] = {}
        self.variants: dict[str, dict[str, RawValue]] = {}
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.broken: set[str] = set()

    def result(self) -> Lexed:
        raw = RawConfig(self.entries, self.variants, self.warnings)
        return Lexed(raw, self.errors, frozenset(self.broken))

    def run(self) -> None:
        index = 0
        while index < len(self.lines):
            index = self._physical_line(index)

    def _physical_line(self, index: int) -> int:
        """Handle the line at `index`; return the index of the next unread line."""
        text = self.lines[index].lstrip()
        if not text:
            return index + 1
        if text.startswith("!"):
            self._check_chars(index, index, in_comment=True)
            return index + 1
        return self._entry(index)

    def _entry(self, index: int) -> int:
        try:
            key, lang, column = _split_head(self.lines[index])
        except _HeadError as problem:
            if self._check_chars(index, index, in_comment=False):
                self._diag(index + 1, None, str(problem))
            return index + 1
        scanner = _ValueScanner(self.lines, index, column, secret=is_secret(key))
        value = scanner.scan()
        if not self._check_chars(index, scanner.index, in_comment=False):
            self.broken.add(key.lower())
        elif self._accept(index, key, lang, scanner):
            self._store(key.lower(), lang, RawValue(value, index + 1))
        return scanner.index + 1

    def _accept(self, index: int, key: str, lang: str | None, scanner: _ValueScanner) -> bool:
        """Report head and value problems; True when the entry is usable."""
        if _key_problem(key):
            self._diag(index + 1, None, _key_problem(key))
            return False
        if _lang_problem(lang):
            self._diag(index + 1, key.lower(), _lang_problem(lang))
            return False
        param = _display_key(key, lang)
        for line, message, severity in scanner.problems:
            self._diag(line, param, message, severity)
        if any(severity is Severity.ERROR for _, _, severity in scanner.problems):
            self.broken.add(key.lower())
            return False
        return True

    def _store(self, key: str, lang: str | None, value: RawValue) -> None:
        table = self.entries if lang is None else self.variants.setdefault(key, {})
        slot = key if lang is None else _lang_code(lang)
        earlier = table.get(slot)
        if earlier is not None:
            message = f"set twice (lines {earlier.line} and {value.line}); the last one wins"
            self._diag(value.line, _display_key(key, lang), message, Severity.WARNING)
        table[slot] = value

    def _check_chars(self, first: int, last: int, *, in_comment: bool) -> bool:
        """Report NULs and undecodable bytes on lines first..last; True if clean."""
        clean = True
        for index in range(first, last + 1):
            problem = _char_problem(self.lines[index], in_comment)
            if problem is not None:
                message, severity = problem
                self._diag(index + 1, None, message, severity)
                clean = clean and severity is not Severity.ERROR
        return clean

    def _diag(self, line: int, param: str | None, message: str,
              severity: Severity = Severity.ERROR) -> None:
        found = Diagnostic(self.path, line, param, message, severity)
        (self.errors if severity is Severity.ERROR else self.warnings).append(found)


class _ValueScanner:
    """Reads the value that starts at ``lines[index][column:]``.

    After `scan`, `index` is the last physical line the value used and
    `problems` holds ``(line number, message, severity)`` tuples.
    """

    def __init__(self, lines: list[str], index: int, column: int, *, secret: bool) -> None:
        self.lines = lines
        self.index = index
        self.column = column
        self.secret = secret
        self.problems: list[tuple[int, str, Severity]] = []

    def scan(self) -> str:
        line = self.lines[self.index]
        rest = line[self.column:].lstrip()
        self.column = len(line) - len(rest)
        if rest and rest[0] in _OPEN_QUOTES:
            return self._quoted(rest[0])
        return self._unquoted(rest)

    def _unquoted(self, text: str) -> str:
        parts = []
        while True:
            text = text.rstrip()
            if not text.endswith("\\"):
                parts.append(text)
                return "".join(parts)
            parts.append(text[:-1])
            if not self._next_line():
                self._problem(self.index, "a \\ at the end of the file continues nothing")
                return "".join(parts)
            text = self.lines[self.index]

    def _quoted(self, opener: str) -> str:
        opened_on = self.index
        text, pos, out = self.lines[self.index], self.column + 1, []
        blank_from = len(text.rstrip())  # past this, only blanks are left
        while pos < len(text):
            char = text[pos]
            at_end = pos + 1 >= blank_from
            if char == "\\" and at_end:
                if not self._next_line():
                    break
                text, pos = self.lines[self.index], 0
                blank_from = len(text.rstrip())
            elif char == "\\":
                out.append(self._escape(text[pos + 1]))
                pos += 2
            elif _closes(opener, char, at_end):
                self._closed(opener, char, at_end)
                return "".join(out)
            else:
                out.append(char)
                pos += 1
        self._problem(opened_on, 'unterminated quoted value (no closing ")')
        return "".join(out)

    def _escape(self, char: str) -> str:
        if char in _UNESCAPE:
            return _UNESCAPE[char]
        shown = "" if self.secret else "\\" + printable(char, limit=None) + " "
        self._problem(self.index, f'invalid escape {shown}in a quoted value '
                                  f'(use \\", \\\\, \\n, \\r or \\t)')
        return char

    def _closed(self, opener: str, closer: str, at_end: bool) -> None:
        if not at_end:
            self._problem(self.index, "unexpected text after the closing quote")
        typographic = [q for q in (opener, closer) if q not in '"']
        if typographic:
            self._problem(self.index, _typographic_message(opener, closer), Severity.WARNING)

    def _next_line(self) -> bool:
        if self.index + 1 >= len(self.lines):
            return False
        self.index += 1
        return True

    def _problem(self, index: int, message: str, severity: Severity = Severity.ERROR) -> None:
        self.problems.append((index + 1, message, severity))


def _split_head(line: str) -> tuple[str, str | None, int]:
    """(key, language tag or None, column where the value starts)."""
    end = _HEAD_END.search(line)
    if end is None:
        raise _HeadError('expected "parameter = value", found no "="')
    key = line[:end.start()].strip()
    if end.group() == "=":
        return key, None, end.end()
    equals = line.find("=", end.end())
    if equals < 0:
        raise _HeadError('expected "parameter;lang-xx = value", found no "="')
    return key, line[end.end():equals].strip(), equals + 1


def _key_problem(key: str) -> str | None:
    if not key:
        return 'expected a parameter name before "="'
    if _BAD_KEY_CHAR.search(key):
        return "a parameter name cannot contain blanks or quotes"
    return None


def _lang_problem(lang: str | None) -> str | None:
    if lang is None or _LANG_TAG.fullmatch(lang):
        return None
    return f'expected a language variant like ";lang-fr", got ";{printable(lang[:40], limit=None)}"'


def _lang_code(lang: str) -> str:
    return lang[len("lang-"):].lower()


def _display_key(key: str, lang: str | None) -> str:
    return key.lower() if lang is None else f"{key.lower()};lang-{_lang_code(lang)}"


def _closes(opener: str, char: str, at_end: bool) -> bool:
    """Does `char` end a value opened by `opener`?  `at_end`: only blanks follow."""
    if char == '"' or (opener == "“" and char == "”"):
        return True
    return char in _TYPOGRAPHIC_CLOSE and at_end


def _typographic_message(opener: str, closer: str) -> str:
    if opener == '"':
        return f'value closes with a typographic quote ({closer}) instead of "'
    if closer == '"':
        return f'value opens with a typographic quote ({opener}) instead of "'
    return f'value is quoted with typographic quotes ({opener} {closer}) instead of "'


def _char_problem(line: str, in_comment: bool) -> tuple[str, Severity] | None:
    """A NUL or undecodable byte on `line`, as (message, severity)."""
    if "\0" in line:
        return "NUL character; iim.conf must be plain text", Severity.ERROR
    bad = next((c for c in line if 0xD800 <= ord(c) <= 0xDFFF), None)
    if bad is None:
        return None
    what = _undecodable(bad)
    if in_comment:
        return f"comment is not valid UTF-8 ({what})", Severity.WARNING
    return f"not valid UTF-8 ({what}); save the file as UTF-8", Severity.ERROR


def _undecodable(char: str) -> str:
    code = ord(char)
    return f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"

