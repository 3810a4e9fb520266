"""Go text/template execution: builtin functions and the tree walker.

Owns how a node tree from :mod:`corral.templates.gotemplate.lexer` is executed; how
values print is :mod:`corral.templates.gotemplate.fmt`. Python data as Go values: ``dict`` is a Go map
(range/print in sorted key order; one with ``go_ordered = True`` keeps insertion order),
``list``/``tuple`` a slice, ``None`` nil or a missing key (an action prints it
as ``<no value>``), dataclasses and other objects are structs (public
attributes are fields, methods can be called); ``__go_string__`` is Go's
``String()``. Builtins: and or not eq ne lt le gt ge len index slice print
printf println html urlquery.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corral.templates.gotemplate.fmt import (
    GO_TYPES,
    go_print,
    go_sprint,
    go_sprintf,
    go_type_name,
    is_true,
    print_action,
    sorted_items,
)
from corral.templates.gotemplate.nodes import (
    ActionNode,
    BranchNode,
    ChainNode,
    FieldNode,
    IdentifierNode,
    ListNode,
    LiteralNode,
    LoopControlNode,
    Node,
    PipeNode,
    TemplateError,
    TextNode,
    VariableNode,
)

log = logging.getLogger(__name__)

_MISSING: Any = object()  # "no final pipeline argument"


class FuncError(Exception):
    """Raised by a template function; reported as ``error calling NAME: ...``."""


# ---------------------------------------------------------------- builtins


def _basic_kind(v: Any) -> str:
    if v is None:
        return "invalid"
    return next((name for typ, name in GO_TYPES[:4] if isinstance(v, typ)), "other")


def _eq(a: Any, *rest: Any) -> bool:
    if not rest:
        raise FuncError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in rest:
        k2 = _basic_kind(b)
        if k1 != k2:
            if a is not None and b is not None:
                raise FuncError("incompatible types for comparison")
            continue
        if k1 == "other" and isinstance(a, (list, Mapping)):
            raise FuncError(f"non-comparable type {go_type_name(a)}")
        if a == b:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 in ("invalid", "other", "bool") or k2 in ("invalid", "other", "bool"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    return bool(a < b)


def _len(v: Any) -> int:
    if v is None:
        raise FuncError("len of nil pointer")
    if isinstance(v, str):
        return len(v.encode("utf-8"))
    if isinstance(v, (bytes, Sequence, Mapping)):
        return len(v)
    raise FuncError(f"len of type {go_type_name(v)}")


def _int_index(ix: Any, what: str) -> int:
    if ix is None:
        raise FuncError(f"cannot {what} with nil")
    if not isinstance(ix, int) or isinstance(ix, bool):
        raise FuncError(f"cannot {what} with type {go_type_name(ix)}")
    return ix


def _index(item: Any, *indexes: Any) -> Any:
    v = item
    for ix in indexes:
        if v is None:
            raise FuncError("index of untyped nil")
        if isinstance(v, Mapping):
            if ix is not None and not isinstance(ix, str) and v and all(isinstance(k, str) for k in v):
                raise FuncError(f"value has type {go_type_name(ix)}; should be string")
            v = v.get(ix)
            continue
        if isinstance(v, str):
            v = v.encode("utf-8")
        if isinstance(v, (bytes, Sequence)):
            i = _int_index(ix, "index slice/array")
            if not 0 <= i < len(v):
                raise FuncError(f"index out of range: {i}")
            v = v[i]
            continue
        raise FuncError(f"can't index item of type {go_type_name(v)}")
    return v


def _slice(item: Any, *idx: Any) -> Any:
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(idx) > 3:
        raise FuncError(f"too many slice indexes: {len(idx)}")
    if isinstance(item, str):
        if len(idx) == 3:
            raise FuncError("cannot 3-index slice a string")
        data: Any = item.encode("utf-8")
    elif isinstance(item, (bytes, Sequence)):
        data = item
    else:
        raise FuncError(f"can't slice item of type {go_type_name(item)}")
    lo, hi, cap = [*(_int_index(x, "slice") for x in idx), *(0, len(data), len(data))[len(idx) :]]
    bad = next((b for b in (lo, hi, cap) if not 0 <= b <= len(data)), None)
    if bad is not None:
        raise FuncError(f"index out of range: {bad}")
    if lo > hi or hi > cap:
        raise FuncError(f"invalid slice index: {lo} > {hi}" if lo > hi else f"invalid slice index: {hi} > {cap}")
    out = data[lo:hi]
    if isinstance(item, str):
        return out.decode("utf-8", errors="replace")
    return list(out) if getattr(item, "go_nil", False) else out


def _args_string(args: tuple[Any, ...]) -> str:
    return args[0] if len(args) == 1 and isinstance(args[0], str) else go_print(*args)


def _html(*args: Any) -> str:
    s = _args_string(args)
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
        .replace("\x00", "\ufffd")
    )


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_args_string(args), safe="-_.~")


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise FuncError(f"wrong type for value; expected string; got {go_type_name(fmt)}")
    return go_sprintf(fmt, *args)


# name -> (function, min args, max args or None for variadic)
BUILTINS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "and": (lambda *a: a[-1], 1, None),  # evaluated lazily by the executor
    "or": (lambda *a: a[-1], 1, None),
    "not": (lambda a: not is_true(a), 1, 1),
    "eq": (_eq, 1, None),
    "ne": (lambda a, b: not _eq(a, b), 2, 2),
    "lt": (_lt, 2, 2),
    "le": (lambda a, b: _lt(a, b) or _eq(a, b), 2, 2),
    "gt": (lambda a, b: not (_lt(a, b) or _eq(a, b)), 2, 2),
    "ge": (lambda a, b: not _lt(a, b), 2, 2),
    "len": (_len, 1, 1),
    "index": (_index, 1, None),
    "slice": (_slice, 1, None),
    "print": (go_print, 0, None),
    "printf": (_printf, 1, None),
    "println": (lambda *a: " ".join(go_sprint(x) for x in a) + "\n", 0, None),
    "html": (_html, 0, None),
    "urlquery": (_urlquery, 0, None),
}


# ---------------------------------------------------------------- executor


class _LoopControl(Exception):
    """``{{break}}`` (``args[0] == "break"``) or ``{{continue}}`` unwinding to its range."""


class _State:
    def __init__(self, funcs: Mapping[str, tuple[Callable[..., Any], int, int | None]], data: Any) -> None:
        self.funcs = funcs
        self.out: list[str] = []
        self.vars: list[list[Any]] = [["$", data]]
        self.line = 0

    def error(self, msg: str) -> TemplateError:
        return TemplateError(msg, self.line or None)

    def var_entry(self, name: str) -> list[Any]:
        entry: list[Any] | None = next((e for e in reversed(self.vars) if e[0] == name), None)
        if entry is None:
            raise self.error(f"undefined variable: {name}")
        return entry

    def set_var(self, name: str, value: Any) -> None:
        self.var_entry(name)[1] = value

    # walking
    def walk(self, dot: Any, node: Node) -> None:
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            self.line = node.line
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append(print_action(val))
        elif isinstance(node, ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, BranchNode):
            if node.kind == "range":
                self.walk_range(dot, node)
                return
            self.line = node.line
            mark = len(self.vars)
            try:
                val = self.eval_pipeline(dot, node.pipe)
                if is_true(val):
                    self.walk(val if node.kind == "with" else dot, node.list)
                elif node.else_list is not None:
                    self.walk(dot, node.else_list)
            finally:
                del self.vars[mark:]
        elif isinstance(node, LoopControlNode):
            raise _LoopControl(node.kind)

    def walk_range(self, dot: Any, node: BranchNode) -> None:
        self.line = node.line
        mark = len(self.vars)
        pipe = node.pipe
        try:
            val = self.eval_pipeline(dot, pipe)
            inner = len(self.vars)
            if val is None:
                items: list[tuple[Any, Any]] = []
            elif isinstance(val, Mapping):
                items = sorted_items(val)
            elif isinstance(val, (list, tuple)):
                items = list(enumerate(val))
            elif isinstance(val, int) and not isinstance(val, bool):
                if len(pipe.decl) > 1:
                    raise self.error(f"can't use {val} to iterate over more than one variable")
                items = [(i, i) for i in range(val)]
            else:
                raise self.error(f"range can't iterate over {go_sprint(val)}")
            if not items:
                if node.else_list is not None:
                    self.walk(dot, node.else_list)
                return
            for index, elem in items:
                if pipe.decl:
                    if pipe.is_assign:
                        self.set_var(pipe.decl[0], index if len(pipe.decl) > 1 else elem)
                        if len(pipe.decl) > 1:
                            self.set_var(pipe.decl[1], elem)
                    else:
                        self.vars[inner - 1][1] = elem
                        if len(pipe.decl) > 1:
                            self.vars[inner - 2][1] = index
                try:
                    self.walk(elem, node.list)
                except _LoopControl as ctl:
                    if ctl.args[0] == "break":
                        break
                finally:
                    del self.vars[inner:]
        finally:
            del self.vars[mark:]

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd.args, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def not_a_function(self, args: list[Any], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {type(args[0]).__name__}")

    def eval_command(self, dot: Any, args: list[Any], final: Any) -> Any:
        first = args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first.idents, args, final)
        if isinstance(first, ChainNode):
            if isinstance(first.node, LiteralNode) and first.node.kind == "nil":
                raise self.error("indirection through explicit nil")
            return self.eval_field_chain(dot, self.eval_arg(dot, first.node), first.fields, args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first.name, args, final)
        if isinstance(first, VariableNode):
            value = self.var_entry(first.name)[1]
            if not first.fields:
                self.not_a_function(args, final)
                return value
            return self.eval_field_chain(dot, value, first.fields, args, final)
        self.not_a_function(args, final)
        if isinstance(first, PipeNode):
            return self.eval_pipeline(dot, first)
        if isinstance(first, LiteralNode) and first.kind == "nil":
            raise self.error("nil is not a command")
        return self.eval_arg(dot, first)

    def eval_arg(self, dot: Any, node: Any) -> Any:
        if isinstance(node, LiteralNode):
            return dot if node.kind == "dot" else node.value
        if isinstance(node, PipeNode):
            return self.eval_pipeline(dot, node)
        return self.eval_command(dot, [node], _MISSING)

    def eval_field_chain(self, dot: Any, receiver: Any, idents: list[str], args: list[Any], final: Any) -> Any:
        for name in idents[:-1]:
            receiver = self.eval_field(dot, name, [None], _MISSING, receiver)
        return self.eval_field(dot, idents[-1], args, final, receiver)

    def eval_field(self, dot: Any, name: str, args: list[Any], final: Any, receiver: Any) -> Any:
        has_args = len(args) > 1 or final is not _MISSING
        if receiver is None:
            return None  # Go: missing key / nil data evaluates to the zero value
        if isinstance(receiver, Mapping):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            return receiver.get(name)
        scalar = isinstance(receiver, (str, bytes, int, float, bool, list, tuple))
        attr = _NO_ATTR if scalar or name.startswith("_") else getattr(receiver, name, _NO_ATTR)
        if attr is _NO_ATTR:
            raise self.error(f"can't evaluate field {name} in type {go_type_name(receiver)}")
        if callable(attr) and not isinstance(attr, type):
            argv = [self.eval_arg(dot, a) for a in args[1:]]
            if final is not _MISSING:
                argv.append(final)
            try:
                return attr(*argv)
            except (TypeError, ValueError, LookupError, FuncError) as exc:
                raise self.error(f"error calling {name}: {exc}") from None
        if has_args:
            raise self.error(f"{name} has arguments but cannot be invoked as function")
        return attr

    def eval_function(self, dot: Any, name: str, args: list[Any], final: Any) -> Any:
        fn, lo, hi = self.funcs[name]
        n = len(args) - 1 + (final is not _MISSING)
        if n < lo or (hi is not None and n > hi):
            want = f"at least {lo}" if hi is None else str(lo)
            raise self.error(f"wrong number of args for {name}: want {want} got {n}")
        if name in ("and", "or"):
            value: Any = None
            for node in args[1:]:
                value = self.eval_arg(dot, node)
                if is_true(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        argv = [self.eval_arg(dot, a) for a in args[1:]]
        if final is not _MISSING:
            argv.append(final)
        try:
            return fn(*argv)
        except (FuncError, TypeError, ValueError, LookupError) as exc:
            raise self.error(f"error calling {name}: {exc}") from None


_NO_ATTR: Any = object()


def execute(root: ListNode, data: Any, funcs: Mapping[str, tuple[Callable[..., Any], int, int | None]]) -> str:
    """Run a parsed tree against ``data`` (bound to ``.`` and ``$``)."""
    state = _State(funcs, data)
    try:
        state.walk(data, root)
    except RecursionError:
        raise state.error("template nesting too deep") from None
    return "".join(state.out)
