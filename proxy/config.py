"""The configuration: mcproxy.conf grammar (plus our extensions) -> typed ``Config``, and back.

Grammar. Statements end with ``;``; ``#`` starts a comment that runs to the end of the line;
whitespace and newlines are free; keywords are case-insensitive. A NAME is a word of
letters, digits and ``_`` (words joined by ``.`` or ``-`` without spaces also form one name,
e.g. ``eth0.100``, ``mag1-eth1``), or anything but ``"`` and a newline inside double quotes.
mcproxy's keywords (``in``, ``out``, ``table``, ...) must be quoted to be used as names::

    protocol IGMPv1 | IGMPv2 | IGMPv3 | MLDv1 | MLDv2;
    table NAME { RULE ... };
    pinstance NAME[(TABLE_ID)]: UPSTREAM ... ==> DOWNSTREAM ...;
    pinstance NAME upstream|downstream IF|* in|out whitelist|blacklist TABLE;
    pinstance NAME upstream * in|out rulematching first | all | mutex MILLISECONDS;
    # extensions of this project
    pinstance NAME peering IF ...;                              # RFC 7287 peering interfaces
    pinstance NAME timers [profile default|mobility] [KEY VALUE ...];
    pinstance NAME downstream IF version N;                    # RFC 4605 §4.1 P2
    pinstance NAME downstream IF querier-election on|off;      # RFC 4605 §3 P7
    # multiple upstreams (see "Multiple upstreams" below)
    pinstance NAME upstream IF priority N;                     # interface priority, 0..65535
    pinstance NAME upstream IF select [subscriber P] [source P] [group P];   # a record
    pinstance NAME upstream IF default;                        # the default upstream
    pinstance NAME upstream IF|* takeover off | link-down | no-querier DURATION;
    pinstance NAME upstream * revert immediate | never | after DURATION;
    pinstance NAME upstream * migrate keep | move | after DURATION;
    pinstance NAME upstream * overlap DURATION;                # make-before-break time
    pinstance NAME downstream IF subscribers P ...;            # its subscriber prefixes

    TABLE := table NAME | table { RULE ... }
    RULE  := [IF] "(" GROUP "|" SOURCE ")" | "(" table NAME ")" | "(" table { RULE ... } ")"
    GROUP, SOURCE := * | ADDR | ADDR/LEN | BOUND - BOUND        BOUND := * | ADDR

Timer KEYs: robustness, query-interval, query-response-interval, last-listener-query-interval,
last-listener-query-count, startup-query-interval, startup-query-count, gmi-qri-factor.
Durations are seconds: ``125``, ``125s``, ``500ms``, ``1.5s``.

Defaults (what other modules rely on):

- protocol IGMPv3 when absent; ``Config.family`` 4 or 6 and ``Config.version`` follow it.
- Table ids: a lone instance without an id uses the kernel's default multicast table
  (``DEFAULT_TABLE``: 253 for IPv4, 254 for IPv6), as mcproxy does; with several instances,
  each one without an id gets 1000, 1001, ... in file order, skipping explicit ids.
- rulematching (mcproxy's defaults): ``in`` = first, ``out`` = all.
- An interface without a filter binding lets everything through (mcproxy's default).
- Downstream version = the protocol's version; querier election on.
- Timers: profile ``default`` (RFC 3376/3810 values) unless a ``timers`` statement says otherwise.
- The unspecified address (0.0.0.0, ::) in a rule means ``*``, as in mcproxy.

Statements may come in any order (tables and instances may be used before they are
defined). Every error is a ``ConfigError`` whose text is ``path:line:col: message``.

Multiple upstreams (draft-ietf-pim-multiple-upstreams-reqs, the paper's section V). A file
that uses none of the ``priority``/``select``/``default``/``takeover``/``revert``/
``migrate``/``overlap`` statements keeps mcproxy's meaning (``rulematching``); one that uses
any of them gives the instance a ``Selection`` (``Instance.selection``), and then every
upstream is a *candidate*:

- A candidate has an interface priority (default 0; higher wins) and selection records
  ``(subscriber, source, group)``; each part is ``*`` (null, the default), an address or a
  prefix ``P``. A candidate without ``select`` statements has the one record ``(* | * | *)``,
  unless it is the ``default`` upstream.
- Channel-based selection matches ``source``/``group`` against the (S,G) or (*,G) asked
  for; subscriber-based selection matches ``subscriber`` against the subscriber prefixes
  of the downstream link the request came from: the ``subscribers`` option of that
  downstream, or else the global prefixes configured on the interface. A record matches a
  link when one of the link's prefixes lies inside its subscriber prefix. A record with a
  source part matches only source-specific requests (INCLUDE, or the listed sources of an
  EXCLUDE request when the part is a single address).
- Precedence: a record with a subscriber prefix beats one without, then one with a source
  prefix beats one without, then one with a group prefix beats one without (so
  source+group > source > group > null); within the same kind the longer prefixes win
  (subscriber, then source, then group length); then the higher interface priority; all
  candidates still tied are selected together (robust reception).
- Only usable candidates take part: the link is up and, with ``takeover no-querier T``, a
  query was heard within T (``takeover off``: always usable). When no usable candidate has
  a matching record the request goes to the ``default`` upstream, or without one to the
  usable candidate with the highest priority and then the highest address.
- ``revert``: when a better candidate becomes usable again, existing subscriptions move
  back at once (``immediate``, the default), stay where they are (``never``), or the
  candidate is used again only once it has been usable for DURATION (``after``).
- ``migrate``: when a reload changes where a subscription goes, existing subscriptions keep
  their upstream until they end (``keep``, the default), move at once (``move``), or move
  after DURATION. New subscriptions always follow the new configuration.
- Every move that is not a failure is make-before-break: the old upstream stays joined for
  ``overlap`` (default 1s; 0 switches at once).
- ``rulematching in`` does not combine with selection (an error); ``rulematching out`` and
  the filters keep their meaning (a candidate whose ``in`` filter refuses a request is not
  used for it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Literal

from proxy.messages import Address
from proxy.timers import PROFILES, Timers, with_overrides

__all__ = [
    "AUTO_TABLE_BASE",
    "CATCH_ALL",
    "Candidate",
    "Selection",
    "SelectionRecord",
    "SwitchPolicy",
    "Takeover",
    "DEFAULT_PROTOCOL",
    "DEFAULT_RULE_MATCHING",
    "DEFAULT_TABLE",
    "PROTOCOLS",
    "AddressMatch",
    "Config",
    "ConfigError",
    "DownstreamOptions",
    "FilterBinding",
    "Instance",
    "Rule",
    "RuleMatching",
    "Table",
    "load",
    "parse",
    "render",
]

#: protocol name -> (address family, version)
PROTOCOLS: dict[str, tuple[int, int]] = {
    "IGMPv1": (4, 1),
    "IGMPv2": (4, 2),
    "IGMPv3": (4, 3),
    "MLDv1": (6, 1),
    "MLDv2": (6, 2),
}
DEFAULT_PROTOCOL = "IGMPv3"
#: The kernel's own multicast routing table per family: RT_TABLE_DEFAULT for ipmr,
#: RT6_TABLE_DFLT (= RT_TABLE_MAIN) for ip6mr. A lone instance without an id lives there.
DEFAULT_TABLE: dict[int, int] = {4: 253, 6: 254}
AUTO_TABLE_BASE = 1000
#: MRT_TABLE / MRT6_TABLE refuse ids whose "pimreg%u" / "pim6reg%u" name would not fit IFNAMSIZ.
_MAX_TABLE_ID = {4: 999_999_999, 6: 99_999_999}
_MAX_VERSION = {4: 3, 6: 2}


class ConfigError(Exception):
    """A configuration problem at ``path:line:col`` (1-based; 0:0 means the whole file)."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(path, line, col, message)
        self.path = path
        self.line = line
        self.col = col
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


