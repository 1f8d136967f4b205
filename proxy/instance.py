"""One proxy instance: queriers on its downstreams, host memberships upstream, selection.

The MFC side (flows, counters) is ``proxy.forwarding``, which it extends. The instance glues
the pure state machines (``querier``, ``routing``) to the kernel (``kernel``, ``upstream``,
``wire``). Every change of a downstream's forwarding view ends in ``refresh(group)``, which
recomputes the upstream subscriptions and the output interfaces of every (S,G) entry of that
group, so running flows follow joins and leaves at once.

With multiple-upstream selection (``proxy.selection``) ``refresh`` also moves an (S,G)
entry whose parent upstream is no longer selected for it to one that is (takeover, end of
a migration): new joins are made first, then entries are moved, then old upstreams are
left. Robust reception needs nothing more: every tied upstream is joined, the kernel
accepts the copy arriving on the entry's parent and drops the others (its RPF check), and
when the parent's link goes down the entry moves to a tied upstream at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from ipaddress import ip_address

from proxy import kernel, netlink
from proxy.clock import Scheduler
from proxy.config import Instance, Network
from proxy.forwarding import DOWN, Forwarding, Tunables, is_routable_group
from proxy.kernel import MrouteTable
from proxy.membership import NO_INTEREST, MembershipState
from proxy.messages import Address, Message, Query
from proxy.netlink import LinkState
from proxy.querier import Querier
from proxy.routing import Policy, Role
from proxy.selection import UpstreamSelector
from proxy.upstream import HostMemberships
from proxy.wire import QuerySender, join_router_groups

__all__ = ["ProxyInstance", "Tunables", "is_routable_group"]


class ProxyInstance(Forwarding):
    """A pinstance of the configuration, running."""

    def __init__(
        self,
        cfg: Instance,
        family: int,
        version: int,
        scheduler: Scheduler,
        sender: QuerySender,
        tunables: Tunables | None = None,
        emit: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.emit = emit or (lambda event, detail: None)
        self.name = cfg.name
        self.family = family
        self.version = version
        self.scheduler = scheduler
        self.sender = sender
        self.tun = tunables or Tunables()
        self.log = logging.getLogger(f"pymcproxy.{cfg.name}")
        self.policy = Policy(cfg)
        self.table = MrouteTable(family, cfg.table_id)
        self.host = HostMemberships(family)
        self.queriers: dict[str, Querier] = {}
        self.links: dict[str, LinkState] = {}
        self.addresses: dict[str, Address | None] = {}
        self.peered: dict[Address, dict[Address, str]] = {}
        self.counters: Counter = Counter()
        self._idle: dict[tuple[Address, Address], float] = {}
        self._poll_handle = None
        self.selector = self._make_selector(cfg)
        # Upstream side: the querier last heard on each upstream (address, loop time).
        self.upstream_queriers: dict[str, tuple[Address, float]] = {}
        self._subs: dict[Address, dict[str, MembershipState]] = {}
        self._prefixes: dict[str, tuple[Network, ...]] = {}
        self._prefixes_read = 0.0
        self._mirrored: dict[tuple[Address, Address], float] = {}
        self._misplaced_since: dict[tuple[Address, Address], float] = {}
        self._carrier_lost: set[str] = set()  # upstreams taken down by _check_carriers
        self._upstream_states: dict[str, str] = {}  # last logged state per candidate
        self.adopted: set[str] = set()  # interfaces taken in by a wildcard (eth+, ppp*)

    def _make_selector(self, cfg: Instance) -> UpstreamSelector | None:
        if cfg.selection is None:
            return None
        selector = UpstreamSelector(cfg.selection, self.scheduler, self._selection_changed)
        for name in cfg.upstreams:
            if self.links.get(name, DOWN).up:
                selector.set_link(name, True)
        return selector

    # --- life cycle ---------------------------------------------------------------------

    def start(self, links: dict[str, LinkState]) -> None:
        for ifname in list(self.policy.roles):
            kernel.mrule_add(self.family, ifname, self.cfg.table_id)
            self.link_changed(links.get(ifname, LinkState(ifname, 0, False, False)))
        for st in list(links.values()):
            if st.ifname not in self.policy.roles:
                self.link_changed(st)  # adopted if a wildcard matches it
        self._poll_handle = self.scheduler.call_later(self.tun.poll_interval, self._poll)

    def stop(self) -> None:
        """Leave upstream groups, remove MFC entries, vifs and mrules."""
        if self._poll_handle:
            self._poll_handle.cancel()
        if self.selector:
            self.selector.stop()
        for q in self.queriers.values():
            q.stop()
        self.host.close()
        self.table.close()
        for ifname in self.policy.roles:
            kernel.mrule_del(self.family, ifname, self.cfg.table_id)

    # --- interfaces ---------------------------------------------------------------------

    def owns(self, ifindex: int) -> str | None:
        vif = self.table.vif_by_ifindex(ifindex)
        return vif.ifname if vif else None

    def add_downstream(self, ifname: str, link: LinkState) -> None:
        """Add a downstream at runtime (RFC 6224 §4.2: MN links come and go)."""
        if ifname in self.policy.roles:
            raise ValueError(f"{ifname} is already an interface of instance {self.name}")
        self.policy.add_downstream(ifname)
        kernel.mrule_add(self.family, ifname, self.cfg.table_id)
        self.link_changed(link)

    def remove_interface(self, ifname: str) -> None:
        if ifname not in self.policy.roles:
            raise ValueError(f"{ifname} is not an interface of instance {self.name}")
        self.link_changed(LinkState(ifname, 0, False, False))
        self.policy.remove(ifname)
        self.queriers.pop(ifname, None)
        kernel.mrule_del(self.family, ifname, self.cfg.table_id)

    def reconfigure(self, cfg: Instance, links: dict[str, LinkState]) -> list[str]:
        """Apply a changed configuration in place and return what changed.

        Only the difference is applied: interfaces the change removes (or whose role or
        router version changes) are taken down, new ones come up, interfaces added at
        runtime stay, timers apply from the next query, and every group is recomputed, which
        touches only the upstream memberships and MFC entries whose outcome changed.
        Subscriptions that a selection change moves follow ``migrate``.
        """
        old = self.cfg
        changed = [f.name for f in fields(Instance) if getattr(old, f.name) != getattr(cfg, f.name)]
        old_roles, new_policy = Policy(old).roles, Policy(cfg)

        def router_opts(inst: Instance, ifname: str) -> tuple:
            opts = inst.downstream_options.get(ifname)
            return (opts.version, opts.querier_election) if opts else ()

        for ifname, role in old_roles.items():
            touched = new_policy.roles.get(ifname) is not role or (
                role is Role.DOWNSTREAM and router_opts(old, ifname) != router_opts(cfg, ifname)
            )
            if touched and ifname in self.policy.roles:
                self.remove_interface(ifname)
        runtime = [n for n in self.policy.roles if n not in old_roles and n not in self.adopted]
        adopted, self.adopted = self.adopted, set()
        for ifname in sorted(adopted):
            now = (self.policy.roles.get(ifname), ifname in self.policy.also_upstream)
            if new_policy.pattern_roles(ifname) != now:
                self.remove_interface(ifname)  # taken in again below if it still matches
                adopted.discard(ifname)
        present = set(self.policy.roles)
        self.cfg = cfg
        self.policy = new_policy
        for ifname in runtime:
            if ifname not in self.policy.roles:
                self.policy.add_downstream(ifname)
        for ifname in adopted:
            self.policy.adopt(ifname, *self.policy.pattern_roles(ifname))  # type: ignore[misc]
            self.adopted.add(ifname)
        if old.timers != cfg.timers:
            for q in self.queriers.values():
                q.set_timers(cfg.timers)
        if old.selection != cfg.selection:
            if self.selector is not None and cfg.selection is not None:
                self.selector.reconfigure(cfg.selection)
            else:
                if self.selector is not None:
                    self.selector.stop()
                self.selector = self._make_selector(cfg)
        for ifname in self.policy.roles:
            if ifname not in present:
                kernel.mrule_add(self.family, ifname, cfg.table_id)
                self.link_changed(links.get(ifname, LinkState(ifname, 0, False, False)))
        for st in list(links.values()):
            if st.ifname not in self.policy.roles:
                self.link_changed(st)  # adopted if a (new) wildcard matches it
        self._read_prefixes()
        for group in self.groups():
            self.refresh(group)
        return changed

    def link_changed(self, st: LinkState) -> None:
        role = self.policy.roles.get(st.ifname)
        if role is None:
            if not st.present or not self._adopt(st.ifname):
                return
            role = self.policy.roles[st.ifname]
        self._link_changed(st, role)
        if st.ifname in self.adopted and not st.present:
            # A wildcard's interface that disappeared leaves the instance.
            self.adopted.discard(st.ifname)
            self.policy.remove(st.ifname)
            self.queriers.pop(st.ifname, None)
            self.links.pop(st.ifname, None)
            kernel.mrule_del(self.family, st.ifname, self.cfg.table_id)
            self.log.info("interface %s left (it is gone)", st.ifname)

    def _adopt(self, ifname: str) -> bool:
        """Take ``ifname`` in if it matches a wildcard of the configuration."""
        roles = self.policy.pattern_roles(ifname)
        if roles is None:
            return False
        self.policy.adopt(ifname, *roles)
        self.adopted.add(ifname)
        kernel.mrule_add(self.family, ifname, self.cfg.table_id)
        self.log.info("interface %s appeared: %s", ifname, self.policy.role_name(ifname))
        self.emit("interface_adopted", ifname)
        return True

    def _link_changed(self, st: LinkState, role: Role) -> None:
        if st.up:
            self._carrier_lost.discard(st.ifname)
        prev = self.links.get(st.ifname) or LinkState(st.ifname, 0, False, False)
        self.links[st.ifname] = st
        if prev.up and (not st.up or st.ifindex != prev.ifindex):
            self._link_down(st.ifname, role, gone=not st.present)
        if st.present and st.ifindex != prev.ifindex:
            vif = self.table.add_vif(st.ifname)
            if role is not Role.UPSTREAM:
                join_router_groups(self.table.sock, self.family, vif.ifindex)
        if st.up and (not prev.up or st.ifindex != prev.ifindex):
            self._link_up(st.ifname, role)

    def _link_up(self, ifname: str, role: Role) -> None:
        self.log.info("link up: %s (%s)", ifname, self.policy.role_name(ifname))
        self.emit("proxy_link_up", ifname)
        self.addresses[ifname] = netlink.own_address(self.family, ifname)
        if role is Role.DOWNSTREAM:
            self._prefixes[ifname] = netlink.prefixes(self.family, ifname)
        if role is not Role.UPSTREAM:
            q = self.queriers.get(ifname) or self._make_querier(ifname)
            q.own_address = self.addresses[ifname] or q.own_address
            q.start()
        if role is Role.UPSTREAM and self.selector:
            self.selector.set_link(ifname, True)
            self._upstream_event(ifname)
            self._reselect(None)
        elif role is not Role.DOWNSTREAM or ifname in self.policy.also_upstream:
            for group in self.groups():
                self._apply_subscriptions(group)

    def _link_down(self, ifname: str, role: Role, gone: bool) -> None:
        if role is Role.UPSTREAM and self.selector:
            self._move_off(ifname)
        self.log.info("link %s: %s (%s)", "gone" if gone else "down", ifname, role.value)
        self.emit("proxy_link_down", ifname)
        vif = self.table.vifs.get(ifname)
        if role is Role.UPSTREAM and self.selector:
            # Takeover: select again without this upstream first, so that flows it was the
            # parent of move to a tied (robust reception) or newly joined upstream at once.
            self.selector.set_link(ifname, False)
            self._upstream_event(ifname)
            self._reselect(None)
        if vif:
            # Flows that entered here (a source that left) must be re-learned elsewhere.
            for key, entry in list(self.table.mfc.items()):
                if entry.parent == vif.index:
                    self._delete_entry(*key)
        if role is not Role.UPSTREAM and ifname in self.queriers:
            self.queriers[ifname].stop()  # flushes memberships -> refresh(group) per group
        if gone:
            self.host.forget_interface(ifname)
            self.table.del_vif(ifname)

    def _move_off(self, ifname: str) -> None:
        """Robust reception's fast path: move the flows whose parent just failed to another
        upstream already joined for them, before anything else is done. Until the entry
        moves, the kernel drops the other upstream's copies (its RPF check), so this time
        is the only loss of a switch between tied upstreams."""
        vif = self.table.vifs.get(ifname)
        if vif is None:
            return
        for (source, group), entry in list(self.table.mfc.items()):
            if entry.parent != vif.index:
                continue
            other = next((u for u in self._selected(source, group) if u != ifname), None)
            if other is not None:
                new_parent = self.table.vifs[other].index
                self.table.set_mfc(source, group, new_parent, entry.oifs - {new_parent})
                self.counters["mfc_moved"] += 1
                self.emit("mfc_moved", f"({source},{group}) {ifname} => {other}")
                self.log.info(
                    "(%s, %s) now taken from %s (%s failed)", source, group, other, ifname
                )

    def _make_querier(self, ifname: str) -> Querier:
        opts = self.cfg.downstream_options.get(ifname)
        version = opts.version if opts and opts.version else self.version
        election = opts.querier_election if opts else True
        q = Querier(
            version=version,
            family=self.family,
            timers=self.cfg.timers,
            scheduler=self.scheduler,
            own_address=self.addresses.get(ifname) or _unspecified(self.family),
            send=lambda query, ifname=ifname: self._send_query(ifname, query),
            on_change=lambda group, ifname=ifname: self._querier_changed(ifname, group),
            election=election,
            ssm_range=self.tun.ssm,
        )
        self.queriers[ifname] = q
        return q

    def _send_query(self, ifname: str, query: Query) -> None:
        link = self.links.get(ifname)
        if link and link.up and self.sender.send(link.ifindex, self.addresses.get(ifname), query):
            self.counters["queries_sent"] += 1
            self.emit("query_sent", f"{ifname} {'general' if query.is_general else query.group}")

    # --- messages and upcalls -----------------------------------------------------------

    def receive(self, ifname: str, src: Address, msg: Message) -> None:
        """A validated IGMP/MLD message that arrived on one of this instance's interfaces."""
        if src == self.addresses.get(ifname):
            return  # our own host stack's reports looped back
        role = self.policy.roles.get(ifname)
        if role in (Role.DOWNSTREAM, Role.PEERING) and ifname in self.queriers:
            self.counters[f"rx_{type(msg).__name__.lower()}"] += 1
            self.emit("report_received" if not isinstance(msg, Query) else "query_received", ifname)
            self.queriers[ifname].receive(msg, src)
        elif role is Role.UPSTREAM and isinstance(msg, Query):
            # The host stack answers it; we only note that the upstream has a querier.
            self.counters["rx_upstream_query"] += 1
            self.upstream_queriers[ifname] = (src, self.scheduler.time())
            if self.selector:
                changed = self.selector.query_heard(ifname, src)
                self._upstream_event(ifname)
                if changed:
                    self._reselect(None)
        else:
            self.counters["rx_upstream_ignored"] += 1

    # --- multiple upstreams -----------------------------------------------------------------

    def _selection_changed(self, groups: set[Address] | None) -> None:
        """A selector timer changed a choice (querier lost, restore, end of a pin)."""
        if self.selector:
            for ifname in self.cfg.upstreams:
                self._upstream_event(ifname)
        self._reselect(groups)

    def _reselect(self, groups: set[Address] | None) -> None:
        for group in sorted(self.groups() if groups is None else groups, key=str):
            self.refresh(group)

    def _upstream_event(self, ifname: str) -> None:
        """Log a candidate's state (usable, failed: why, restoring) once per change."""
        if self.selector is None:
            return
        state = self.selector.state(ifname)
        state = "restoring" if state.startswith("restoring") else state.split(" (")[0]
        if self._upstream_states.get(ifname) == state:
            return
        self._upstream_states[ifname] = state
        self.log.info("upstream %s: %s", ifname, state)
        self.emit("upstream_state", f"{ifname} {state}")

    def _read_prefixes(self) -> None:
        self._prefixes_read = self.scheduler.time()
        for ifname, role in self.policy.roles.items():
            if role is Role.DOWNSTREAM and self.links.get(ifname, DOWN).up:
                self._prefixes[ifname] = netlink.prefixes(self.family, ifname)

    def subscribers(self, downstream: str) -> tuple[Network, ...]:
        """Subscriber prefixes of a downstream: configured, or else on the interface."""
        opts = self.cfg.downstream_options.get(downstream)
        if opts and opts.subscribers:
            return opts.subscribers
        return self._prefixes.get(downstream, ())

    def _choose(self, downstream: str, source: Address | None, group: Address) -> frozenset:
        assert self.selector is not None
        return self.selector.choose(
            downstream,
            self.subscribers(downstream),
            source,
            group,
            allowed=lambda u: self.policy.upstream_allows(u, source, group),
            addresses=self.addresses,
        )

    def _selected(self, source: Address, group: Address) -> list[str]:
        """Upstreams that are up and subscribed for (S,G), best first."""
        subs = self._subs.get(group, {})
        assert self.selector is not None
        order = {name: i for i, name in enumerate(self.cfg.upstreams)}
        ups = [
            u
            for u in self.policy.names(Role.UPSTREAM)
            if subs.get(u, NO_INTEREST).allows(source)
            and self.links.get(u, DOWN).up
            and u in self.table.vifs
        ]

        def rank(u: str) -> tuple[int, int]:
            c = self.selector.candidate(u) if self.selector else None
            return (-(c.priority if c else 0), order.get(u, 0))

        return sorted(ups, key=rank)

    def _preferred_parent(self, source: Address, group: Address, current: str) -> str:
        """``current`` if it is selected for (S,G) (or nothing is), else the best that is."""
        selected = self._selected(source, group)
        return current if not selected or current in selected else selected[0]

    # --- membership changes --------------------------------------------------------------

    def groups(self) -> set[Address]:
        groups: set[Address] = set()
        for q in self.queriers.values():
            groups.update(q.groups())
        groups.update(g for (_i, g) in self.host.memberships())
        return groups

    def _querier_changed(self, ifname: str, group: Address) -> None:
        self.counters["membership_changes"] += 1
        if is_routable_group(group):
            self.emit(
                "membership_changed", f"{ifname} {group} {self.queriers[ifname].state(group)}"
            )
        self.refresh(group)

    def refresh(self, group: Address) -> None:
        """Recompute upstream subscriptions and the oifs of every (S,G) of ``group``.

        New memberships are set before entries move and old ones are left after, so that a
        switch between upstreams is make-before-break as far as this host goes.
        """
        if not is_routable_group(group):
            return
        subs = self._subscriptions(group)
        self._set_host(group, subs, joining=True)
        for (source, g), entry in list(self.table.mfc.items()):
            if g != group:
                continue
            iif = self.table.vif_by_index(entry.parent)
            if iif is None:
                continue
            name = iif.ifname
            if self.selector and self.policy.roles.get(name) is Role.UPSTREAM:
                name = self._preferred_parent(source, group, name)
            oifs = self._oif_indexes(name, source, group)
            if name != iif.ifname:
                self.table.set_mfc(source, group, self.table.vifs[name].index, oifs)
                self._idle[(source, group)] = 0.0
                self._misplaced_since.pop((source, group), None)
                self.counters["mfc_moved"] += 1
                self.log.info(
                    "(%s, %s) now taken from %s (was %s)", source, group, name, iif.ifname
                )
                self.emit("mfc_moved", f"({source},{group}) {iif.ifname} => {name}")
            elif oifs != entry.oifs:
                self.table.set_mfc(source, group, entry.parent, oifs)
                names = sorted(v.ifname for v in self.table.vifs.values() if v.index in oifs)
                self.emit(
                    "mfc_updated", f"({source},{group}) {iif.ifname} -> {' '.join(names) or '-'}"
                )
        self._set_host(group, subs, joining=False)

    def _downstream_states(self, group: Address) -> dict[str, MembershipState]:
        return {
            name: q.state(group)
            for name, q in self.queriers.items()
            if self.policy.roles.get(name) is Role.DOWNSTREAM and self.links.get(name, DOWN).up
        }

    def _subscriptions(self, group: Address) -> dict[str, MembershipState]:
        if self.selector:
            self.selector.begin(group)
        subs = self.policy.subscriptions(
            group,
            self._downstream_states(group),
            peered_sources=frozenset(self.peered.get(group, {})),
            choose=self._choose if self.selector else None,
        )
        if self.selector:
            self.selector.commit(group)
        if any(st.has_interest for st in subs.values()):
            self._subs[group] = subs
        else:
            self._subs.pop(group, None)
        return subs

    def _apply_subscriptions(self, group: Address) -> None:
        if not is_routable_group(group):
            return
        subs = self._subscriptions(group)
        self._set_host(group, subs, joining=True)
        self._set_host(group, subs, joining=False)

    def _set_host(self, group: Address, subs: dict[str, MembershipState], joining: bool) -> None:
        """Apply the memberships that gain interest (``joining``) or the others."""
        for ifname, state in subs.items():
            current = self.host.state(ifname, group) or NO_INTEREST
            if _gains(current, state) != joining:
                continue
            if state.has_interest and not self.links.get(ifname, DOWN).up:
                continue  # joined when the link comes up
            try:
                if self.host.set(ifname, group, state):
                    self.counters["upstream_changes"] += 1
                    self.log.info("upstream %s: %s %s", ifname, group, state)
                    self.emit("upstream_changed", f"{ifname} {group} {state}")
            except kernel.KernelError as exc:
                self.log.warning("%s", exc)

    # --- observability ---------------------------------------------------------------------

    def snapshot(self) -> dict:
        vifname = {v.index: v.ifname for v in self.table.vifs.values()}
        return {
            "name": self.name,
            "table": self.cfg.table_id,
            "interfaces": {
                name: {
                    "role": self.policy.role_name(name),
                    "present": self.links.get(name, DOWN).present,
                    "up": self.links.get(name, DOWN).up,
                    "vif": self.table.vifs[name].index if name in self.table.vifs else None,
                    "address": str(self.addresses.get(name) or ""),
                }
                for name in self.policy.roles
            },
            "queriers": {name: q.snapshot() for name, q in self.queriers.items()},
            "upstream": [
                {"interface": i, "group": str(g), "state": str(st)}
                for (i, g), st in sorted(self.host.memberships().items(), key=str)
            ],
            "peered_sources": {
                str(g): {str(s): i for s, i in peers.items()}
                for g, peers in self.peered.items()
                if peers
            },
            "upstream_queriers": {
                name: {"querier": str(src), "age": round(self.scheduler.time() - at, 3)}
                for name, (src, at) in self.upstream_queriers.items()
            },
            "mfc": [
                {
                    "source": str(e.source),
                    "group": str(e.group),
                    "iif": vifname.get(e.parent, e.parent),
                    "oifs": sorted(vifname.get(i, str(i)) for i in e.oifs),
                    "packets": e.packets,
                    "bytes": e.bytes,
                    "wrong_if": e.wrong_if,
                    **self._served_by(e.source, e.group),
                }
                for e in self.table.mfc.values()
            ],
            "selection": self.selector.snapshot() if self.selector else None,
            "counters": dict(self.counters),
        }


def _gains(old: MembershipState, new: MembershipState) -> bool:
    """Whether ``new`` wants a source that ``old`` does not."""
    if new.is_include:
        extra = new.sources - old.sources if old.is_include else new.sources & old.sources
        return bool(extra)
    return old.is_include or bool(old.sources - new.sources)


def _unspecified(family: int) -> Address:
    return ip_address("::" if family == 6 else "0.0.0.0")
