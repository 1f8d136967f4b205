"""The meaning of statements (phase 2): checks, table ids, claims, tables, selection."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

from proxy.config import rules
from proxy.config import selection as sel
from proxy.config import statements as st
from proxy.config.grammar import SWITCH_MODES, Parser
from proxy.config.model import (
    DEFAULT_PROTOCOL,
    MAX_TABLE_ID,
    MAX_VERSION,
    PROTOCOLS,
    Config,
    ConfigDisabled,
    ConfigError,
    DownstreamOptions,
    Instance,
    assign_table_ids,
    is_wildcard,
    wildcard_matches,
)
from proxy.config.tokens import Token
from proxy.messages import Address
from proxy.timers import PROFILES, with_overrides


@dataclass
class _InstanceDraft:
    stmt: st.InstanceStmt
    table_id: int | None
    filters: dict[tuple[str, str, str], tuple[rules.FilterBinding, Token]] = field(
        default_factory=dict
    )
    rule_matching: dict[str, tuple[rules.RuleMatching, Token]] = field(default_factory=dict)
    peerings: list[str] = field(default_factory=list)
    options: dict[tuple[str, str], tuple[int | bool, Token]] = field(default_factory=dict)
    subscribers: dict[str, tuple[tuple[rules.Network, ...], Token]] = field(default_factory=dict)
    # multiple upstreams: (ifname or "*", key) -> (value, token); records per upstream
    upstream: dict[tuple[str, str], tuple[object, Token]] = field(default_factory=dict)
    records: dict[str, list[tuple[sel.SelectionRecord, Token]]] = field(default_factory=dict)
    selection_kw: Token | None = None
    profile: tuple[str, Token] | None = None
    overrides: dict[str, float | int] = field(default_factory=dict)
    timers_kw: Token | None = None

    @property
    def name(self) -> str:
        return self.stmt.name.text


class Builder:
    """Turns statements into a ``Config``: protocol, instances, tables, then the rest."""

    def __init__(self, path: str, stmts: list[st.Stmt]) -> None:
        self.path = path
        self.stmts = stmts
        self.protocol = DEFAULT_PROTOCOL
        self.family, self.version = PROTOCOLS[DEFAULT_PROTOCOL]
        self.drafts: dict[str, _InstanceDraft] = {}
        self.owners: dict[str, list[tuple[str, str, Token]]] = {}
        self.raw_tables: dict[str, st.TableStmt] = {}
        self.tables: dict[str, rules.Table] = {}

    def error(self, tok: Token, message: str) -> ConfigError:
        return ConfigError(self.path, tok.line, tok.col, message)

    def build(self) -> Config:
        # Protocol first because it fixes the address family every later check needs.
        # mcproxy reads the file in order and the last protocol line wins.
        protocols = [s for s in self.stmts if isinstance(s, st.ProtocolStmt)]
        if protocols:
            self.protocol = protocols[-1].protocol
            self.family, self.version = PROTOCOLS[self.protocol]
        # Definitions before uses, so a statement may name an instance or table that the
        # file defines further down.
        for s in self.stmts:
            if isinstance(s, st.InstanceStmt):
                self.define(s)
        self.assign_table_ids()
        for s in self.stmts:
            if isinstance(s, st.TableStmt):
                if s.name.text in self.raw_tables:
                    line = self.raw_tables[s.name.text].name.tok.line
                    raise self.error(
                        s.name.tok, f"table '{s.name.text}' is already defined on line {line}"
                    )
                self.raw_tables[s.name.text] = s
        for name, s in self.raw_tables.items():
            self.named_rules(st.Name(name, s.name.tok), [])
        for s in self.stmts:
            apply = self.APPLY.get(type(s))
            if apply is not None:
                apply(self, s)
        return Config(
            path=self.path,
            protocol=self.protocol,
            family=self.family,
            version=self.version,
            instances=tuple(self.finish(d) for d in self.drafts.values()),
            tables={name: self.tables[name] for name in self.raw_tables},
        )

    # instances
    def claim(self, inst: str, role: str, name: st.Name) -> None:
        """Record that ``inst`` uses ``name`` as ``role``.

        As in mcproxy, an interface may be upstream and downstream of one instance and
        may be used by several instances. A peering interface (our extension) is neither.
        """
        for other, other_role, tok in self.owners.get(name.text, []):
            if "peering" not in (role, other_role):
                continue
            if other == inst and other_role == role:
                msg = f"interface '{name.text}' is listed twice in instance '{inst}'"
            elif other == inst:
                msg = (
                    f"interface '{name.text}' is both {other_role} and {role} of instance '{inst}'"
                )
            else:
                msg = (
                    f"interface '{name.text}' is {other_role} of instance '{other}' "
                    f"(line {tok.line}) and cannot also be {role} of instance '{inst}'"
                )
            raise self.error(name.tok, msg)
        self.owners.setdefault(name.text, []).append((inst, role, name.tok))

    def define(self, s: st.InstanceStmt) -> None:
        name = s.name.text
        if name in self.drafts:
            line = self.drafts[name].stmt.name.tok.line
            raise self.error(s.name.tok, f"instance '{name}' is already defined on line {line}")
        # No upstream is mcproxy's querier-only instance; at least one downstream it needs.
        if not s.downstreams:
            raise self.error(s.arrow, f"instance '{name}' has no downstream interface after '==>'")
        # A name listed twice in one list is used once, as mcproxy does.
        s = replace(s, upstreams=_unique(s.upstreams), downstreams=_unique(s.downstreams))
        for up in s.upstreams:
            self.claim(name, "upstream", up)
        for down in s.downstreams:
            self.claim(name, "downstream", down)
        table_id = None
        if s.table_id is not None:
            text, tok = s.table_id
            top = MAX_TABLE_ID[self.family]
            if not text.isdigit() or not 1 <= int(text) <= top:
                raise self.error(tok, f"bad table id '{text}': expected an integer from 1 to {top}")
            table_id = int(text)
            for other in self.drafts.values():
                if other.table_id == table_id:
                    raise self.error(
                        tok,
                        f"table id {table_id} is already used by instance '{other.name}' "
                        f"(line {other.stmt.name.tok.line})",
                    )
        self.drafts[name] = _InstanceDraft(s, table_id)

    def assign_table_ids(self) -> None:
        drafts = list(self.drafts.values())
        ids = assign_table_ids([(d.name, d.table_id) for d in drafts], self.family)
        for draft, table_id in zip(drafts, ids, strict=True):
            draft.table_id = table_id

    def draft(self, name: st.Name) -> _InstanceDraft:
        draft = self.drafts.get(name.text)
        if draft is None:
            raise self.error(name.tok, f"unknown instance '{name.text}'")
        return draft

    def check_member(self, draft: _InstanceDraft, role: str, ifname: st.Name) -> None:
        if ifname.wildcard:
            return
        members = draft.stmt.upstreams if role == "upstream" else draft.stmt.downstreams
        names = {m.text for m in members}
        if ifname.text not in names and not any(wildcard_matches(n, ifname.text) for n in names):
            article = "an" if role == "upstream" else "a"
            raise self.error(
                ifname.tok,
                f"'{ifname.text}' is not {article} {role} interface of instance '{draft.name}'",
            )

    def finish(self, d: _InstanceDraft) -> Instance:
        timers = PROFILES[d.profile[0] if d.profile else "default"]
        if d.overrides:
            try:
                timers = with_overrides(timers, **d.overrides)
            except ValueError as exc:
                assert d.timers_kw is not None
                raise self.error(
                    d.timers_kw, f"invalid timers for instance '{d.name}': {exc}"
                ) from None
        downstreams = tuple(n.text for n in d.stmt.downstreams)

        def option(ifname: str, key: str, default: int | bool) -> int | bool:
            return d.options[(ifname, key)][0] if (ifname, key) in d.options else default

        options = {
            ifname: DownstreamOptions(
                version=int(option(ifname, "version", self.version)),
                querier_election=bool(option(ifname, "querier-election", True)),
            )
            for ifname in downstreams
        }
        rule_matching = {
            direction: d.rule_matching[direction][0] if direction in d.rule_matching else default
            for direction, default in rules.DEFAULT_RULE_MATCHING.items()
        }
        for ifname, (prefixes, _tok) in d.subscribers.items():
            options[ifname] = replace(options[ifname], subscribers=prefixes)
        selection = self.selection(d)
        assert d.table_id is not None
        return Instance(
            name=d.name,
            table_id=d.table_id,
            table_id_explicit=d.stmt.table_id is not None,
            upstreams=tuple(n.text for n in d.stmt.upstreams),
            downstreams=downstreams,
            peerings=tuple(d.peerings),
            timers=timers,
            filters=tuple(binding for binding, _ in d.filters.values()),
            rule_matching=rule_matching,
            downstream_options=options,
            selection=selection,
        )

    def selection(self, d: _InstanceDraft) -> sel.Selection | None:
        if d.selection_kw is None:
            return None
        for up in d.stmt.upstreams:
            if is_wildcard(up.text):
                raise self.error(
                    up.tok,
                    f"upstream selection needs named upstreams, not the wildcard '{up.text}'",
                )
        if "in" in d.rule_matching:
            tok = d.rule_matching["in"][1]
            raise self.error(
                tok,
                f"'rulematching in' cannot be combined with upstream selection "
                f"(line {d.selection_kw.line}); remove one of them",
            )

        def value(ifname: str, key: str, default: object) -> object:
            return d.upstream[(ifname, key)][0] if (ifname, key) in d.upstream else default

        every = value("*", "takeover", sel.Takeover())
        candidates = tuple(
            sel.Candidate(
                ifname=up.text,
                priority=int(value(up.text, "priority", 0)),  # type: ignore[call-overload]
                records=tuple(r for r, _ in d.records.get(up.text, [])),
                takeover=value(up.text, "takeover", every),  # type: ignore[arg-type]
            )
            for up in d.stmt.upstreams
        )
        defaults = [name for (name, key) in d.upstream if key == "default"]
        return sel.Selection(
            candidates=candidates,
            default=defaults[0] if defaults else None,
            revert=value("*", "revert", sel.DEFAULT_REVERT),  # type: ignore[arg-type]
            migrate=value("*", "migrate", sel.DEFAULT_MIGRATE),  # type: ignore[arg-type]
            overlap=float(value("*", "overlap", sel.DEFAULT_OVERLAP)),  # type: ignore[arg-type]
        )

    # tables
    def named_rules(self, ref: st.Name, stack: list[str]) -> tuple[rules.Rule, ...]:
        name = ref.text
        if name in self.tables:
            return self.tables[name].rules
        stmt = self.raw_tables.get(name)
        if stmt is None:
            raise self.error(ref.tok, f"unknown table '{name}'")
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name) :], name])
            raise self.error(ref.tok, f"table cycle: {cycle}")
        flat = self.flatten(stmt.body, [*stack, name])
        self.tables[name] = rules.Table(name, flat)
        return flat

    def flatten(self, raw: st.RawTable, stack: list[str]) -> tuple[rules.Rule, ...]:
        flat: list[rules.Rule] = []
        for item in raw.items:
            if isinstance(item, st.RawRule):
                ifname = item.ifname.text if item.ifname else None
                flat.append(rules.Rule(ifname, self.match(item.group), self.match(item.source)))
            elif isinstance(item, st.RawRef):
                flat.extend(self.named_rules(item.name, stack))
            else:
                flat.extend(self.flatten(item, stack))
        return tuple(flat)

    def table(self, raw: st.RawRef | st.RawTable) -> rules.Table:
        if isinstance(raw, st.RawRef):
            self.named_rules(raw.name, [])
            return self.tables[raw.name.text]
        return rules.Table(None, self.flatten(raw, []))

    def address(self, bound: st.Bound) -> Address | None:
        """The bound's address in this family; None for '*' or the unspecified address."""
        addr = bound.addr
        if addr is None:
            return None
        if addr.version != self.family:
            raise self.error(
                bound.tok,
                f"address '{bound.text}' is IPv{addr.version} but protocol {self.protocol} "
                f"is IPv{self.family}",
            )
        return None if addr.is_unspecified else addr

    def match(self, part: st.Part) -> rules.AddressMatch:
        lo = self.address(part.lo)
        if part.kind == "single":
            return (
                rules.AddressMatch.single(lo) if lo is not None else rules.AddressMatch.wildcard()
            )
        if part.kind == "prefix":
            assert part.prefixlen is not None and part.lo.addr is not None
            length, tok = part.prefixlen
            top = 32 if self.family == 4 else 128
            if length > top:
                raise self.error(tok, f"prefix length {length} out of range 0..{top}")
            return rules.AddressMatch.network(f"{part.lo.addr}/{length}")
        assert part.hi is not None
        hi = self.address(part.hi)
        cls = IPv4Address if self.family == 4 else IPv6Address
        # An open bound ('*' or the unspecified address) stretches to the family's end.
        first = lo if lo is not None else cls(0)
        last = hi if hi is not None else cls(2 ** (32 if self.family == 4 else 128) - 1)
        if first > last:
            raise self.error(part.lo.tok, f"range start {first} is above range end {last}")
        return rules.AddressMatch.between(first, last)

    # the other statements, in file order
    def apply_filter(self, s: st.FilterStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, s.role, s.ifname)
        key = (s.role, s.ifname.text, s.direction)
        if key in d.filters:
            raise self.error(
                s.ifname.tok,
                f"the {s.direction} filter of {s.role} '{s.ifname.text}' is already set "
                f"on line {d.filters[key][1].line}",
            )
        binding = rules.FilterBinding(
            s.role, s.ifname.text, s.direction, s.kind, self.table(s.table)
        )
        d.filters[key] = (binding, s.kw)

    def apply_rule_matching(self, s: st.RuleMatchingStmt) -> None:
        d = self.draft(s.inst)
        if s.role != "upstream":
            raise self.error(s.role_tok, "rulematching applies to upstreams only ('upstream *')")
        self.check_member(d, "upstream", s.ifname)
        if s.mode == "mutex" and s.direction == "out":
            raise self.error(s.mode_tok, "mutex applies to 'in' only ('out' takes first or all)")
        timeout = None
        if s.timeout is not None:
            timeout, tok = s.timeout
            if timeout == 0:
                raise self.error(tok, "the mutex timeout must be at least 1 ms")
        if s.direction in d.rule_matching:
            line = d.rule_matching[s.direction][1].line
            raise self.error(s.dir_tok, f"rulematching {s.direction} is already set on line {line}")
        d.rule_matching[s.direction] = (rules.RuleMatching(s.direction, s.mode, timeout), s.kw)

    def apply_peering(self, s: st.PeeringStmt) -> None:
        d = self.draft(s.inst)
        for name in s.names:
            self.claim(d.name, "peering", name)
            d.peerings.append(name.text)

    def apply_timers(self, s: st.TimersStmt) -> None:
        d = self.draft(s.inst)
        if s.profile is not None:
            if d.profile is not None:
                raise self.error(
                    s.profile[1],
                    f"the timers profile of instance '{d.name}' is already set "
                    f"on line {d.profile[1].line}",
                )
            d.profile = s.profile
        for field_name, value, _ in s.overrides:
            d.overrides[field_name] = value  # later statements win, in file order
        d.timers_kw = s.kw

    def apply_option(self, s: st.OptionStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, "downstream", s.ifname)
        if s.option == "version":
            top = MAX_VERSION[self.family]
            if not 1 <= int(s.value) <= top:
                what = "IGMP" if self.family == 4 else "MLD"
                raise self.error(s.value_tok, f"{what} has no version {s.value} (1..{top})")
        key = (s.ifname.text, s.option)
        if key in d.options:
            raise self.error(
                s.key_tok,
                f"{s.option} of downstream '{s.ifname.text}' is already set "
                f"on line {d.options[key][1].line}",
            )
        d.options[key] = (s.value, s.key_tok)

    def prefix(self, part: st.Part, what: str) -> rules.AddressMatch:
        """A selection part: '*', an address or a prefix (no ranges: they have no length)."""
        if part.kind == "range":
            raise self.error(part.lo.tok, f"a {what} is '*', an address or a prefix, not a range")
        return self.match(part)

    def apply_upstream(self, s: st.UpstreamStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, "upstream", s.ifname)
        whole = s.key in ("revert", "migrate", "overlap")
        if whole and not s.ifname.wildcard:
            raise self.error(
                s.key_tok, f"'{s.key}' applies to the whole instance: write 'upstream * {s.key}'"
            )
        if s.ifname.wildcard and s.key in ("priority", "select", "default"):
            raise self.error(s.ifname.tok, f"'{s.key}' needs an upstream name, not '*'")
        if d.selection_kw is None or s.kw.start < d.selection_kw.start:
            d.selection_kw = s.kw
        if s.key == "select":
            parts = s.value
            assert isinstance(parts, dict)
            record = sel.SelectionRecord(
                **{name: self.prefix(part, f"{name} prefix") for name, (part, _) in parts.items()}
            )
            have = d.records.setdefault(s.ifname.text, [])
            for other, tok in have:
                if other == record:
                    raise self.error(
                        s.key_tok,
                        f"upstream '{s.ifname.text}' already has the record '{record}' "
                        f"(line {tok.line})",
                    )
            have.append((record, s.key_tok))
            return
        if s.key == "default":
            for (name, key), (_, tok) in d.upstream.items():
                if key == "default":
                    raise self.error(
                        s.key_tok, f"the default upstream is already '{name}' (line {tok.line})"
                    )
        key = (s.ifname.text, s.key)
        if key in d.upstream:
            where = "upstream *" if s.ifname.wildcard else f"upstream '{s.ifname.text}'"
            raise self.error(
                s.key_tok, f"{s.key} of {where} is already set on line {d.upstream[key][1].line}"
            )
        value: object = s.value
        if s.key == "takeover":
            trigger, timeout = s.value  # type: ignore[misc]
            if trigger == "no-querier" and not timeout:
                raise self.error(s.value_tok, "the no-querier time must be positive")
            value = sel.Takeover(trigger, timeout)
        elif s.key in SWITCH_MODES:
            mode, delay = s.value  # type: ignore[misc]
            if mode == "after" and not delay:
                raise self.error(s.value_tok, f"the {s.key} delay must be positive")
            value = sel.SwitchPolicy(mode, delay)
        d.upstream[key] = (value, s.key_tok)

    def apply_subscribers(self, s: st.SubscribersStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, "downstream", s.ifname)
        if s.ifname.text in d.subscribers:
            line = d.subscribers[s.ifname.text][1].line
            raise self.error(
                s.key_tok,
                f"subscribers of downstream '{s.ifname.text}' are already set on line {line}",
            )
        nets = []
        for part in s.prefixes:
            match = self.prefix(part, "subscriber prefix")
            if match.kind == "any":
                raise self.error(part.lo.tok, "a subscriber prefix cannot be '*'")
            assert match.first is not None
            nets.append(ip_network(f"{match.first}/{rules.match_length(match)}"))
        d.subscribers[s.ifname.text] = (tuple(nets), s.key_tok)

    APPLY: dict[type, Callable[[Builder, st.Stmt], None]] = {
        st.FilterStmt: apply_filter,
        st.RuleMatchingStmt: apply_rule_matching,
        st.PeeringStmt: apply_peering,
        st.TimersStmt: apply_timers,
        st.OptionStmt: apply_option,
        st.UpstreamStmt: apply_upstream,
        st.SubscribersStmt: apply_subscribers,
    }


def _unique(names: tuple[st.Name, ...]) -> tuple[st.Name, ...]:
    seen: dict[str, st.Name] = {}
    for n in names:
        seen.setdefault(n.text, n)
    return tuple(seen.values())


def parse(text: str, path: str = "<string>") -> Config:
    """Parse configuration text; ``path`` only names it in errors.

    A file that says ``disable;`` raises ``ConfigDisabled`` once the statements before it
    are checked (mcproxy reads up to it and stops).
    """
    parser = Parser(text, path)
    cfg = Builder(path, parser.statements()).build()
    if parser.disabled is not None:
        raise ConfigDisabled(path, parser.disabled.line)
    return cfg


def load(path: str | os.PathLike[str]) -> Config:
    """Read and parse a file; unreadable files raise ``ConfigError`` too."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(name, 0, 0, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(name, line, exc.start - line_start + 1, "not UTF-8 text") from None
    return parse(text, name)