# --- the typed result ------------------------------------------------------------------


@dataclass(frozen=True)
class AddressMatch:
    """One side of a rule: ``*``, an address, a prefix or an inclusive range.

    ``first``/``last`` bound every kind but ``any`` (an address has first == last).
    """

    kind: Literal["any", "address", "prefix", "range"]
    first: Address | None = None
    last: Address | None = None
    prefixlen: int | None = None

    @classmethod
    def wildcard(cls) -> AddressMatch:
        return cls("any")

    @classmethod
    def single(cls, addr: Address) -> AddressMatch:
        return cls("address", addr, addr)

    @classmethod
    def network(cls, prefix: str) -> AddressMatch:
        """``prefix`` like ``"232.0.0.0/8"``; host bits are cleared, as mcproxy does."""
        net = ip_network(prefix, strict=False)
        return cls("prefix", net.network_address, net.broadcast_address, net.prefixlen)

    @classmethod
    def between(cls, first: Address, last: Address) -> AddressMatch:
        return cls("range", first, last)

    def matches(self, addr: Address) -> bool:
        """True if ``addr`` is inside; an address of the other family never is."""
        if self.kind == "any":
            return True
        assert self.first is not None and self.last is not None
        return addr.version == self.first.version and self.first <= addr <= self.last

    def __str__(self) -> str:
        if self.kind == "any":
            return "*"
        if self.kind == "address":
            return str(self.first)
        if self.kind == "prefix":
            return f"{self.first}/{self.prefixlen}"
        return f"{self.first} - {self.last}"


@dataclass(frozen=True)
class Rule:
    """``[ifname](group | source)``; ``ifname`` None matches any interface."""

    ifname: str | None
    group: AddressMatch
    source: AddressMatch

    def matches(self, ifname: str | None, source: Address, group: Address) -> bool:
        return (
            (self.ifname is None or self.ifname == ifname)
            and self.group.matches(group)
            and self.source.matches(source)
        )


@dataclass(frozen=True)
class Table:
    """A rule table; references to other tables are already flattened into ``rules``.

    ``name`` is None for an inline table (``table { ... }`` in a binding).
    """

    name: str | None
    rules: tuple[Rule, ...]

    def matches(self, ifname: str | None, source: Address, group: Address) -> bool:
        return any(rule.matches(ifname, source, group) for rule in self.rules)


@dataclass(frozen=True)
class FilterBinding:
    """``pinstance P ROLE IFNAME DIRECTION KIND table ...``.

    In mcproxy's terms ``out`` filters what is sent out of (or subscribed at) the interface
    and ``in`` what is accepted from it; the ``ifname`` given to ``allows`` is the *other*
    interface, the one the data or membership comes from, which the rules' ``IF`` matches.
    """

    role: Literal["upstream", "downstream"]
    ifname: str  # "*" = every interface of that role without a binding of its own
    direction: Literal["in", "out"]
    kind: Literal["whitelist", "blacklist"]
    table: Table

    def allows(self, ifname: str | None, source: Address, group: Address) -> bool:
        hit = self.table.matches(ifname, source, group)
        return hit if self.kind == "whitelist" else not hit


@dataclass(frozen=True)
class RuleMatching:
    """How several upstreams share a (S,G): ``first``, ``all`` or ``mutex`` (with a timeout)."""

    direction: Literal["in", "out"]
    mode: Literal["first", "mutex", "all"]
    timeout_ms: int | None = None  # only for mutex


#: mcproxy's proxy_instance defaults: subscribe at the first matching upstream, forward
#: to all matching upstreams.
DEFAULT_RULE_MATCHING: dict[str, RuleMatching] = {
    "in": RuleMatching("in", "first"),
    "out": RuleMatching("out", "all"),
}


Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class DownstreamOptions:
    """Per-downstream router settings (RFC 4605 §4.1 P2 version, §3 P7 querier election).

    ``subscribers``: the subscriber prefixes of the link for subscriber-based upstream
    selection; empty means "the prefixes configured on the interface".
    """

    version: int
    querier_election: bool = True
    subscribers: tuple[Network, ...] = ()


def _match_length(match: AddressMatch) -> int:
    if match.kind == "any":
        return 0
    if match.kind == "prefix":
        assert match.prefixlen is not None
        return match.prefixlen
    assert match.first is not None
    return match.first.max_prefixlen


_ANY = AddressMatch("any")


@dataclass(frozen=True)
class SelectionRecord:
    """One record of a candidate upstream: (subscriber, source, group); ``*`` is null."""

    subscriber: AddressMatch = _ANY
    source: AddressMatch = _ANY
    group: AddressMatch = _ANY

    def specificity(self) -> tuple[int, ...]:
        """Sort key, larger is more specific: which parts are set, then their lengths.

        Subscriber before source before group (draft §4.1-4.2: a subscriber prefix wins, a
        source prefix beats a group prefix, source+group beats group only); longest prefix
        inside the same kind (left open by the draft).
        """
        parts = (self.subscriber, self.source, self.group)
        return tuple(int(p.kind != "any") for p in parts) + tuple(map(_match_length, parts))

    def matches(
        self, subscribers: tuple[Network, ...], source: Address | None, group: Address
    ) -> bool:
        """Whether a request for (source or any source, group) from a link with the prefixes
        ``subscribers`` falls under this record."""
        if not self.group.matches(group):
            return False
        if self.source.kind != "any" and (source is None or not self.source.matches(source)):
            return False
        if self.subscriber.kind == "any":
            return True
        return any(
            self.subscriber.matches(net.network_address)
            and self.subscriber.matches(net.broadcast_address)
            for net in subscribers
        )

    def __str__(self) -> str:
        words = [
            f"{name} {part}"
            for name, part in (
                ("subscriber", self.subscriber),
                ("source", self.source),
                ("group", self.group),
            )
            if part.kind != "any"
        ]
        return " ".join(words) or "*"


