"""Who gets what: interface roles, filters, rule matching across upstreams, and peering.

Pure decisions, no sockets: given an instance's configuration, the downstream interest and
where a flow arrived, say which interfaces the kernel must forward it to and which
subscriptions each upstream (and peering) must hold.

Filter bindings follow mcproxy:

- ``upstream IF in``: data accepted from IF, and what may be subscribed on IF;
- ``upstream IF out``: data from local sources that may be sent out IF;
- ``downstream IF in``: data from sources on IF accepted, and subscriptions accepted on IF;
- ``downstream IF out``: data that may be forwarded to IF.

Peering interfaces (RFC 7287) are restricted downstreams for local sources (X3) and
preferred upstreams for listeners (X4): data from them goes to downstreams only, and
nothing that came from an upstream or a peering is ever sent out a peering.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from proxy.config import FilterBinding, Instance
from proxy.membership import NO_INTEREST, MembershipState, merge
from proxy.messages import Address, FilterMode


class Role(enum.Enum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    PEERING = "peering"


def filter_state(
    binding: FilterBinding | None, ifname: str, group: Address, state: MembershipState
) -> MembershipState:
    """Restrict a subscription to what ``binding`` lets through for ``ifname``.

    INCLUDE lists are filtered source by source. An EXCLUDE (any-source) subscription
    through a filter that names single sources for the group becomes INCLUDE of those
    sources (mcproxy's example: EX({}) on an SSM-restricted link -> IN(S)); a blacklist of
    single sources is added to the exclude list. Prefix or range source rules cannot be
    listed, so such subscriptions stay as they are and the data plane enforces the filter.
    """
    if binding is None or not state.has_interest:
        return state
    if state.mode is FilterMode.INCLUDE:
        return MembershipState.include(s for s in state.sources if binding.allows(ifname, s, group))
    everything, listed = source_scope(binding, ifname, group)
    whitelist = binding.kind == "whitelist"
    if everything:
        # The table matches every source of this group.
        return state if whitelist else NO_INTEREST
    if listed is None:
        return state
    if whitelist:
        return MembershipState.include(listed - state.sources)
    return MembershipState.exclude(state.sources | listed)


def source_scope(
    binding: FilterBinding, ifname: str, group: Address
) -> tuple[bool, frozenset | None]:
    """(matches every source, the single sources matched or None if not listable)."""
    everything = False
    listed: set = set()
    for rule in binding.table.rules:
        if rule.ifname not in (None, "*", ifname) or not rule.group.matches(group):
            continue
        if rule.source.kind == "any":
            everything = True
        elif rule.source.kind == "address":
            listed.add(rule.source.first)
        else:
            return everything, None
    return everything, frozenset(listed)


class Policy:
    """Forwarding and subscription decisions of one proxy instance."""

    def __init__(self, cfg: Instance) -> None:
        self.cfg = cfg
        self.roles: dict[str, Role] = {}
        for name in cfg.upstreams:
            self.roles[name] = Role.UPSTREAM
        for name in cfg.downstreams:
            self.roles[name] = Role.DOWNSTREAM
        for name in cfg.peerings:
            self.roles[name] = Role.PEERING

    def add_downstream(self, ifname: str) -> None:
        self.roles[ifname] = Role.DOWNSTREAM

    def remove(self, ifname: str) -> None:
        self.roles.pop(ifname, None)

    def names(self, role: Role) -> list[str]:
        return [n for n, r in self.roles.items() if r is role]

    def _binding(self, role: Role, ifname: str, direction: str) -> FilterBinding | None:
        if role is Role.PEERING:
            return None
        return self.cfg.filter_for(role.value, ifname, direction)

    def _allows(
        self, role: Role, ifname: str, direction: str, s: Address, g: Address, origin: str
    ) -> bool:
        """Apply the binding of ``ifname``; ``origin`` is where the data/membership comes from."""
        binding = self._binding(role, ifname, direction)
        return binding is None or binding.allows(origin, s, g)

    def rule_matching(self, direction: str) -> tuple[str, int]:
        rm = self.cfg.rule_matching.get(direction)
        return (rm.mode, rm.timeout_ms or 0) if rm else ("first", 0)

    def accepts(self, iif: str, source: Address, group: Address) -> bool:
        """Whether data arriving on ``iif`` passes its ``in`` filter."""
        role = self.roles.get(iif)
        return role is not None and self._allows(role, iif, "in", source, group, iif)

    def oifs(
        self,
        iif: str,
        source: Address,
        group: Address,
        wants: Callable[[str, Address, Address], bool],
    ) -> set[str]:
        """Interfaces an (S,G) flow arriving on ``iif`` is forwarded to.

        ``wants(ifname, S, G)`` tells whether the router side of a downstream or peering
        interface has a listener for the flow (and may forward there, e.g. is querier).
        """
        role = self.roles.get(iif)
        if role is None or not self.accepts(iif, source, group):
            return set()
        out = {
            d
            for d in self.names(Role.DOWNSTREAM)
            if d != iif
            and wants(d, source, group)
            and self._allows(Role.DOWNSTREAM, d, "out", source, group, iif)
        }
        if role is Role.DOWNSTREAM:
            # A local source: upstream(s) per "upstream * out" rule matching, and the
            # peerings whose peer subscribed (RFC 7287 §5.3).
            ups = [
                u
                for u in self.names(Role.UPSTREAM)
                if self._allows(Role.UPSTREAM, u, "out", source, group, iif)
            ]
            mode, _ = self.rule_matching("out")
            out |= set(ups if mode == "all" else ups[:1])
            out |= {p for p in self.names(Role.PEERING) if wants(p, source, group)}
        return out

    def subscriptions(
        self,
        group: Address,
        downstream_states: Mapping[str, MembershipState],
        peered_sources: frozenset = frozenset(),
        mutex_sources: Mapping[str, frozenset] | None = None,
    ) -> dict[str, MembershipState]:
        """Membership each upstream and peering interface must hold for ``group``.

        ``downstream_states``: per-downstream RFC 4605 interface states. ``peered_sources``:
        sources currently arriving on a peering; the upstreams block them (RFC 7287 §5.4).
        ``mutex_sources``: per upstream, sources another upstream won under ``mutex``.
        """
        merged = merge(
            filter_state(self._binding(Role.DOWNSTREAM, d, "in"), d, group, st)
            for d, st in downstream_states.items()
            if self.roles.get(d) is Role.DOWNSTREAM
        )
        result: dict[str, MembershipState] = {}
        for p in self.names(Role.PEERING):
            result[p] = merged
        upstream_view = _without(merged, peered_sources)
        mode, _ = self.rule_matching("in")
        remaining = upstream_view
        for u in self.names(Role.UPSTREAM):
            binding = self._binding(Role.UPSTREAM, u, "in")
            share = filter_state(binding, u, group, remaining if mode == "first" else upstream_view)
            if mutex_sources and u in mutex_sources:
                share = _without(share, mutex_sources[u])
            result[u] = share
            if mode == "first" and share.has_interest:
                remaining = _minus(remaining, share)
        return result


def _without(state: MembershipState, sources: frozenset) -> MembershipState:
    """``state`` with ``sources`` no longer wanted."""
    if not sources or not state.has_interest:
        return state
    if state.mode is FilterMode.INCLUDE:
        return MembershipState.include(state.sources - sources)
    return MembershipState.exclude(state.sources | sources)


def _minus(wanted: MembershipState, served: MembershipState) -> MembershipState:
    """What of ``wanted`` is left after an earlier upstream took ``served`` ("first")."""
    if served.mode is FilterMode.EXCLUDE:
        # The earlier upstream takes every source but its exclude list.
        leftover = served.sources
        if wanted.mode is FilterMode.INCLUDE:
            return MembershipState.include(wanted.sources & leftover)
        return MembershipState.include(leftover - wanted.sources)
    return _without(wanted, served.sources)
