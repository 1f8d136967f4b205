"""The parser of the configuration grammar: tokens -> statements, syntax checks only."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import ip_address

from proxy.config.model import PROTOCOLS, ConfigError
from proxy.config.statements import (
    Bound,
    FilterStmt,
    InstanceStmt,
    Name,
    OptionStmt,
    Part,
    PeeringStmt,
    ProtocolStmt,
    RawRef,
    RawRule,
    RawTable,
    RuleMatchingStmt,
    Stmt,
    SubscribersStmt,
    TableStmt,
    TimersStmt,
    UpstreamStmt,
)
from proxy.config.tokens import (
    ADDR_GLUE,
    KEY_GLUE,
    NAME_GLUE,
    RESERVED,
    VALUE_GLUE,
    Token,
    tokenize,
)
from proxy.timers import PROFILES


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", text.lower())
    if m is None:
        raise ValueError("expected a duration such as 125, 125s, 500ms or 1.5s")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "ms" else value


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("expected a whole number")
    return int(text)


def _factor(text: str) -> float:
    if re.fullmatch(r"\d+(?:\.\d+)?", text) is None:
        raise ValueError("expected a number such as 1 or 2")
    return float(text)


#: timers KEY -> (Timers field, value parser)
TIMER_KEYS: dict[str, tuple[str, Callable[[str], float | int]]] = {
    "robustness": ("robustness", _count),
    "query-interval": ("query_interval", seconds),
    "query-response-interval": ("query_response_interval", seconds),
    "last-listener-query-interval": ("last_listener_query_interval", seconds),
    "last-listener-query-count": ("last_listener_query_count", _count),
    "startup-query-interval": ("startup_query_interval", seconds),
    "startup-query-count": ("startup_query_count", _count),
    "gmi-qri-factor": ("gmi_qri_factor", _factor),
}


def _alternatives(words: list[str] | tuple[str, ...]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_UPSTREAM_KEYS = ("priority", "select", "default", "takeover", "revert", "migrate", "overlap")
_SELECT_PARTS = ("subscriber", "source", "group")
SWITCH_MODES = {"revert": ("immediate", "never", "after"), "migrate": ("keep", "move", "after")}
_MAX_PRIORITY = 65535


class Parser:
    """Recursive descent over the token list; checks syntax only."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.toks = tokenize(text, path)
        self.pos = 0
        self.disabled: Token | None = None  # the 'disable' statement, if the file has one

    # helpers
    @property
    def tok(self) -> Token:
        return self.toks[self.pos]

    @property
    def prev(self) -> Token:
        return self.toks[self.pos - 1]

    def advance(self) -> Token:
        t = self.toks[self.pos]
        if t.kind != "eof":
            self.pos += 1
        return t

    def error(self, tok: Token, message: str) -> ConfigError:
        return ConfigError(self.path, tok.line, tok.col, message)

    def expected(self, what: str) -> ConfigError:
        return self.error(self.tok, f"expected {what}, found {self.tok.shown}")

    def is_kw(self, tok: Token, *words: str) -> bool:
        return tok.kind == "word" and tok.text.lower() in words

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.expected(f"'{kind}'")
        return self.advance()

    def expect_kw(self, *words: str) -> str:
        if not self.is_kw(self.tok, *words):
            raise self.expected(_alternatives(words))
        return self.advance().text.lower()

    def glue_end(self, kinds: frozenset[str]) -> int:
        """Index after the run of adjacent (space-free) tokens of ``kinds`` at ``pos``."""
        j = self.pos + 1
        while self.toks[j].kind in kinds and self.toks[j].start == self.toks[j - 1].end:
            j += 1
        return j

    def glue(self, kinds: frozenset[str]) -> tuple[str, Token]:
        # The scanner splits on '.', ':' and '-' like mcproxy's; addresses, durations and
        # hyphenated names are put back together here, only where no space separates them.
        first = self.tok
        end = self.glue_end(kinds)
        text = "".join(t.text for t in self.toks[self.pos : end])
        self.pos = end
        return text, first

    def at_name(self) -> bool:
        t = self.tok
        if t.kind == "string":
            return True
        if t.kind != "word":
            return False
        end = self.glue_end(NAME_GLUE)
        text = "".join(x.text for x in self.toks[self.pos : end])
        return text.lower() not in RESERVED

    def name(self, what: str) -> Name:
        t = self.tok
        if t.kind == "string":
            if not t.text:
                raise self.error(t, f"empty {what}")
            self.advance()
            return Name(t.text, t)
        if t.kind == "word":
            if not self.at_name():
                raise self.error(
                    t, f"expected {what}, found keyword {t.shown} (quote it to use it as a name)"
                )
            text, first = self.glue(NAME_GLUE)
            if self.tok.kind in ("+", "*") and self.tok.start == self.prev.end:
                text += self.advance().text  # an interface wildcard: eth+, ppp*
            return Name(text, first)
        raise self.expected(what)

    def names(self) -> tuple[Name, ...]:
        result = []
        while self.at_name():
            result.append(self.name("interface name"))
        return tuple(result)

    def end(self) -> None:
        t = self.tok
        if t.kind == ";":
            self.advance()
            return
        p = self.prev
        if t.kind == "eof" or t.line != p.line:
            # Point where the ';' belongs, not at the next statement.
            raise ConfigError(self.path, p.line, p.end_col, f"missing ';' after {p.shown}")
        raise self.expected("';'")

    def at_new_statement(self) -> bool:
        t = self.tok
        return t.line != self.prev.line and self.is_kw(t, *_STATEMENTS)

    # statements
    def statements(self) -> list[Stmt]:
        result: list[Stmt] = []
        while self.tok.kind != "eof":
            t = self.tok
            if t.kind == ";":  # an empty statement, which mcproxy skips as well
                self.advance()
                continue
            if self.is_kw(t, "disable"):
                # mcproxy's off switch: it stops reading here and the daemon does not run.
                self.disabled = t
                return result
            handler = _STATEMENTS.get(t.text.lower()) if t.kind == "word" else None
            if handler is None:
                raise self.error(
                    t,
                    f"unknown statement {t.shown} "
                    f"(expected {_alternatives([*_STATEMENTS, 'disable'])})",
                )
            self.advance()
            result.append(handler(self, t))
        return result

    def protocol(self, kw: Token) -> ProtocolStmt:
        t = self.tok
        by_lower = {p.lower(): p for p in PROTOCOLS}
        if t.kind != "word" or t.text.lower() not in by_lower:
            raise self.error(
                t, f"unknown protocol {t.shown} (expected {_alternatives(list(PROTOCOLS))})"
            )
        self.advance()
        self.end()
        return ProtocolStmt(kw, by_lower[t.text.lower()])

    def table_statement(self, kw: Token) -> TableStmt:
        name = self.name("table name")
        body = self.table_body()
        self.end()
        return TableStmt(kw, name, body)

    def table_body(self) -> RawTable:
        self.expect("{")
        items: list[RawRule | RawRef | RawTable] = []
        while self.tok.kind != "}":
            if not self.at_name() and self.tok.kind != "(":
                raise self.expected("a rule '[IF](GROUP | SOURCE)' or '}'")
            items.append(self.rule())
        self.advance()
        return RawTable(tuple(items))

    def table_ref_or_body(self) -> RawRef | RawTable:
        if self.tok.kind == "{":
            return self.table_body()
        return RawRef(self.name("table name or '{'"))

    def rule(self) -> RawRule | RawRef | RawTable:
        ifname = self.name("interface name") if self.at_name() else None
        self.expect("(")
        if self.is_kw(self.tok, "table"):
            if ifname is not None:
                raise self.error(ifname.tok, "an interface name cannot qualify a table reference")
            self.advance()
            item = self.table_ref_or_body()
            self.expect(")")
            return item
        group = self.part("group")
        if self.tok.kind != "|":
            raise self.expected("'|' between group and source")
        self.advance()
        source = self.part("source")
        self.expect(")")
        return RawRule(ifname, group, source)

    def part(self, what: str) -> Part:
        lo = self.bound(what)
        if self.tok.kind == "/":
            if lo.addr is None:
                raise self.error(self.tok, "'*' cannot take a prefix length")
            self.advance()
            t = self.tok
            if t.kind != "word" or not t.text.isdigit():
                raise self.expected("a prefix length")
            self.advance()
            return Part("prefix", lo, prefixlen=(int(t.text), t))
        if self.tok.kind == "-":
            self.advance()
            return Part("range", lo, hi=self.bound(what))
        return Part("single", lo)

    def bound(self, what: str) -> Bound:
        t = self.tok
        if t.kind == "*":
            self.advance()
            return Bound(None, "*", t)
        if t.kind in ("word", ":"):
            text, first = self.glue(ADDR_GLUE)
            try:
                return Bound(ip_address(text), text, first)
            except ValueError:
                raise self.error(first, f"invalid address '{text}'") from None
        raise self.expected(f"a {what} ('*', ADDR, ADDR/LEN or ADDR - ADDR)")

    def pinstance(self, kw: Token) -> Stmt:
        name = self.name("instance name")
        t = self.tok
        if t.kind in (":", "("):
            return self.definition(kw, name)
        handler = _PINSTANCE_STATEMENTS.get(t.text.lower()) if t.kind == "word" else None
        if handler is None:
            raise self.expected(_alternatives([":", "(", *_PINSTANCE_STATEMENTS]))
        self.advance()
        return handler(self, kw, name, t)

    def definition(self, kw: Token, name: Name) -> InstanceStmt:
        table_id = None
        if self.tok.kind == "(":
            self.advance()
            if self.tok.kind not in NAME_GLUE:
                raise self.expected("a table id")
            text, first = self.glue(NAME_GLUE)
            table_id = (text, first)
            self.expect(")")
        self.expect(":")
        upstreams = self.names()
        arrow = self.expect("==>")
        downstreams = self.names()
        self.end()
        return InstanceStmt(kw, name, table_id, upstreams, arrow, downstreams)

    def interface_binding(self, kw: Token, inst: Name, role_tok: Token) -> Stmt:
        role = role_tok.text.lower()
        if self.tok.kind == "*":
            ifname = Name("*", self.advance(), wildcard=True)
        else:
            ifname = self.name(f"{role} interface name or '*'")
        if self.is_kw(self.tok, "in", "out"):
            return self.direction_binding(kw, inst, role_tok, ifname)
        if role == "downstream":
            return self.downstream_option(kw, inst, ifname)
        return self.upstream_option(kw, inst, ifname)

    def direction_binding(
        self, kw: Token, inst: Name, role_tok: Token, ifname: Name
    ) -> FilterStmt | RuleMatchingStmt:
        role = role_tok.text.lower()
        dir_tok = self.advance()
        direction = dir_tok.text.lower()
        if self.is_kw(self.tok, "whitelist", "blacklist"):
            kind = self.advance().text.lower()
            self.expect_kw("table")
            table = self.table_ref_or_body()
            self.end()
            return FilterStmt(kw, inst, role, ifname, direction, kind, table)
        if not self.is_kw(self.tok, "rulematching"):
            raise self.expected(_alternatives(("whitelist", "blacklist", "rulematching")))
        self.advance()
        mode_tok = self.tok
        mode = self.expect_kw("first", "all", "mutex")
        timeout = None
        if mode == "mutex":
            t = self.tok
            if t.kind != "word" or not t.text.isdigit():
                raise self.expected("the mutex timeout in milliseconds")
            timeout = (int(self.advance().text), t)
        self.end()
        return RuleMatchingStmt(
            kw, inst, role, role_tok, ifname, direction, dir_tok, mode, mode_tok, timeout
        )

    def option_key(self, options: tuple[str, ...]) -> tuple[str, Token]:
        if self.tok.kind != "word":
            raise self.expected(_alternatives(options))
        key, key_tok = self.glue(KEY_GLUE)
        key = key.lower()
        if key not in options:
            raise self.error(key_tok, f"expected {_alternatives(options)}, found '{key}'")
        return key, key_tok

    def duration(self, what: str) -> tuple[float, Token]:
        if self.tok.kind != "word":
            raise self.expected(f"a duration for '{what}'")
        text, tok = self.glue(VALUE_GLUE)
        try:
            return seconds(text), tok
        except ValueError as exc:
            raise self.error(tok, f"bad value '{text}' for '{what}': {exc}") from None

    def upstream_option(self, kw: Token, inst: Name, ifname: Name) -> UpstreamStmt:
        key, key_tok = self.option_key(("in", "out", *_UPSTREAM_KEYS))
        value_tok = self.tok
        value: object = None
        if key == "priority":
            if value_tok.kind != "word" or not value_tok.text.isdigit():
                raise self.expected("a priority (0 to 65535)")
            value = int(self.advance().text)
            if value > _MAX_PRIORITY:
                raise self.error(value_tok, f"priority {value} out of range 0..{_MAX_PRIORITY}")
        elif key == "select":
            parts: dict[str, tuple[Part, Token]] = {}
            while self.tok.kind == "word" and self.tok.text.lower() in _SELECT_PARTS:
                part_tok = self.advance()
                name = part_tok.text.lower()
                if name in parts:
                    raise self.error(part_tok, f"'{name}' given twice in one record")
                parts[name] = (self.part(f"{name} prefix"), part_tok)
            if self.tok.kind != ";" and not parts:
                raise self.expected(_alternatives((*_SELECT_PARTS, ";")))
            value = parts
        elif key == "takeover":
            trigger, _ = self.option_key(("off", "link-down", "no-querier"))
            value = (trigger, self.duration(key)[0] if trigger == "no-querier" else None)
        elif key in SWITCH_MODES:
            mode, _ = self.option_key(SWITCH_MODES[key])
            value = (mode, self.duration(key)[0] if mode == "after" else None)
        elif key == "overlap":
            value = self.duration(key)[0]
        self.end()
        return UpstreamStmt(kw, inst, ifname, key, key_tok, value, value_tok)

    def downstream_option(
        self, kw: Token, inst: Name, ifname: Name
    ) -> OptionStmt | SubscribersStmt:
        key, key_tok = self.option_key(("in", "out", "version", "querier-election", "subscribers"))
        if ifname.wildcard:
            raise self.error(ifname.tok, f"'{key}' needs a downstream name, not '*'")
        if key == "subscribers":
            prefixes = []
            while self.tok.kind != ";" and self.tok.kind != "eof" and not self.at_new_statement():
                prefixes.append(self.part("subscriber prefix"))
            if not prefixes:
                raise self.expected("a subscriber prefix")
            self.end()
            return SubscribersStmt(kw, inst, ifname, key_tok, tuple(prefixes))
        value_tok = self.tok
        if key == "version":
            if value_tok.kind != "word" or not value_tok.text.isdigit():
                raise self.expected("a version number")
            value: int | bool = int(self.advance().text)
        else:
            value = self.expect_kw("on", "off") == "on"
        self.end()
        return OptionStmt(kw, inst, ifname, key, key_tok, value, value_tok)

    def peering(self, kw: Token, inst: Name, _t: Token) -> PeeringStmt:
        names = self.names()
        if not names:
            raise self.expected("a peering interface name")
        self.end()
        return PeeringStmt(kw, inst, names)

    def timers(self, kw: Token, inst: Name, _t: Token) -> TimersStmt:
        profile: tuple[str, Token] | None = None
        overrides: list[tuple[str, float | int, Token]] = []
        while self.tok.kind == "word" and not self.at_new_statement():
            key, key_tok = self.glue(KEY_GLUE)
            key = key.lower()
            if key == "profile":
                if profile is not None:
                    raise self.error(key_tok, "'profile' given twice")
                t = self.tok
                if t.kind != "word" or t.text.lower() not in PROFILES:
                    raise self.expected(f"a timers profile ({_alternatives(list(PROFILES))})")
                profile = (self.advance().text.lower(), key_tok)
                continue
            spec = TIMER_KEYS.get(key)
            if spec is None:
                known = ", ".join(TIMER_KEYS)
                raise self.error(
                    key_tok, f"unknown timer '{key}' (expected 'profile' or one of {known})"
                )
            if self.tok.kind != "word":
                raise self.expected(f"a value for '{key}'")
            text, value_tok = self.glue(VALUE_GLUE)
            try:
                value = spec[1](text)
            except ValueError as exc:
                raise self.error(value_tok, f"bad value '{text}' for '{key}': {exc}") from None
            overrides.append((spec[0], value, key_tok))
        if profile is None and not overrides:
            raise self.expected("'profile' or a timer name")
        self.end()
        return TimersStmt(kw, inst, profile, tuple(overrides))


#: First word of a statement -> parser. New statement kinds go here.
_STATEMENTS: dict[str, Callable[[Parser, Token], Stmt]] = {
    "protocol": Parser.protocol,
    "table": Parser.table_statement,
    "pinstance": Parser.pinstance,
}
#: Word after ``pinstance NAME`` -> parser (a definition starts with ':' or '(' instead).
#: New per-instance statements (e.g. multiple-upstream selection records) go here, with a
#: matching entry in ``proxy.config.build.Builder.APPLY``.
_PINSTANCE_STATEMENTS: dict[str, Callable[[Parser, Token, Name, Token], Stmt]] = {
    "upstream": Parser.interface_binding,
    "downstream": Parser.interface_binding,
    "peering": Parser.peering,
    "timers": Parser.timers,
}