#: The record of a candidate without ``select`` statements: everything, least specific.
CATCH_ALL = SelectionRecord()


@dataclass(frozen=True)
class Takeover:
    """When a candidate stops being usable: ``off`` (never), ``link-down``, or
    ``no-querier`` (link down, or no query heard for ``timeout`` seconds)."""

    trigger: Literal["off", "link-down", "no-querier"] = "link-down"
    timeout: float | None = None

    def __str__(self) -> str:
        if self.trigger == "no-querier":
            return f"no-querier {_number(self.timeout or 0)}s"
        return self.trigger


@dataclass(frozen=True)
class Candidate:
    """A candidate upstream: interface priority, selection records and takeover trigger."""

    ifname: str
    priority: int = 0
    records: tuple[SelectionRecord, ...] = ()
    takeover: Takeover = Takeover()


@dataclass(frozen=True)
class SwitchPolicy:
    """``revert`` (immediate | never | after) or ``migrate`` (keep | move | after)."""

    mode: str
    delay: float | None = None

    def __str__(self) -> str:
        return f"after {_number(self.delay or 0)}s" if self.mode == "after" else self.mode


DEFAULT_REVERT = SwitchPolicy("immediate")
DEFAULT_MIGRATE = SwitchPolicy("keep")
DEFAULT_OVERLAP = 1.0


@dataclass(frozen=True)
class Selection:
    """Multiple-upstream selection of an instance: one ``Candidate`` per upstream, in order."""

    candidates: tuple[Candidate, ...]
    default: str | None = None
    revert: SwitchPolicy = DEFAULT_REVERT
    migrate: SwitchPolicy = DEFAULT_MIGRATE
    overlap: float = DEFAULT_OVERLAP

    def candidate(self, ifname: str) -> Candidate | None:
        return next((c for c in self.candidates if c.ifname == ifname), None)

    def records_of(self, cand: Candidate) -> tuple[SelectionRecord, ...]:
        """Its records; without any, ``(* | * | *)``, except for the default upstream,
        which then only takes what no record matches."""
        if cand.records or cand.ifname == self.default:
            return cand.records
        return (CATCH_ALL,)


@dataclass(frozen=True)
class Instance:
    """One proxy instance: its interfaces, kernel table, timers, filters and options.

    ``rule_matching`` always holds "in" and "out"; ``downstream_options`` holds every
    downstream. Both are filled with the defaults where the file says nothing.
    """

    name: str
    table_id: int
    table_id_explicit: bool
    upstreams: tuple[str, ...]
    downstreams: tuple[str, ...]
    peerings: tuple[str, ...] = ()
    timers: Timers = field(default_factory=Timers)
    filters: tuple[FilterBinding, ...] = ()
    rule_matching: dict[str, RuleMatching] = field(
        default_factory=lambda: dict(DEFAULT_RULE_MATCHING)
    )
    downstream_options: dict[str, DownstreamOptions] = field(default_factory=dict)
    selection: Selection | None = None  # None: mcproxy's rule matching

    def interfaces(self) -> tuple[str, ...]:
        """Upstreams, downstreams and peering interfaces, in that order."""
        return self.upstreams + self.downstreams + self.peerings

    def role_of(self, ifname: str) -> Literal["upstream", "downstream", "peering"] | None:
        if ifname in self.upstreams:
            return "upstream"
        if ifname in self.downstreams:
            return "downstream"
        if ifname in self.peerings:
            return "peering"
        return None

    def filter_for(self, role: str, ifname: str, direction: str) -> FilterBinding | None:
        """The binding for this interface; one naming the interface beats one for ``*``."""
        wildcard = None
        for binding in self.filters:
            if binding.role == role and binding.direction == direction:
                if binding.ifname == ifname:
                    return binding
                if binding.ifname == "*":
                    wildcard = binding
        return wildcard

    def allows(
        self,
        role: str,
        ifname: str,
        direction: str,
        from_ifname: str | None,
        source: Address,
        group: Address,
    ) -> bool:
        """Apply ``filter_for(role, ifname, direction)``; no binding lets everything through."""
        binding = self.filter_for(role, ifname, direction)
        return binding is None or binding.allows(from_ifname, source, group)


@dataclass(frozen=True)
class Config:
    """A parsed configuration. ``path`` is where it came from and is left out of ``==``."""

    path: str = field(compare=False)
    protocol: str
    family: int
    version: int
    instances: tuple[Instance, ...]
    tables: dict[str, Table]

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def instance_of(self, ifname: str) -> Instance | None:
        """The instance that uses ``ifname`` in any role."""
        for inst in self.instances:
            if inst.role_of(ifname) is not None:
                return inst
        return None


# --- tokens --------------------------------------------------------------------------

