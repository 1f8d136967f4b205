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

Multiple upstreams with selection (``Instance.selection``): ``select_upstreams`` is the
precedence of the candidates' records for one request (subscriber link, source or any
source, group); ``Policy.subscriptions`` splits every downstream's state into such
requests and gives each upstream the union of what was selected for it. Which candidates
are usable and what existing subscriptions keep (migration, non-revertive switching) is
state, kept by ``proxy.selection``, and enters here as the ``choose`` callable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.config import (
    FilterBinding,
    Instance,
    Network,
    Selection,
    SelectionRecord,
    is_wildcard,
    wildcard_matches,
)
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


@dataclass(frozen=True)
class Choice:
    """The upstreams ``select_upstreams`` picked for one request, and why.

    ``reason``: ``"record"`` (``record`` of ``via`` won, ``tied`` more candidates with the
    same record kind and priority), ``"default"``, ``"fallback"`` (no default: highest
    priority, then highest address) or ``"none"`` (no usable candidate).
    """

    upstreams: tuple[str, ...]
    reason: str
    record: SelectionRecord | None = None
    via: str | None = None
    priority: int | None = None

    def __str__(self) -> str:
        if self.reason == "record":
            ups = ", ".join(self.upstreams)
            tie = f"robust reception: {ups} tie, " if len(self.upstreams) > 1 else ""
            return f"{tie}record '{self.record}' of {self.via} (priority {self.priority})"
        if self.reason == "default":
            return f"no record matches: default upstream {self.via}"
        if self.reason == "fallback":
            return f"no record matches, no usable default: {self.via} (highest priority/address)"
        return "no usable candidate"


NO_CHOICE = Choice((), "none")


def select_upstreams(
    selection: Selection,
    usable: Callable[[str], bool],
    subscribers: tuple[Network, ...],
    source: Address | None,
    group: Address,
    addresses: Mapping[str, Address | None] | None = None,
) -> Choice:
    """The candidates for a request for (``source`` or any source, ``group``) from a link
    with the prefixes ``subscribers`` (precedence of ``SelectionRecord.specificity``, then
    interface priority; ties are all selected). Unusable candidates take no part."""
    best: tuple[tuple[int, ...], int] | None = None
    winners: list[tuple[str, SelectionRecord]] = []
    for cand in selection.candidates:
        if not usable(cand.ifname):
            continue
        for record in selection.records_of(cand):
            if not record.matches(subscribers, source, group):
                continue
            rank = (record.specificity(), cand.priority)
            if best is None or rank > best:
                best, winners = rank, [(cand.ifname, record)]
            elif rank == best and all(name != cand.ifname for name, _ in winners):
                winners.append((cand.ifname, record))
    if best is not None:
        ifname, record = winners[0]
        return Choice(tuple(n for n, _ in winners), "record", record, ifname, best[1])
    if selection.default is not None and usable(selection.default):
        return Choice((selection.default,), "default", via=selection.default)
    others = [c for c in selection.candidates if usable(c.ifname)]
    if not others:
        return NO_CHOICE
    addresses = addresses or {}

    def rank(c):  # highest priority, then highest address, then the first listed
        addr = addresses.get(c.ifname)
        return (c.priority, int(addr) if addr is not None else -1)

    top = max(others, key=rank)
    return Choice((top.ifname,), "fallback", via=top.ifname, priority=top.priority)


def listed_sources(selection: Selection, group: Address) -> frozenset:
    """Single sources that records name for ``group``: an any-source request is split on
    them (a source prefix cannot be listed, like in ``filter_state``)."""
    return frozenset(
        r.source.first
        for c in selection.candidates
        for r in c.records
        if r.source.kind == "address" and r.group.matches(group)
    )


#: choose(downstream, source or None for any source, group) -> selected upstreams
Chooser = Callable[[str, Address | None, Address], frozenset]


