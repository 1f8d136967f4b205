"""The configured multiple-upstream selection: records, candidates, takeover, revert/migrate."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from proxy.config.rules import AddressMatch, Network, match_length
from proxy.messages import Address


def number(value: float | int) -> str:
    """``value`` as the grammar writes numbers (``str(Takeover)`` and ``render`` use it)."""
    # Positional notation (never 1e-05, which the grammar cannot read) that reads back equal.
    if float(value).is_integer():
        return str(int(value))
    return format(Decimal(repr(float(value))), "f")


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
        return tuple(int(p.kind != "any") for p in parts) + tuple(map(match_length, parts))

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
            return f"no-querier {number(self.timeout or 0)}s"
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
        return f"after {number(self.delay or 0)}s" if self.mode == "after" else self.mode


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
