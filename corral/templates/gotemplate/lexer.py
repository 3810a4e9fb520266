"""Go text/template lexer (the subset Ollama TEMPLATEs use).

Owns turning template source into tokens: delimiters, ``{{-``/``-}}`` trim
markers, comments, literals, fields and variables, plus Go's quoted-string
and number literal rules. The parser is :mod:`.parser`; the node tree
:mod:`.nodes`.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass
from typing import Any

from corral.templates.gotemplate.nodes import TemplateError

log = logging.getLogger(__name__)

SPACE = " \t\r\n"
KEYWORDS = frozenset({"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"})
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[oO][0-7_]*|0[bB][01_]*"
    r"|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]+)?)i?"
)
_PUNCT = {"=": "assign", "|": "pipe", "(": "lparen", ")": "rparen", ",": "comma"}
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


@dataclass(slots=True)
class _Marker:
    """``{{end}}`` / ``{{else}}`` while parsing; never part of the tree."""

    kind: str
    line: int


# ---------------------------------------------------------------- lexer


@dataclass(slots=True)
class Token:
    kind: str  # text ldelim rdelim space field dot var ident keyword bool nil string number
    val: Any  # lparen rparen pipe declare assign comma char eof
    line: int


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.n = len(src)
        self.newlines = [i for i, c in enumerate(src) if c == "\n"]
        self.toks: list[Token] = []

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def error(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(msg, self.line(pos))

    def emit(self, kind: str, val: Any, pos: int) -> None:
        self.toks.append(Token(kind, val, self.line(pos)))

    def run(self) -> list[Token]:
        src, n, pos, trim_next = self.src, self.n, 0, False
        while True:
            i = src.find("{{", pos)
            end = n if i < 0 else i
            start = pos
            text = src[pos:end]
            if trim_next:
                stripped = text.lstrip(SPACE)
                start += len(text) - len(stripped)
                text = stripped
            trim_left = i >= 0 and src.startswith("-", i + 2) and i + 3 < n and src[i + 3] in SPACE
            if trim_left:
                text = text.rstrip(SPACE)
            if text:
                self.emit("text", text, start)
            if i < 0:
                break
            j = i + 2 + (2 if trim_left else 0)
            if src.startswith("/*", j):
                pos, trim_next = self._comment(i, j)
                continue
            self.emit("ldelim", "{{", i)
            pos, trim_next = self._action(j)
        self.emit("eof", None, n)
        return self.toks

    def _right_delim(self, p: int) -> int:
        """0: not at a right delimiter; 2: at ``}}``; 4: at `` -}}``."""
        if self.src.startswith("}}", p):
            return 2
        if p < self.n and self.src[p] in SPACE and self.src.startswith("-}}", p + 1):
            return 4
        return 0

    def _comment(self, start: int, j: int) -> tuple[int, bool]:
        k = self.src.find("*/", j + 2)
        if k < 0:
            raise self.error(start, "unclosed comment")
        width = self._right_delim(k + 2)
        if not width:
            raise self.error(k, "comment ends before closing delimiter")
        return k + 2 + width, width == 4

    def _action(self, p: int) -> tuple[int, bool]:
        src, n, depth = self.src, self.n, 0
        while True:
            if p >= n:
                raise self.error(p, "unclosed action")
            width = self._right_delim(p)
            if width:
                if depth:
                    raise self.error(p, "unclosed left paren")
                self.emit("rdelim", "}}", p)
                return p + width, width == 4
            c = src[p]
            if c in SPACE:
                q = p
                while q < n and src[q] in SPACE:
                    q += 1
                if src.startswith("-}}", q):
                    q -= 1  # that space belongs to the " -}}" trim marker
                self.emit("space", " ", p)
                p = q
                continue
            if c in _PUNCT:
                depth += {"(": 1, ")": -1}.get(c, 0)
                if depth < 0:
                    raise self.error(p, "unexpected right paren")
                self.emit(_PUNCT[c], c, p)
                p += 1
            elif c == ":":
                if not src.startswith(":=", p):
                    raise self.error(p, "expected :=")
                self.emit("declare", ":=", p)
                p += 2
            elif c in "\"'":
                p = self._quoted(p, c)
            elif c == "`":
                k = src.find("`", p + 1)
                if k < 0:
                    raise self.error(p, "unterminated raw quoted string")
                self.emit("string", src[p + 1 : k], p)
                p = k + 1
            elif c == "$":
                m = _WORD.match(src, p + 1)
                name = "$" + (m.group() if m else "")
                self.emit("var", name, p)
                p = self._terminated(p + len(name))
            elif c == "." and not (p + 1 < n and src[p + 1].isdigit()):
                m = _WORD.match(src, p + 1)
                if m:
                    self.emit("field", m.group(), p)
                    p = self._terminated(m.end())
                else:
                    self.emit("dot", ".", p)
                    p += 1
            elif c in "+-." or c.isdigit():
                m = _NUMBER.match(src, p)
                end = m.end() if m else p
                if end == p or (end < n and (src[end].isalnum() or src[end] == "_")):
                    raise self.error(p, f"bad number syntax: {src[p : end + 1]!r}")
                self.emit("number", src[p:end], p)
                p = end
            elif c.isalpha() or c == "_":
                m = _WORD.match(src, p)
                assert m is not None
                word = m.group()
                kind = (
                    "bool"
                    if word in ("true", "false")
                    else "nil"
                    if word == "nil"
                    else "keyword"
                    if word in KEYWORDS
                    else "ident"
                )
                self.emit(kind, word, p)
                p = self._terminated(m.end())
            elif c.isascii() and c.isprintable():
                self.emit("char", c, p)
                p += 1
            else:
                raise self.error(p, f"unrecognized character in action: {c!r}")

    def _terminated(self, p: int) -> int:
        if p >= self.n or self.src[p] in SPACE or self.src[p] in ".,|:()" or self._right_delim(p):
            return p
        raise self.error(p, f"bad character {self.src[p]!r}")

    def _quoted(self, p: int, quote: str) -> int:
        """An interpreted string ("...") or a rune constant ('x')."""
        src, q = self.src, p + 1
        while q < self.n and src[q] not in quote + "\n":
            q += 2 if src[q] == "\\" else 1
        if q >= self.n or src[q] != quote:
            raise self.error(p, "unterminated quoted string" if quote == '"' else "unterminated character constant")
        try:
            value = unquote_go(src[p + 1 : q], quote)
        except ValueError as exc:
            raise self.error(p, str(exc)) from None
        if quote == "'" and len(value) != 1:
            raise self.error(p, f"malformed character constant: {src[p : q + 1]}")
        self.emit("string" if quote == '"' else "number", value if quote == '"' else src[p : q + 1], p)
        return q + 1


def unquote_go(body: str, quote: str) -> str:
    """Decode the escapes of a Go interpreted string (or rune) literal body."""
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("invalid syntax")
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e].encode()
            i += 2
        elif e == quote:
            out += e.encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError("invalid syntax")
            value = int(digits, 16)
            if e == "x":
                out.append(value)
            else:
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    raise ValueError("invalid syntax")
                out += chr(value).encode("utf-8")
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(ch in "01234567" for ch in digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape sequence: \\{e}")
    return out.decode("utf-8", errors="replace")


def parse_number(text: str) -> int | float:
    """Convert a Go template number literal (or rune constant) to int or float."""
    if text.startswith("'"):
        return ord(unquote_go(text[1:-1], "'"))
    if text.endswith("i"):
        raise ValueError(f"complex numbers are not supported: {text}")
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    lower = body.lower()
    if lower.startswith(("0x", "0o", "0b")):
        if lower.startswith("0x") and any(ch in lower for ch in ".p"):
            return sign * float.fromhex(body.replace("_", ""))
        return sign * int(body, 0)
    if re.fullmatch(r"0[0-9_]+", body):
        return sign * int(body.replace("_", ""), 8)  # ValueError for 08, as Go rejects it
    if re.fullmatch(r"[0-9][0-9_]*", body):
        return sign * int(body.replace("_", ""))
    return sign * float(body.replace("_", ""))
