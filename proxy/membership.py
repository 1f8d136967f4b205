"""Source-filter membership state of one group: the merge and the host-side report deltas.

A ``MembershipState`` is the timer-free view of a group on one interface (RFC 4605 §4.1
step 2): INCLUDE(sources to receive) or EXCLUDE(sources to block). The querier produces one
per downstream group; ``merge`` combines them into the proxy's database record, and
``state_change_records`` / ``current_state_record`` / ``group_source_query_answer`` turn
database records into what the upstream host side sends (RFC 3376 §5, RFC 3810 §6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.messages import Address, FilterMode, GroupRecord, RecordType

__all__ = [
    "NO_INTEREST",
    "MembershipState",
    "current_state_record",
    "group_source_query_answer",
    "merge",
    "state_change_records",
]


@dataclass(frozen=True)
class MembershipState:
    """Filter mode and source list of one group (sources: a frozenset of addresses)."""

    mode: FilterMode
    sources: frozenset = frozenset()

    def __post_init__(self) -> None:
        # Accept any iterable so callers can pass lists or sets; the stored value is hashable.
        if not isinstance(self.sources, frozenset):
            object.__setattr__(self, "sources", frozenset(self.sources))

    @classmethod
    def include(cls, sources: Iterable[Address] = ()) -> MembershipState:
        """INCLUDE(sources)."""
        return cls(FilterMode.INCLUDE, frozenset(sources))

    @classmethod
    def exclude(cls, sources: Iterable[Address] = ()) -> MembershipState:
        """EXCLUDE(sources); ``exclude()`` is the any-source (v1/v2 style) join."""
        return cls(FilterMode.EXCLUDE, frozenset(sources))

    @property
    def is_include(self) -> bool:
        """True in INCLUDE mode."""
        return self.mode is FilterMode.INCLUDE

    @property
    def has_interest(self) -> bool:
        """False only for INCLUDE({}), the state of a group nobody listens to."""
        return not (self.is_include and not self.sources)

    def allows(self, source: Address) -> bool:
        """Whether traffic from ``source`` is wanted under this state."""
        if self.is_include:
            return source in self.sources
        return source not in self.sources

    def __str__(self) -> str:
        mode = "IN" if self.is_include else "EX"
        return f"{mode}{{{', '.join(str(s) for s in sorted(self.sources))}}}"


#: The state of a group with no listener: INCLUDE({}), the neutral element of ``merge``.
NO_INTEREST = MembershipState(FilterMode.INCLUDE, frozenset())


def merge(states: Iterable[MembershipState]) -> MembershipState:
    """Merge per-interface states into one record (RFC 3376 §3.2, RFC 4605 §4.1)."""
    included: set = set()
    excluded: frozenset | None = None
    for state in states:
        if state.is_include:
            included |= state.sources
        elif excluded is None:
            excluded = state.sources
        else:
            excluded = excluded & state.sources
    if excluded is None:
        return MembershipState.include(included)
    # A source one interface includes must not stay blocked because another excludes it.
    return MembershipState.exclude(excluded - included)


def _record(rtype: RecordType, group: Address, sources: Iterable[Address]) -> GroupRecord:
    return GroupRecord(rtype, group, tuple(sorted(sources)))


def state_change_records(
    group: Address, old: MembershipState, new: MembershipState
) -> list[GroupRecord]:
    """Records a host sends when its state for ``group`` changes (RFC 3376 §5.1).

    Empty ALLOW/BLOCK records are omitted; TO_IN/TO_EX are always sent on a mode change
    (TO_IN({}) is how a v3 host leaves).
    """
    if old.mode is not new.mode:
        rtype = RecordType.CHANGE_TO_INCLUDE if new.is_include else RecordType.CHANGE_TO_EXCLUDE
        return [_record(rtype, group, new.sources)]
    if new.is_include:
        allow, block = new.sources - old.sources, old.sources - new.sources
    else:
        allow, block = old.sources - new.sources, new.sources - old.sources
    records = []
    if allow:
        records.append(_record(RecordType.ALLOW_NEW_SOURCES, group, allow))
    if block:
        records.append(_record(RecordType.BLOCK_OLD_SOURCES, group, block))
    return records


def current_state_record(group: Address, state: MembershipState) -> GroupRecord | None:
    """IS_IN/IS_EX record answering a General or Group-Specific Query; None if no interest."""
    if not state.has_interest:
        return None
    rtype = RecordType.MODE_IS_INCLUDE if state.is_include else RecordType.MODE_IS_EXCLUDE
    return _record(rtype, group, state.sources)


def group_source_query_answer(
    state: MembershipState, queried_sources: Iterable[Address]
) -> frozenset:
    """Sources to report in IS_IN for a Group-and-Source Query; empty means no answer.

    RFC 3376 §5.2: IN(A) queried for B answers IS_IN(A*B); EX(A) answers IS_IN(B-A).
    """
    queried = frozenset(queried_sources)
    if state.is_include:
        return queried & state.sources
    return queried - state.sources