class Policy:
    """Forwarding and subscription decisions of one proxy instance.

    An interface listed as upstream and downstream (mcproxy's peering idiom, OpenWrt's
    default ``pinstance A: ap a1 ==> ap a2;``) is, as in mcproxy's runtime, one vif with
    both roles: a downstream (its querier; data arriving on it is a local source's, and
    accepted if either role's ``in`` filter accepts it) and an upstream (it holds host
    memberships and takes part in rule matching; never chosen for data that came from it).
    ``roles`` gives it ``DOWNSTREAM``; ``also_upstream`` holds such interfaces.
    """

    def __init__(self, cfg: Instance) -> None:
        self.cfg = cfg
        self.roles: dict[str, Role] = {}
        for name in cfg.upstreams:
            self.roles[name] = Role.UPSTREAM
        for name in cfg.downstreams:
            self.roles[name] = Role.DOWNSTREAM
        for name in cfg.peerings:
            self.roles[name] = Role.PEERING
        self.also_upstream: set[str] = set(cfg.upstreams) & set(cfg.downstreams)
        # Wildcards (eth+, ppp*) are not interfaces: matching ones are adopted at runtime.
        self.patterns = {n for n in self.roles if is_wildcard(n)}
        for name in self.patterns:
            del self.roles[name]
        self.also_upstream -= self.patterns

    def pattern_roles(self, ifname: str) -> tuple[Role, bool] | None:
        """(role, also upstream) that a new interface takes from the wildcards it matches."""
        if ifname in self.roles:
            return None
        up = any(wildcard_matches(p, ifname) for p in self.cfg.upstreams)
        down = any(wildcard_matches(p, ifname) for p in self.cfg.downstreams)
        if down:
            return Role.DOWNSTREAM, up
        if up:
            return Role.UPSTREAM, False
        if any(wildcard_matches(p, ifname) for p in self.cfg.peerings):
            return Role.PEERING, False
        return None

    def adopt(self, ifname: str, role: Role, also_upstream: bool) -> None:
        self.roles[ifname] = role
        if also_upstream:
            self.also_upstream.add(ifname)

    def add_downstream(self, ifname: str) -> None:
        self.roles[ifname] = Role.DOWNSTREAM

    def remove(self, ifname: str) -> None:
        self.roles.pop(ifname, None)
        self.also_upstream.discard(ifname)

    def names(self, role: Role) -> list[str]:
        return [
            n
            for n, r in self.roles.items()
            if r is role or (role is Role.UPSTREAM and n in self.also_upstream)
        ]

    def is_upstream(self, ifname: str) -> bool:
        return self.roles.get(ifname) is Role.UPSTREAM or ifname in self.also_upstream

    def role_name(self, ifname: str) -> str:
        if ifname in self.also_upstream:
            return "upstream+downstream"
        return self.roles[ifname].value

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
        if role is None:
            return False
        if iif in self.also_upstream:
            return self._allows(Role.UPSTREAM, iif, "in", source, group, iif) or self._allows(
                Role.DOWNSTREAM, iif, "in", source, group, iif
            )
        return self._allows(role, iif, "in", source, group, iif)

    def oifs(
        self,
        iif: str,
        source: Address,
        group: Address,
        wants: Callable[[str, Address, Address], bool],
        served: Callable[[str], bool] | None = None,
    ) -> set[str]:
        """Interfaces an (S,G) flow arriving on ``iif`` is forwarded to.

        ``wants(ifname, S, G)`` tells whether the router side of a downstream or peering
        interface has a listener for the flow (and may forward there, e.g. is querier).
        ``served(downstream)``, for a flow from an upstream under selection, tells whether
        that downstream's subscription may be served from ``iif``.
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
            and (served is None or role is not Role.UPSTREAM or served(d))
        }
        if role is Role.DOWNSTREAM:
            # A local source: upstream(s) per "upstream * out" rule matching, and the
            # peerings whose peer subscribed (RFC 7287 §5.3).
            ups = [
                u
                for u in self.names(Role.UPSTREAM)
                if u != iif and self._allows(Role.UPSTREAM, u, "out", source, group, iif)
            ]
            mode, _ = self.rule_matching("out")
            out |= set(ups if mode == "all" else ups[:1])
            out |= {p for p in self.names(Role.PEERING) if wants(p, source, group)}
        return out

    def upstream_allows(self, ifname: str, source: Address | None, group: Address) -> bool:
        """Whether upstream ``ifname``'s ``in`` filter lets a request through: for any
        source (None), unless it refuses every source of ``group``."""
        binding = self._binding(Role.UPSTREAM, ifname, "in")
        if binding is None:
            return True
        if source is not None:
            return binding.allows(ifname, source, group)
        everything, listed = source_scope(binding, ifname, group)
        if binding.kind == "blacklist":
            return not everything
        return everything or listed is None or bool(listed)

    def subscriptions(
        self,
        group: Address,
        downstream_states: Mapping[str, MembershipState],
        peered_sources: frozenset = frozenset(),
        mutex_sources: Mapping[str, frozenset] | None = None,
        choose: Chooser | None = None,
    ) -> dict[str, MembershipState]:
        """Membership each upstream and peering interface must hold for ``group``.

        ``downstream_states``: per-downstream RFC 4605 interface states. ``peered_sources``:
        sources currently arriving on a peering; the upstreams block them (RFC 7287 §5.4).
        ``mutex_sources``: per upstream, sources another upstream won under ``mutex``.
        ``choose``: the upstream selection (required when the instance has one).
        """
        filtered = {
            d: filter_state(self._binding(Role.DOWNSTREAM, d, "in"), d, group, st)
            for d, st in downstream_states.items()
            if self.roles.get(d) is Role.DOWNSTREAM
        }
        merged = merge(filtered.values())
        result: dict[str, MembershipState] = {}
        for p in self.names(Role.PEERING):
            result[p] = merged
        if self.cfg.selection is not None:
            assert choose is not None, "an instance with selection needs choose"
            shares = self.split(group, filtered, choose)
            for u in self.names(Role.UPSTREAM):
                binding = self._binding(Role.UPSTREAM, u, "in")
                share = filter_state(binding, u, group, merge(shares.get(u, ())))
                result[u] = _without(share, peered_sources)
            return result
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

    def split(
        self, group: Address, states: Mapping[str, MembershipState], choose: Chooser
    ) -> dict[str, list[MembershipState]]:
        """Per upstream, the parts of each downstream's state that selection gives it.

        INCLUDE(A) is asked source by source. EXCLUDE(X) is asked for any source, and on
        its own for each source a record names (``listed_sources``): the upstreams chosen
        for any source block those, the upstreams chosen for them include them.
        """
        assert self.cfg.selection is not None
        listed = listed_sources(self.cfg.selection, group)
        shares: dict[str, list[MembershipState]] = {}
        for d, st in states.items():
            if not st.has_interest:
                continue
            if st.is_include:
                for s in st.sources:
                    for u in choose(d, s, group):
                        shares.setdefault(u, []).append(MembershipState.include((s,)))
                continue
            apart = {s: choose(d, s, group) for s in sorted(listed - st.sources, key=int)}
            anyone = choose(d, None, group)
            for u in anyone | frozenset().union(*apart.values()):
                if u in anyone:
                    blocked = {s for s, ups in apart.items() if u not in ups}
                    shares.setdefault(u, []).append(MembershipState.exclude(st.sources | blocked))
                else:
                    wanted = (s for s, ups in apart.items() if u in ups)
                    shares.setdefault(u, []).append(MembershipState.include(wanted))
        return shares


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
