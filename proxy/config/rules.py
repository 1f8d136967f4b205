"""Filter tables: address matches, rules, tables, filter bindings and rule matching."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal

from proxy.messages import Address


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


def match_length(match: AddressMatch) -> int:
    if match.kind == "any":
        return 0
    if match.kind == "prefix":
        assert match.prefixlen is not None
        return match.prefixlen
    assert match.first is not None
    return match.first.max_prefixlen
