"""Modelfile parsing and rendering (Ollama's Modelfile syntax).

Owns :func:`parse` (text -> :class:`Modelfile`), the typed parameter table
:data:`OPTION_TYPES` (Ollama's ``api.Options``), and :func:`render_modelfile`,
which writes Modelfile text in the style of ``ollama show --modelfile`` that
parses back to the same :class:`Modelfile`.

Syntax: one instruction per line, case-insensitive (``FROM``, ``PARAMETER``,
``TEMPLATE``, ``SYSTEM``, ``ADAPTER``, ``LICENSE``, ``MESSAGE``, plus Ollama's
newer ``DRAFT``, ``RENDERER``, ``PARSER``, ``REQUIRES``); ``#`` starts a
comment line. A value is the rest of the line (trimmed), a ``"..."`` string
(may span lines; ``\\"`` and ``\\\\`` are its only escapes, any other backslash
is kept as written, as Ollama keeps it) or a ``\"\"\"...\"\"\"`` block taken verbatim.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral import options

log = logging.getLogger(__name__)

# One table of options for requests, Modelfiles and params layers.
OPTION_TYPES = options.OPTION_TYPES

# Accepted with a warning and dropped, as current Ollama does.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "numa",
        "tfs_z",
    }
)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
_SINGLE = ("template", "system", "draft", "renderer", "parser", "requires")
INSTRUCTIONS = frozenset({"from", "parameter", "adapter", "license", "message", *_SINGLE})
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_]+")
_ROLE = re.compile(r"[A-Za-z]+")
_TOKEN = re.compile(r"\S+")


class ModelfileError(ValueError):
    """A Modelfile could not be parsed; ``line`` is 1-based (0 when no line applies)."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.reason = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line > 0 else message)


@dataclass
class Modelfile:
    """A parsed Modelfile. ``parameters`` are typed per :data:`OPTION_TYPES`."""

    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    draft: str | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None

    def render(self, name: str | None = None) -> str:
        """Modelfile text for this model (see :func:`render_modelfile`)."""
        return render_modelfile(
            self.from_,
            self.parameters,
            self.template,
            self.system,
            self.license,
            self.messages,
            self.adapters,
            name=name,
            draft=self.draft,
            renderer=self.renderer,
            parser=self.parser,
            requires=self.requires,
        )


# ---------------------------------------------------------------- values


def convert_parameter(name: str, raw: str, line: int = 0) -> Any:
    """Convert one PARAMETER value string to its Ollama type (``stop`` stays a string)."""
    want = OPTION_TYPES.get(name)
    if want is None:
        raise ModelfileError(f'unknown parameter "{name}"', line)
    value = raw.strip()
    if want is int and _INT.fullmatch(value):
        return int(value)
    if want is float and _FLOAT.fullmatch(value):
        return float(value)
    if want is bool and (value in _TRUE or value in _FALSE):
        return value in _TRUE
    if want is list:
        return raw
    kind = {int: "integer", float: "number", bool: "boolean"}[want]
    raise ModelfileError(f'invalid value for parameter "{name}": {raw!r} is not a valid {kind}', line)


class _Reader:
    """Cursor over the Modelfile text that tracks the line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def advance(self, end: int) -> None:
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def eol(self, start: int) -> int:
        end = self.text.find("\n", start)
        return len(self.text) if end < 0 else end

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def word(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.text, self.pos)
        if not m:
            return ""
        self.pos = m.end()
        return m.group()

    def value(self, what: str) -> str:
        """Read a value: ``\"\"\"block\"\"\"``, ``"string"`` or the rest of the line."""
        text, start, line = self.text, self.pos, self.line
        if text.startswith('"""', start):
            search = start + 3
            while True:
                close = text.find('"""', search)
                if close < 0:
                    raise ModelfileError(f'unterminated """ in {what}', line)
                end = self.eol(close + 3)
                if not text[close + 3 : end].strip(" \t"):
                    break
                search = close + 1
            value = text[start + 3 : close]
        elif text.startswith('"', start):
            out, i = [], start + 1
            while True:
                if i >= len(text):
                    raise ModelfileError(f"unterminated quoted string in {what}", line)
                c = text[i]
                if c == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
                    out.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    break
                out.append(c)
                i += 1
            end = self.eol(i + 1)
            if text[i + 1 : end].strip(" \t"):
                raise ModelfileError(
                    f"unexpected text after the closing quote of {what}", line + text.count("\n", start, i)
                )
            value = "".join(out)
        else:
            end = self.eol(start)
            value = text[start:end].strip(" \t")
            if not value:
                raise ModelfileError(f"missing value for {what}", line)
        self.advance(end)
        return value