_PUNCT = frozenset(";:.(){}|*/-")
_WORD = re.compile(r"[A-Za-z0-9_]+")
#: mcproxy's scanner turns these into keyword tokens, so unquoted they were never names
#: there; keeping them reserved lets a forgotten ';' be reported where it is.
_RESERVED = frozenset(
    {
        *("protocol", "mldv1", "mldv2", "igmpv1", "igmpv2", "igmpv3", "pinstance", "table"),
        *("upstream", "downstream", "in", "out", "whitelist", "blacklist", "rulematching"),
        *("all", "first", "mutex", "disable"),
    }
)
_NAME_GLUE = frozenset({"word", ".", "-"})
_ADDR_GLUE = frozenset({"word", ".", ":"})
_VALUE_GLUE = frozenset({"word", "."})
_KEY_GLUE = frozenset({"word", "-"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", "string", "eof" or the punctuation itself (";", "==>", ...)
    text: str
    line: int
    col: int
    start: int
    end: int

    @property
    def shown(self) -> str:
        if self.kind == "eof":
            return "end of file"
        if self.kind == "string":
            return f'"{self.text}"'
        return f"'{self.text}'"

    @property
    def end_col(self) -> int:
        return self.col + (self.end - self.start)


def _tokenize(text: str, path: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, line, line_start, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line, line_start, i = line + 1, i + 1, i + 1
            continue
        if c.isspace():
            i += 1
            continue
        col = i - line_start + 1
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 1
            if j >= n or text[j] == "\n":
                raise ConfigError(path, line, col, "unterminated quoted name (no closing '\"')")
            tokens.append(_Token("string", text[i + 1 : j], line, col, i, j + 1))
            i = j + 1
            continue
        m = _WORD.match(text, i)
        if m:
            tokens.append(_Token("word", m.group(), line, col, i, m.end()))
            i = m.end()
            continue
        if text.startswith("==>", i):
            tokens.append(_Token("==>", "==>", line, col, i, i + 3))
            i += 3
            continue
        if c in _PUNCT:
            tokens.append(_Token(c, c, line, col, i, i + 1))
            i += 1
            continue
        hint = " (did you mean '==>'?)" if c == "=" else ""
        raise ConfigError(path, line, col, f"unexpected character {c!r}{hint}")
    tokens.append(_Token("eof", "", line, n - line_start + 1, n, n))
    return tokens


# --- syntax: statements as written (phase 1) -------------------------------------------


@dataclass(frozen=True)
class _Name:
    text: str
    tok: _Token
    wildcard: bool = False  # an unquoted '*'


@dataclass(frozen=True)
class _Bound:
    addr: Address | None  # None = '*'
    text: str
    tok: _Token


@dataclass(frozen=True)
class _Part:
    kind: Literal["single", "prefix", "range"]
    lo: _Bound
    hi: _Bound | None = None
    prefixlen: tuple[int, _Token] | None = None


@dataclass(frozen=True)
class _RawRule:
    ifname: _Name | None
    group: _Part
    source: _Part


@dataclass(frozen=True)
class _RawRef:
    name: _Name


@dataclass(frozen=True)
class _RawTable:
    items: tuple[_RawRule | _RawRef | _RawTable, ...]


@dataclass(frozen=True)
class _ProtocolStmt:
    kw: _Token
    protocol: str


@dataclass(frozen=True)
class _TableStmt:
    kw: _Token
    name: _Name
    body: _RawTable


@dataclass(frozen=True)
class _InstanceStmt:
    kw: _Token
    name: _Name
    table_id: tuple[str, _Token] | None
    upstreams: tuple[_Name, ...]
    arrow: _Token
    downstreams: tuple[_Name, ...]


@dataclass(frozen=True)
class _FilterStmt:
    kw: _Token
    inst: _Name
    role: str
    ifname: _Name
    direction: str
    kind: str
    table: _RawRef | _RawTable


@dataclass(frozen=True)
class _RuleMatchingStmt:
    kw: _Token
    inst: _Name
    role: str
    role_tok: _Token
    ifname: _Name
    direction: str
    dir_tok: _Token
    mode: str
    mode_tok: _Token
    timeout: tuple[int, _Token] | None


@dataclass(frozen=True)
class _PeeringStmt:
    kw: _Token
    inst: _Name
    names: tuple[_Name, ...]


@dataclass(frozen=True)
class _TimersStmt:
    kw: _Token
    inst: _Name
    profile: tuple[str, _Token] | None
    overrides: tuple[tuple[str, float | int, _Token], ...]


@dataclass(frozen=True)
class _OptionStmt:
    kw: _Token
    inst: _Name
    ifname: _Name
    option: str  # "version" | "querier-election"
    key_tok: _Token
    value: int | bool
    value_tok: _Token


@dataclass(frozen=True)
class _UpstreamStmt:
    """``pinstance NAME upstream IF|* KEY ...`` for the multiple-upstream keys."""

    kw: _Token
    inst: _Name
    ifname: _Name
    key: str  # priority | select | default | takeover | revert | migrate | overlap
    key_tok: _Token
    value: object
    value_tok: _Token


@dataclass(frozen=True)
class _SubscribersStmt:
    kw: _Token
    inst: _Name
    ifname: _Name
    key_tok: _Token
    prefixes: tuple[_Part, ...]


def _seconds(text: str) -> float:
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
_TIMER_KEYS: dict[str, tuple[str, Callable[[str], float | int]]] = {
    "robustness": ("robustness", _count),
    "query-interval": ("query_interval", _seconds),
    "query-response-interval": ("query_response_interval", _seconds),
    "last-listener-query-interval": ("last_listener_query_interval", _seconds),
    "last-listener-query-count": ("last_listener_query_count", _count),
    "startup-query-interval": ("startup_query_interval", _seconds),
    "startup-query-count": ("startup_query_count", _count),
    "gmi-qri-factor": ("gmi_qri_factor", _factor),
}


def _alternatives(words: list[str] | tuple[str, ...]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_Stmt = (
    _ProtocolStmt
    | _TableStmt
    | _InstanceStmt
    | _FilterStmt
    | _RuleMatchingStmt
    | _PeeringStmt
    | _TimersStmt
    | _OptionStmt
    | _UpstreamStmt
    | _SubscribersStmt
)

_UPSTREAM_KEYS = ("priority", "select", "default", "takeover", "revert", "migrate", "overlap")
_SELECT_PARTS = ("subscriber", "source", "group")
_SWITCH_MODES = {"revert": ("immediate", "never", "after"), "migrate": ("keep", "move", "after")}
_MAX_PRIORITY = 65535


class _Parser:
    """Recursive descent over the token list; checks syntax only."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.toks = _tokenize(text, path)
        self.pos = 0

    # helpers
    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    @property
    def prev(self) -> _Token:
        return self.toks[self.pos - 1]

    def advance(self) -> _Token:
        t = self.toks[self.pos]
        if t.kind != "eof":
            self.pos += 1
        return t

    def error(self, tok: _Token, message: str) -> ConfigError:
        return ConfigError(self.path, tok.line, tok.col, message)

    def expected(self, what: str) -> ConfigError:
        return self.error(self.tok, f"expected {what}, found {self.tok.shown}")

    def is_kw(self, tok: _Token, *words: str) -> bool:
        return tok.kind == "word" and tok.text.lower() in words

    def expect(self, kind: str) -> _Token:
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

    def glue(self, kinds: frozenset[str]) -> tuple[str, _Token]:
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
        end = self.glue_end(_NAME_GLUE)
        text = "".join(x.text for x in self.toks[self.pos : end])
        return text.lower() not in _RESERVED

    def name(self, what: str) -> _Name:
        t = self.tok
        if t.kind == "string":
            if not t.text:
                raise self.error(t, f"empty {what}")
            self.advance()
            return _Name(t.text, t)
        if t.kind == "word":
            if not self.at_name():
                raise self.error(
                    t, f"expected {what}, found keyword {t.shown} (quote it to use it as a name)"
                )
            text, first = self.glue(_NAME_GLUE)
            return _Name(text, first)
        raise self.expected(what)

    def names(self) -> tuple[_Name, ...]:
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
    def statements(self) -> list[_Stmt]:
        result: list[_Stmt] = []
        while self.tok.kind != "eof":
            t = self.tok
            if t.kind == ";":  # an empty statement, which mcproxy skips as well
                self.advance()
                continue
            handler = _STATEMENTS.get(t.text.lower()) if t.kind == "word" else None
            if handler is None:
                raise self.error(
                    t, f"unknown statement {t.shown} (expected {_alternatives(list(_STATEMENTS))})"
                )
            self.advance()
            result.append(handler(self, t))
        return result

    def protocol(self, kw: _Token) -> _ProtocolStmt:
        t = self.tok
        by_lower = {p.lower(): p for p in PROTOCOLS}
        if t.kind != "word" or t.text.lower() not in by_lower:
            raise self.error(
                t, f"unknown protocol {t.shown} (expected {_alternatives(list(PROTOCOLS))})"
            )
        self.advance()
        self.end()
        return _ProtocolStmt(kw, by_lower[t.text.lower()])

    def table_statement(self, kw: _Token) -> _TableStmt:
        name = self.name("table name")
        body = self.table_body()
        self.end()
        return _TableStmt(kw, name, body)

    def table_body(self) -> _RawTable:
        self.expect("{")
        items: list[_RawRule | _RawRef | _RawTable] = []
        while self.tok.kind != "}":
            if not self.at_name() and self.tok.kind != "(":
                raise self.expected("a rule '[IF](GROUP | SOURCE)' or '}'")
            items.append(self.rule())
        self.advance()
        return _RawTable(tuple(items))

    def table_ref_or_body(self) -> _RawRef | _RawTable:
        if self.tok.kind == "{":
            return self.table_body()
        return _RawRef(self.name("table name or '{'"))

    def rule(self) -> _RawRule | _RawRef | _RawTable:
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
        return _RawRule(ifname, group, source)

    def part(self, what: str) -> _Part:
        lo = self.bound(what)
        if self.tok.kind == "/":
            if lo.addr is None:
                raise self.error(self.tok, "'*' cannot take a prefix length")
            self.advance()
            t = self.tok
            if t.kind != "word" or not t.text.isdigit():
                raise self.expected("a prefix length")
            self.advance()
            return _Part("prefix", lo, prefixlen=(int(t.text), t))
        if self.tok.kind == "-":
            self.advance()
            return _Part("range", lo, hi=self.bound(what))
        return _Part("single", lo)

    def bound(self, what: str) -> _Bound:
        t = self.tok
        if t.kind == "*":
            self.advance()
            return _Bound(None, "*", t)
        if t.kind in ("word", ":"):
            text, first = self.glue(_ADDR_GLUE)
            try:
                return _Bound(ip_address(text), text, first)
            except ValueError:
                raise self.error(first, f"invalid address '{text}'") from None
        raise self.expected(f"a {what} ('*', ADDR, ADDR/LEN or ADDR - ADDR)")

    def pinstance(self, kw: _Token) -> _Stmt:
        name = self.name("instance name")
        t = self.tok
        if t.kind in (":", "("):
            return self.definition(kw, name)
        handler = _PINSTANCE_STATEMENTS.get(t.text.lower()) if t.kind == "word" else None
        if handler is None:
            raise self.expected(_alternatives([":", "(", *_PINSTANCE_STATEMENTS]))
        self.advance()
        return handler(self, kw, name, t)

    def definition(self, kw: _Token, name: _Name) -> _InstanceStmt:
        table_id = None
        if self.tok.kind == "(":
            self.advance()
            if self.tok.kind not in _NAME_GLUE:
                raise self.expected("a table id")
            text, first = self.glue(_NAME_GLUE)
            table_id = (text, first)
            self.expect(")")
        self.expect(":")
        upstreams = self.names()
        arrow = self.expect("==>")
        downstreams = self.names()
        self.end()
        return _InstanceStmt(kw, name, table_id, upstreams, arrow, downstreams)

    def interface_binding(self, kw: _Token, inst: _Name, role_tok: _Token) -> _Stmt:
        role = role_tok.text.lower()
        if self.tok.kind == "*":
            ifname = _Name("*", self.advance(), wildcard=True)
        else:
            ifname = self.name(f"{role} interface name or '*'")
        if self.is_kw(self.tok, "in", "out"):
            return self.direction_binding(kw, inst, role_tok, ifname)
        if role == "downstream":
            return self.downstream_option(kw, inst, ifname)
        return self.upstream_option(kw, inst, ifname)

    def direction_binding(
        self, kw: _Token, inst: _Name, role_tok: _Token, ifname: _Name
    ) -> _FilterStmt | _RuleMatchingStmt:
        role = role_tok.text.lower()
        dir_tok = self.advance()
        direction = dir_tok.text.lower()
        if self.is_kw(self.tok, "whitelist", "blacklist"):
            kind = self.advance().text.lower()
            self.expect_kw("table")
            table = self.table_ref_or_body()
            self.end()
            return _FilterStmt(kw, inst, role, ifname, direction, kind, table)
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
        return _RuleMatchingStmt(
            kw, inst, role, role_tok, ifname, direction, dir_tok, mode, mode_tok, timeout
        )

    def option_key(self, options: tuple[str, ...]) -> tuple[str, _Token]:
        if self.tok.kind != "word":
            raise self.expected(_alternatives(options))
        key, key_tok = self.glue(_KEY_GLUE)
        key = key.lower()
        if key not in options:
            raise self.error(key_tok, f"expected {_alternatives(options)}, found '{key}'")
        return key, key_tok

    def duration(self, what: str) -> tuple[float, _Token]:
        if self.tok.kind != "word":
            raise self.expected(f"a duration for '{what}'")
        text, tok = self.glue(_VALUE_GLUE)
        try:
            return _seconds(text), tok
        except ValueError as exc:
            raise self.error(tok, f"bad value '{text}' for '{what}': {exc}") from None

    def upstream_option(self, kw: _Token, inst: _Name, ifname: _Name) -> _UpstreamStmt:
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
            parts: dict[str, tuple[_Part, _Token]] = {}
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
        elif key in _SWITCH_MODES:
            mode, _ = self.option_key(_SWITCH_MODES[key])
            value = (mode, self.duration(key)[0] if mode == "after" else None)
        elif key == "overlap":
            value = self.duration(key)[0]
        self.end()
        return _UpstreamStmt(kw, inst, ifname, key, key_tok, value, value_tok)

    def downstream_option(
        self, kw: _Token, inst: _Name, ifname: _Name
    ) -> _OptionStmt | _SubscribersStmt:
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
            return _SubscribersStmt(kw, inst, ifname, key_tok, tuple(prefixes))
        value_tok = self.tok
        if key == "version":
            if value_tok.kind != "word" or not value_tok.text.isdigit():
                raise self.expected("a version number")
            value: int | bool = int(self.advance().text)
        else:
            value = self.expect_kw("on", "off") == "on"
        self.end()
        return _OptionStmt(kw, inst, ifname, key, key_tok, value, value_tok)

    def peering(self, kw: _Token, inst: _Name, _t: _Token) -> _PeeringStmt:
        names = self.names()
        if not names:
            raise self.expected("a peering interface name")
        self.end()
        return _PeeringStmt(kw, inst, names)

    def timers(self, kw: _Token, inst: _Name, _t: _Token) -> _TimersStmt:
        profile: tuple[str, _Token] | None = None
        overrides: list[tuple[str, float | int, _Token]] = []
        while self.tok.kind == "word" and not self.at_new_statement():
            key, key_tok = self.glue(_KEY_GLUE)
            key = key.lower()
            if key == "profile":
                if profile is not None:
                    raise self.error(key_tok, "'profile' given twice")
                t = self.tok
                if t.kind != "word" or t.text.lower() not in PROFILES:
                    raise self.expected(f"a timers profile ({_alternatives(list(PROFILES))})")
                profile = (self.advance().text.lower(), key_tok)
                continue
            spec = _TIMER_KEYS.get(key)
            if spec is None:
                known = ", ".join(_TIMER_KEYS)
                raise self.error(
                    key_tok, f"unknown timer '{key}' (expected 'profile' or one of {known})"
                )
            if self.tok.kind != "word":
                raise self.expected(f"a value for '{key}'")
            text, value_tok = self.glue(_VALUE_GLUE)
            try:
                value = spec[1](text)
            except ValueError as exc:
                raise self.error(value_tok, f"bad value '{text}' for '{key}': {exc}") from None
            overrides.append((spec[0], value, key_tok))
        if profile is None and not overrides:
            raise self.expected("'profile' or a timer name")
        self.end()
        return _TimersStmt(kw, inst, profile, tuple(overrides))


#: First word of a statement -> parser. New statement kinds go here.
_STATEMENTS: dict[str, Callable[[_Parser, _Token], _Stmt]] = {
    "protocol": _Parser.protocol,
    "table": _Parser.table_statement,
    "pinstance": _Parser.pinstance,
}
#: Word after ``pinstance NAME`` -> parser (a definition starts with ':' or '(' instead).
#: New per-instance statements (e.g. multiple-upstream selection records) go here, with a
#: matching entry in ``_Builder.APPLY``.
_PINSTANCE_STATEMENTS: dict[str, Callable[[_Parser, _Token, _Name, _Token], _Stmt]] = {
    "upstream": _Parser.interface_binding,
    "downstream": _Parser.interface_binding,
    "peering": _Parser.peering,
    "timers": _Parser.timers,
}


# --- meaning: checks and the typed objects (phase 2) -----------------------------------


@dataclass
class _InstanceDraft:
    stmt: _InstanceStmt
    table_id: int | None
    filters: dict[tuple[str, str, str], tuple[FilterBinding, _Token]] = field(default_factory=dict)
    rule_matching: dict[str, tuple[RuleMatching, _Token]] = field(default_factory=dict)
    peerings: list[str] = field(default_factory=list)
    options: dict[tuple[str, str], tuple[int | bool, _Token]] = field(default_factory=dict)
    subscribers: dict[str, tuple[tuple[Network, ...], _Token]] = field(default_factory=dict)
    # multiple upstreams: (ifname or "*", key) -> (value, token); records per upstream
    upstream: dict[tuple[str, str], tuple[object, _Token]] = field(default_factory=dict)
    records: dict[str, list[tuple[SelectionRecord, _Token]]] = field(default_factory=dict)
    selection_kw: _Token | None = None
    profile: tuple[str, _Token] | None = None
    overrides: dict[str, float | int] = field(default_factory=dict)
    timers_kw: _Token | None = None

    @property
    def name(self) -> str:
        return self.stmt.name.text


class _Builder:
    """Turns statements into a ``Config``: protocol, instances, tables, then the rest."""

    def __init__(self, path: str, stmts: list[_Stmt]) -> None:
        self.path = path
        self.stmts = stmts
        self.protocol = DEFAULT_PROTOCOL
        self.family, self.version = PROTOCOLS[DEFAULT_PROTOCOL]
        self.drafts: dict[str, _InstanceDraft] = {}
        self.owners: dict[str, tuple[str, str, _Token]] = {}
        self.raw_tables: dict[str, _TableStmt] = {}
        self.tables: dict[str, Table] = {}

    def error(self, tok: _Token, message: str) -> ConfigError:
        return ConfigError(self.path, tok.line, tok.col, message)

    def build(self) -> Config:
        # Protocol first because it fixes the address family every later check needs.
        protocols = [s for s in self.stmts if isinstance(s, _ProtocolStmt)]
        if len(protocols) > 1:
            raise self.error(
                protocols[1].kw, f"protocol is already set on line {protocols[0].kw.line}"
            )
        if protocols:
            self.protocol = protocols[0].protocol
            self.family, self.version = PROTOCOLS[self.protocol]
        # Definitions before uses, so a statement may name an instance or table that the
        # file defines further down.
        for s in self.stmts:
            if isinstance(s, _InstanceStmt):
                self.define(s)
        self.assign_table_ids()
        for s in self.stmts:
            if isinstance(s, _TableStmt):
                if s.name.text in self.raw_tables:
                    line = self.raw_tables[s.name.text].name.tok.line
                    raise self.error(
                        s.name.tok, f"table '{s.name.text}' is already defined on line {line}"
                    )
                self.raw_tables[s.name.text] = s
        for name, s in self.raw_tables.items():
            self.named_rules(_Name(name, s.name.tok), [])
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
    def claim(self, inst: str, role: str, name: _Name) -> None:
        owner = self.owners.get(name.text)
        if owner is None:
            self.owners[name.text] = (inst, role, name.tok)
            return
        other, other_role, tok = owner
        if other != inst:
            msg = f"interface '{name.text}' already belongs to instance '{other}' (line {tok.line})"
        elif other_role == role:
            msg = f"interface '{name.text}' is listed twice in instance '{inst}'"
        else:
            msg = f"interface '{name.text}' is both {other_role} and {role} of instance '{inst}'"
        raise self.error(name.tok, msg)

    def define(self, s: _InstanceStmt) -> None:
        name = s.name.text
        if name in self.drafts:
            line = self.drafts[name].stmt.name.tok.line
            raise self.error(s.name.tok, f"instance '{name}' is already defined on line {line}")
        if not s.upstreams:
            raise self.error(s.arrow, f"instance '{name}' has no upstream interface before '==>'")
        if not s.downstreams:
            raise self.error(s.arrow, f"instance '{name}' has no downstream interface after '==>'")
        for up in s.upstreams:
            self.claim(name, "upstream", up)
        for down in s.downstreams:
            self.claim(name, "downstream", down)
        table_id = None
        if s.table_id is not None:
            text, tok = s.table_id
            top = _MAX_TABLE_ID[self.family]
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
        implicit = [d for d in self.drafts.values() if d.table_id is None]
        if len(self.drafts) == 1 and implicit:
            implicit[0].table_id = DEFAULT_TABLE[self.family]
            return
        taken = {d.table_id for d in self.drafts.values()}
        next_id = AUTO_TABLE_BASE
        for draft in implicit:
            while next_id in taken:
                next_id += 1
            draft.table_id = next_id
            taken.add(next_id)

    def draft(self, name: _Name) -> _InstanceDraft:
        draft = self.drafts.get(name.text)
        if draft is None:
            raise self.error(name.tok, f"unknown instance '{name.text}'")
        return draft

    def check_member(self, draft: _InstanceDraft, role: str, ifname: _Name) -> None:
        if ifname.wildcard:
            return
        members = draft.stmt.upstreams if role == "upstream" else draft.stmt.downstreams
        if ifname.text not in {m.text for m in members}:
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
            for direction, default in DEFAULT_RULE_MATCHING.items()
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

    def selection(self, d: _InstanceDraft) -> Selection | None:
        if d.selection_kw is None:
            return None
        if "in" in d.rule_matching:
            tok = d.rule_matching["in"][1]
            raise self.error(
                tok,
                f"'rulematching in' cannot be combined with upstream selection "
                f"(line {d.selection_kw.line}); remove one of them",
            )

        def value(ifname: str, key: str, default: object) -> object:
            return d.upstream[(ifname, key)][0] if (ifname, key) in d.upstream else default

        every = value("*", "takeover", Takeover())
        candidates = tuple(
            Candidate(
                ifname=up.text,
                priority=int(value(up.text, "priority", 0)),  # type: ignore[call-overload]
                records=tuple(r for r, _ in d.records.get(up.text, [])),
                takeover=value(up.text, "takeover", every),  # type: ignore[arg-type]
            )
            for up in d.stmt.upstreams
        )
        defaults = [name for (name, key) in d.upstream if key == "default"]
        return Selection(
            candidates=candidates,
            default=defaults[0] if defaults else None,
            revert=value("*", "revert", DEFAULT_REVERT),  # type: ignore[arg-type]
            migrate=value("*", "migrate", DEFAULT_MIGRATE),  # type: ignore[arg-type]
            overlap=float(value("*", "overlap", DEFAULT_OVERLAP)),  # type: ignore[arg-type]
        )

    # tables
    def named_rules(self, ref: _Name, stack: list[str]) -> tuple[Rule, ...]:
        name = ref.text
        if name in self.tables:
            return self.tables[name].rules
        stmt = self.raw_tables.get(name)
        if stmt is None:
            raise self.error(ref.tok, f"unknown table '{name}'")
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name) :], name])
            raise self.error(ref.tok, f"table cycle: {cycle}")
        rules = self.flatten(stmt.body, [*stack, name])
        self.tables[name] = Table(name, rules)
        return rules

    def flatten(self, raw: _RawTable, stack: list[str]) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        for item in raw.items:
            if isinstance(item, _RawRule):
                ifname = item.ifname.text if item.ifname else None
                rules.append(Rule(ifname, self.match(item.group), self.match(item.source)))
            elif isinstance(item, _RawRef):
                rules.extend(self.named_rules(item.name, stack))
            else:
                rules.extend(self.flatten(item, stack))
        return tuple(rules)

    def table(self, raw: _RawRef | _RawTable) -> Table:
        if isinstance(raw, _RawRef):
            self.named_rules(raw.name, [])
            return self.tables[raw.name.text]
        return Table(None, self.flatten(raw, []))

    def address(self, bound: _Bound) -> Address | None:
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

    def match(self, part: _Part) -> AddressMatch:
        lo = self.address(part.lo)
        if part.kind == "single":
            return AddressMatch.single(lo) if lo is not None else AddressMatch.wildcard()
        if part.kind == "prefix":
            assert part.prefixlen is not None and part.lo.addr is not None
            length, tok = part.prefixlen
            top = 32 if self.family == 4 else 128
            if length > top:
                raise self.error(tok, f"prefix length {length} out of range 0..{top}")
            return AddressMatch.network(f"{part.lo.addr}/{length}")
        assert part.hi is not None
        hi = self.address(part.hi)
        cls = IPv4Address if self.family == 4 else IPv6Address
        # An open bound ('*' or the unspecified address) stretches to the family's end.
        first = lo if lo is not None else cls(0)
        last = hi if hi is not None else cls(2 ** (32 if self.family == 4 else 128) - 1)
        if first > last:
            raise self.error(part.lo.tok, f"range start {first} is above range end {last}")
        return AddressMatch.between(first, last)

    # the other statements, in file order
    def apply_filter(self, s: _FilterStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, s.role, s.ifname)
        key = (s.role, s.ifname.text, s.direction)
        if key in d.filters:
            raise self.error(
                s.ifname.tok,
                f"the {s.direction} filter of {s.role} '{s.ifname.text}' is already set "
                f"on line {d.filters[key][1].line}",
            )
        binding = FilterBinding(s.role, s.ifname.text, s.direction, s.kind, self.table(s.table))
        d.filters[key] = (binding, s.kw)

    def apply_rule_matching(self, s: _RuleMatchingStmt) -> None:
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
        d.rule_matching[s.direction] = (RuleMatching(s.direction, s.mode, timeout), s.kw)

    def apply_peering(self, s: _PeeringStmt) -> None:
        d = self.draft(s.inst)
        for name in s.names:
            self.claim(d.name, "peering", name)
            d.peerings.append(name.text)

    def apply_timers(self, s: _TimersStmt) -> None:
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

    def apply_option(self, s: _OptionStmt) -> None:
        d = self.draft(s.inst)
        self.check_member(d, "downstream", s.ifname)
        if s.option == "version":
            top = _MAX_VERSION[self.family]
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

    def prefix(self, part: _Part, what: str) -> AddressMatch:
        """A selection part: '*', an address or a prefix (no ranges: they have no length)."""
        if part.kind == "range":
            raise self.error(part.lo.tok, f"a {what} is '*', an address or a prefix, not a range")
        return self.match(part)

    def apply_upstream(self, s: _UpstreamStmt) -> None:
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
            record = SelectionRecord(
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
            value = Takeover(trigger, timeout)
        elif s.key in _SWITCH_MODES:
            mode, delay = s.value  # type: ignore[misc]
            if mode == "after" and not delay:
                raise self.error(s.value_tok, f"the {s.key} delay must be positive")
            value = SwitchPolicy(mode, delay)
        d.upstream[key] = (value, s.key_tok)

    def apply_subscribers(self, s: _SubscribersStmt) -> None:
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
            nets.append(ip_network(f"{match.first}/{_match_length(match)}"))
        d.subscribers[s.ifname.text] = (tuple(nets), s.key_tok)

    APPLY: dict[type, Callable[[_Builder, _Stmt], None]] = {
        _FilterStmt: apply_filter,
        _RuleMatchingStmt: apply_rule_matching,
        _PeeringStmt: apply_peering,
        _TimersStmt: apply_timers,
        _OptionStmt: apply_option,
        _UpstreamStmt: apply_upstream,
        _SubscribersStmt: apply_subscribers,
    }


def parse(text: str, path: str = "<string>") -> Config:
    """Parse configuration text; ``path`` only names it in errors."""
    return _Builder(path, _Parser(text, path).statements()).build()


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


# --- rendering -----------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_]+(?:[.-]+[A-Za-z0-9_]+)*")


def _q(name: str) -> str:
    if not name or '"' in name or "\n" in name:
        raise ValueError(f"name {name!r} cannot be written in mcproxy.conf")
    if _BARE.fullmatch(name) and name.lower() not in _RESERVED:
        return name
    return f'"{name}"'


def _number(value: float | int) -> str:
    # Positional notation (never 1e-05, which the grammar cannot read) that reads back equal.
    if float(value).is_integer():
        return str(int(value))
    return format(Decimal(repr(float(value))), "f")


def _render_rule(rule: Rule) -> str:
    prefix = _q(rule.ifname) if rule.ifname is not None else ""
    return f"{prefix}({rule.group} | {rule.source})"


def _render_timers(timers: Timers) -> str | None:
    """``timers`` arguments for ``timers``, from the profile needing the fewest overrides."""
    best: tuple[int, str, list[str]] | None = None
    for profile, base in PROFILES.items():
        diff = [f.name for f in fields(Timers) if getattr(timers, f.name) != getattr(base, f.name)]
        if any(getattr(timers, name) is None for name in diff):
            continue  # the grammar cannot set a field back to "derived"
        if best is None or len(diff) < best[0]:
            best = (len(diff), profile, diff)
    if best is None:
        raise ValueError(f"timers {timers} cannot be written in mcproxy.conf")
    _, profile, diff = best
    words = [] if profile == "default" else ["profile", profile]
    keys = {field_name: key for key, (field_name, _) in _TIMER_KEYS.items()}
    for name in diff:
        value = getattr(timers, name)
        unit = "s" if _TIMER_KEYS[keys[name]][1] is _seconds else ""
        words += [keys[name], _number(value) + unit]
    return " ".join(words) or None


def _render_table(table: Table, config: Config) -> str:
    if table.name is not None and config.tables.get(table.name) == table:
        return f"table {_q(table.name)}"
    return "table {" + " ".join(_render_rule(r) for r in table.rules) + "}"


def _render_selection(p: str, sel: Selection) -> list[str]:
    out = []
    for c in sel.candidates:
        up = f"{p} upstream {_q(c.ifname)}"
        if c.priority:
            out.append(f"{up} priority {c.priority};")
        for record in c.records:
            parts = "" if record == CATCH_ALL else f" {record}"
            out.append(f"{up} select{parts};")
        if sel.default == c.ifname:
            out.append(f"{up} default;")
        if c.takeover != Takeover():
            out.append(f"{up} takeover {c.takeover};")
    for key, value, default in (
        ("revert", sel.revert, DEFAULT_REVERT),
        ("migrate", sel.migrate, DEFAULT_MIGRATE),
    ):
        if value != default:
            out.append(f"{p} upstream * {key} {value};")
    if sel.overlap != DEFAULT_OVERLAP:
        out.append(f"{p} upstream * overlap {_number(sel.overlap)}s;")
    if not out:
        # Every value is a default: one statement still says that selection is on.
        out.append(f"{p} upstream * revert {sel.revert};")
    return out


def render(config: Config) -> str:
    """Write ``config`` in the grammar, leaving defaults out.

    ``parse(render(c)) == c`` for every ``c`` that ``parse`` made. Hand-built configs read
    back equal when their implicit table ids follow the assignment rule above.
    """
    out = [f"protocol {config.protocol};"]
    for table in config.tables.values():
        assert table.name is not None
        out.append("")
        if not table.rules:
            out.append(f"table {_q(table.name)} {{}};")
            continue
        out.append(f"table {_q(table.name)} {{")
        out += [f"    {_render_rule(rule)}" for rule in table.rules]
        out.append("};")
    for inst in config.instances:
        p = f"pinstance {_q(inst.name)}"
        table_id = f"({inst.table_id})" if inst.table_id_explicit else ""
        ups = " ".join(map(_q, inst.upstreams))
        downs = " ".join(map(_q, inst.downstreams))
        out += ["", f"{p}{table_id}: {ups} ==> {downs};"]
        if inst.peerings:
            out.append(f"{p} peering {' '.join(map(_q, inst.peerings))};")
        timers = _render_timers(inst.timers)
        if timers:
            out.append(f"{p} timers {timers};")
        for direction, default in DEFAULT_RULE_MATCHING.items():
            rm = inst.rule_matching.get(direction, default)
            if rm != default:
                timeout = f" {rm.timeout_ms}" if rm.mode == "mutex" else ""
                out.append(f"{p} upstream * {direction} rulematching {rm.mode}{timeout};")
        for b in inst.filters:
            ifname = "*" if b.ifname == "*" else _q(b.ifname)
            table = _render_table(b.table, config)
            out.append(f"{p} {b.role} {ifname} {b.direction} {b.kind} {table};")
        for ifname in inst.downstreams:
            opts = inst.downstream_options.get(ifname, DownstreamOptions(config.version))
            if opts.version != config.version:
                out.append(f"{p} downstream {_q(ifname)} version {opts.version};")
            if not opts.querier_election:
                out.append(f"{p} downstream {_q(ifname)} querier-election off;")
            if opts.subscribers:
                nets = " ".join(map(str, opts.subscribers))
                out.append(f"{p} downstream {_q(ifname)} subscribers {nets};")
        if inst.selection is not None:
            out += _render_selection(p, inst.selection)
    return "\n".join(out) + "\n"
