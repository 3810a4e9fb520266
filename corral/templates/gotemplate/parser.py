"""Go text/template parser: tokens -> node tree.

A recursive-descent parser that mirrors Go's ``text/template/parse`` rules
(variable scoping, ``else if``/``else with`` chains, ``break``/``continue``
only inside ``range``, function names checked at parse time). Execution is
:mod:`.exec`; the public API :mod:`.template`.
"""

from __future__ import annotations

from corral.templates.gotemplate.lexer import (
    Token,
    _Lexer,
    _Marker,
    parse_number,
)
from corral.templates.gotemplate.nodes import (
    ActionNode,
    ArgNode,
    BranchNode,
    ChainNode,
    CommandNode,
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

# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, toks: list[Token], funcs: frozenset[str]) -> None:
        self.toks = toks
        self.i = 0
        self.funcs = funcs
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    # token helpers
    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def backup(self) -> None:
        self.i -= 1

    def next_non_space(self) -> Token:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> Token:
        tok = self.next_non_space()
        if tok.kind != "eof":
            self.backup()
        return tok

    def error(self, msg: str, line: int | None = None) -> TemplateError:
        if line is None:
            line = self.toks[max(self.i - 1, 0)].line
        return TemplateError(msg, line)

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        shown = "EOF" if tok.kind == "eof" else repr(str(tok.val))
        return self.error(f"unexpected {shown} in {context}", tok.line)

    def expect(self, kind: str, context: str) -> Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    # structure
    def parse(self) -> ListNode:
        root = ListNode([])
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Marker):
                raise self.error(f"unexpected {{{{{node.kind}}}}}", node.line)
            root.nodes.append(node)
        return root

    def item_list(self) -> tuple[ListNode, _Marker]:
        lst = ListNode([])
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Marker):
                return lst, node
            lst.nodes.append(node)
        raise self.error("unexpected EOF", self.peek().line)

    def text_or_action(self) -> Node | _Marker:
        tok = self.next_non_space()
        if tok.kind == "text":
            return TextNode(tok.val)
        if tok.kind == "ldelim":
            return self.action()
        raise self.unexpected(tok, "input")

    def action(self) -> Node | _Marker:
        tok = self.next_non_space()
        if tok.kind == "keyword":
            word = tok.val
            if word in ("define", "template", "block"):
                raise self.error(f"{{{{{word}}}}} is not supported", tok.line)
            if word in ("break", "continue"):
                self.expect("rdelim", f"{{{{{word}}}}}")
                if self.range_depth == 0:
                    raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}", tok.line)
                return LoopControlNode(word, tok.line)
            if word == "else":
                nxt = self.peek_non_space()
                if nxt.kind == "keyword" and nxt.val in ("if", "with"):
                    return _Marker("else", tok.line)
                self.expect("rdelim", "else")
                return _Marker("else", tok.line)
            if word == "end":
                self.expect("rdelim", "end")
                return _Marker("end", tok.line)
            if word in ("if", "with", "range"):
                return BranchNode(word, *self.control(word), tok.line)
        self.backup()
        return ActionNode(self.pipeline("command", "rdelim"), tok.line)

    def control(self, context: str) -> tuple[PipeNode, ListNode, ListNode | None]:
        mark = len(self.vars)
        try:
            pipe = self.pipeline(context, "rdelim")
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: ListNode | None = None
            if nxt.kind == "else":
                follow = self.peek()
                if context in ("if", "with") and follow.kind == "keyword" and follow.val == context:
                    self.next()
                    else_list = ListNode([BranchNode(context, *self.control(context), follow.line)])
                else:
                    else_list, end = self.item_list()
                    if end.kind != "end":
                        raise self.error(f"expected end; found {{{{{end.kind}}}}}", end.line)
            return pipe, lst, else_list
        finally:
            del self.vars[mark:]

    def pipeline(self, context: str, end: str) -> PipeNode:
        pipe = PipeNode(self.peek_non_space().line)
        while True:
            start = self.i
            var = self.peek_non_space()
            if var.kind != "var":
                break
            self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.kind in ("assign", "declare"):
                self.next_non_space()
                pipe.is_assign = nxt.kind == "assign"
                pipe.decl.append(var.val)
                self.vars.append(var.val)
                break
            if nxt.kind == "comma":
                self.next_non_space()
                pipe.decl.append(var.val)
                self.vars.append(var.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().kind in ("var", "rdelim", "rparen"):
                        continue
                    raise self.error("range can only initialize variables")
                raise self.error(f"too many declarations in {context}")
            self.i = start
            break
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                self.check_pipeline(pipe, context)
                return pipe
            if tok.kind in ("bool", "dot", "field", "ident", "number", "nil", "string", "var", "lparen"):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise self.error(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], LiteralNode):
                raise self.error(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> CommandNode:
        cmd = CommandNode([])
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("rdelim", "rparen"):
                self.backup()
            elif tok.kind != "pipe":
                raise self.unexpected(tok, "operand")
            break
        if not cmd.args:
            raise self.error("empty command")
        return cmd

    def operand(self) -> ArgNode | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().kind == "field":
            fields: list[str] = []
            while self.peek().kind == "field":
                fields.append(self.next().val)
            if isinstance(node, FieldNode):
                return FieldNode(node.idents + fields)
            if isinstance(node, VariableNode):
                return VariableNode(node.name, node.fields + fields)
            if isinstance(node, LiteralNode):
                raise self.error(f"unexpected . after term {node.text or node.kind!r}")
            return ChainNode(node, fields)
        return node

    def term(self) -> ArgNode | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "ident":
            if tok.val not in self.funcs:
                raise self.error(f'function "{tok.val}" not defined', tok.line)
            return IdentifierNode(tok.val)
        if kind in ("dot", "nil"):
            return LiteralNode(kind, None, tok.val)
        if kind == "var":
            if tok.val not in self.vars:
                raise self.error(f'undefined variable "{tok.val}"', tok.line)
            return VariableNode(tok.val, [])
        if kind == "field":
            return FieldNode([tok.val])
        if kind == "bool":
            return LiteralNode(kind, tok.val == "true", tok.val)
        if kind == "number":
            try:
                return LiteralNode(kind, parse_number(tok.val), tok.val)
            except ValueError as exc:
                raise self.error(f"illegal number syntax: {tok.val!r} ({exc})", tok.line) from None
        if kind == "lparen":
            return self.pipeline("parenthesized pipeline", "rparen")
        if kind == "string":
            return LiteralNode(kind, tok.val, repr(tok.val))
        self.backup()
        return None


def parse_template(source: str, funcs: frozenset[str]) -> ListNode:
    """Parse ``source`` into a node tree; raise :class:`TemplateError` on bad syntax."""
    return _Parser(_Lexer(source).run(), funcs).parse()