def parse(text: str) -> Modelfile:
    """Parse Modelfile text; raise :class:`ModelfileError` naming the line on any problem."""
    reader = _Reader(text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n"))
    src = reader.text
    from_: str | None = None
    mf = Modelfile(from_="")
    while reader.pos < len(src):
        c = src[reader.pos]
        if c in " \t":
            reader.pos += 1
            continue
        if c == "\n":
            reader.advance(reader.pos + 1)
            continue
        if c == "#":
            reader.advance(reader.eol(reader.pos))
            continue
        token = _TOKEN.match(src, reader.pos)
        assert token is not None
        word = token.group()
        instr = word.lower()
        if instr not in INSTRUCTIONS:
            raise ModelfileError(f'unknown instruction "{word}"', reader.line)
        reader.pos = token.end()
        if reader.pos >= len(src) or src[reader.pos] not in " \t":
            raise ModelfileError(f"missing value for {word.upper()}", reader.line)
        reader.skip_blanks()
        line = reader.line
        if instr == "parameter":
            name = reader.word(_NAME).lower()
            if not name or reader.pos >= len(src) or src[reader.pos] not in " \t":
                raise ModelfileError("PARAMETER needs a name and a value", line)
            reader.skip_blanks()
            raw = reader.value(f"PARAMETER {name}")
            if name in DEPRECATED_PARAMETERS:
                log.warning("Modelfile line %d: parameter %s is deprecated and ignored", line, name)
                continue
            value = convert_parameter(name, raw, line)
            if OPTION_TYPES[name] is list:
                mf.parameters.setdefault(name, []).append(value)
            else:
                mf.parameters[name] = value
        elif instr == "message":
            role = reader.word(_ROLE)
            if role.lower() not in MESSAGE_ROLES:
                raise ModelfileError(f'invalid MESSAGE role "{role}" (must be one of {", ".join(MESSAGE_ROLES)})', line)
            if reader.pos >= len(src) or src[reader.pos] not in " \t":
                raise ModelfileError("MESSAGE needs a role and a content", line)
            reader.skip_blanks()
            mf.messages.append({"role": role.lower(), "content": reader.value("MESSAGE")})
        else:
            value = reader.value(word.upper())
            if instr == "from":
                if not value:
                    raise ModelfileError("missing value for FROM", line)
                from_ = value
            elif instr == "adapter":
                mf.adapters.append(value)
            elif instr == "license":
                mf.license.append(value)
            else:
                setattr(mf, instr, value)
    if from_ is None:
        raise ModelfileError("no FROM line")
    mf.from_ = from_
    return mf


# ---------------------------------------------------------------- rendering


def quote(value: str) -> str:
    """Quote a value so :func:`parse` reads it back unchanged (bare when that is safe)."""
    if value and "\n" not in value and value == value.strip(" \t") and not value.startswith('"'):
        return value
    if '"""' not in value:
        return f'"""{value}"""'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_parameter(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def render_modelfile(
    from_: str,
    parameters: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    license: str | Iterable[str] | None = None,
    messages: Iterable[Mapping[str, Any]] | None = None,
    adapters: Iterable[str] | None = None,
    *,
    name: str | None = None,
    draft: str | None = None,
    renderer: str | None = None,
    parser: str | None = None,
    requires: str | None = None,
) -> str:
    """Modelfile text as ``ollama show --modelfile`` lays it out (header comments, then instructions)."""
    lines = ['# Modelfile generated by "corral show"']
    if name:
        lines += ["# To build a new Modelfile based on this, replace FROM with:", f"# FROM {name}", ""]
    lines.append(f"FROM {quote(from_)}")
    lines += [f"ADAPTER {quote(a)}" for a in adapters or ()]
    for instr, value in (
        ("DRAFT", draft),
        ("TEMPLATE", template),
        ("SYSTEM", system),
        ("RENDERER", renderer),
        ("PARSER", parser),
        ("REQUIRES", requires),
    ):
        if value is not None:
            lines.append(f"{instr} {quote(value)}")
    for key, value in (parameters or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        lines += [f"PARAMETER {key} {quote(format_parameter(v))}" for v in values]
    licenses = [license] if isinstance(license, str) else list(license or ())
    lines += [f"LICENSE {quote(text)}" for text in licenses]
    lines += [f"MESSAGE {m['role']} {quote(str(m.get('content') or ''))}" for m in messages or ()]
    return "\n".join(lines) + "\n"
