"""Statements as written (phase 1 of parsing): raw names, addresses and tables with their tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.config.tokens import Token
from proxy.messages import Address


@dataclass(frozen=True)
class Name:
    text: str
    tok: Token
    wildcard: bool = False  # an unquoted '*'


@dataclass(frozen=True)
class Bound:
    addr: Address | None  # None = '*'
    text: str
    tok: Token


@dataclass(frozen=True)
class Part:
    kind: Literal["single", "prefix", "range"]
    lo: Bound
    hi: Bound | None = None
    prefixlen: tuple[int, Token] | None = None


@dataclass(frozen=True)
class RawRule:
    ifname: Name | None
    group: Part
    source: Part


@dataclass(frozen=True)
class RawRef:
    name: Name


@dataclass(frozen=True)
class RawTable:
    items: tuple[RawRule | RawRef | RawTable, ...]


@dataclass(frozen=True)
class ProtocolStmt:
    kw: Token
    protocol: str


@dataclass(frozen=True)
class TableStmt:
    kw: Token
    name: Name
    body: RawTable


@dataclass(frozen=True)
class InstanceStmt:
    kw: Token
    name: Name
    table_id: tuple[str, Token] | None
    upstreams: tuple[Name, ...]
    arrow: Token
    downstreams: tuple[Name, ...]


@dataclass(frozen=True)
class FilterStmt:
    kw: Token
    inst: Name
    role: str
    ifname: Name
    direction: str
    kind: str
    table: RawRef | RawTable


@dataclass(frozen=True)
class RuleMatchingStmt:
    kw: Token
    inst: Name
    role: str
    role_tok: Token
    ifname: Name
    direction: str
    dir_tok: Token
    mode: str
    mode_tok: Token
    timeout: tuple[int, Token] | None


@dataclass(frozen=True)
class PeeringStmt:
    kw: Token
    inst: Name
    names: tuple[Name, ...]


@dataclass(frozen=True)
class TimersStmt:
    kw: Token
    inst: Name
    profile: tuple[str, Token] | None
    overrides: tuple[tuple[str, float | int, Token], ...]


@dataclass(frozen=True)
class OptionStmt:
    kw: Token
    inst: Name
    ifname: Name
    option: str  # "version" | "querier-election"
    key_tok: Token
    value: int | bool
    value_tok: Token


@dataclass(frozen=True)
class UpstreamStmt:
    """``pinstance NAME upstream IF|* KEY ...`` for the multiple-upstream keys."""

    kw: Token
    inst: Name
    ifname: Name
    key: str  # priority | select | default | takeover | revert | migrate | overlap
    key_tok: Token
    value: object
    value_tok: Token


@dataclass(frozen=True)
class SubscribersStmt:
    kw: Token
    inst: Name
    ifname: Name
    key_tok: Token
    prefixes: tuple[Part, ...]


Stmt = (
    ProtocolStmt
    | TableStmt
    | InstanceStmt
    | FilterStmt
    | RuleMatchingStmt
    | PeeringStmt
    | TimersStmt
    | OptionStmt
    | UpstreamStmt
    | SubscribersStmt
)
