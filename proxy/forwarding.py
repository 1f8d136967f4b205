"""The data plane of a proxy instance: its (S,G) entries in the kernel MFC.

``Forwarding`` installs an entry when the kernel reports a new flow (an upcall), picks its
output interfaces from the queriers and the routing policy, and polls the MFC counters:
idle entries are deleted, a flow that moved is forgotten so that its next packet installs
it anew, a flow arriving on several upstreams counts as mirrored, and under upstream
selection a silent parent or a lost carrier moves the entry to another selected upstream
within one poll interval. ``ProxyInstance`` (``proxy.instance``) extends it with the
membership side; the methods named in ``Forwarding``'s docstring come from there.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from proxy import netlink
from proxy.clock import Scheduler
from proxy.kernel import MrouteTable, Upcall, UpcallType
from proxy.messages import Address
from proxy.netlink import LinkState
from proxy.querier import Querier
from proxy.routing import Policy, Role
from proxy.selection import UpstreamSelector

#: The state of an interface that is not there.
DOWN = LinkState("", 0, False, False)

# Where a flow may arrive from, best first: a local source beats a peer, a peer beats an
# upstream (RFC 7287 §5.4: the peering is the preferred upstream).
_RANK = {Role.DOWNSTREAM: 0, Role.PEERING: 1, Role.UPSTREAM: 2}


@dataclass
class Tunables:
    """Data-plane timing of an instance, in seconds."""

    poll_interval: float = 0.1  # MFC counter polling
    idle_timeout: float = 60.0  # delete (S,G) entries without packets for this long
    peering_source_timeout: float = 0.05  # RFC 7287 §5.4: revoke the upstream filter
    # Under upstream selection a flow that keeps arriving on another upstream than its
    # (selected) parent is only treated as moved after this long: a switch or migration
    # leaves the old upstream's copies flowing for a moment.
    moved_grace: float = 1.0
    # A flow seen on more than one interface within this time counts as mirrored (the
    # same channel on several upstreams): any subscription to it may be served from it.
    mirrored_hold: float = 1.0
    prefix_refresh: float = 5.0  # re-read downstream subscriber prefixes
    # The SSM ranges of the downstream queriers; None: RFC 4607's (ff3x::/32, 232/8).
    ssm: tuple | None = None


def is_routable_group(group: Address) -> bool:
    """False for link-local scope groups, which are never proxied."""
    if group.version == 6:
        return (group.packed[1] & 0x0F) > 2
    return not group.is_link_local and int(group) >> 8 != 0xE00000


class Forwarding:
    """The MFC side of an instance.

    ``ProxyInstance`` sets the attributes below and provides ``refresh(group)``,
    ``link_changed(state)``, ``_apply_subscriptions(group)``, ``_selected(source, group)``,
    ``_preferred_parent(source, group, iif)``, ``_read_prefixes()`` and ``_reselect(groups)``.
    """

    table: MrouteTable
    policy: Policy
    selector: UpstreamSelector | None
    queriers: dict[str, Querier]
    links: dict[str, LinkState]
    peered: dict[Address, dict[Address, str]]
    scheduler: Scheduler
    tun: Tunables
    counters: Counter
    log: logging.Logger
    emit: Callable[[str, str], None]
    _poll_handle: object
    _idle: dict[tuple[Address, Address], float]
    _mirrored: dict[tuple[Address, Address], float]
    _misplaced_since: dict[tuple[Address, Address], float]
    _carrier_lost: set[str]
    _prefixes: dict
    _prefixes_read: float

    # --- flows and the MFC --------------------------------------------------------------------

    def upcall(self, up: Upcall) -> None:
        vif = self.table.vif_by_index(up.vif)
        if vif is None or not is_routable_group(up.group):
            return
        self.counters[f"upcall_{up.kind.name.lower()}"] += 1
        key = (up.source, up.group)
        entry = self.table.mfc.get(key)
        if up.kind is UpcallType.NOCACHE or entry is None:
            self._install(up.source, up.group, vif.ifname)
        elif up.kind is UpcallType.WRONGVIF:
            if up.vif in entry.oifs:
                # Our own copy: the host loops forwarded packets back in on an interface
                # where it is a member too (an upstream that is also a downstream).
                self.counters["wrongvif_own_copy"] += 1
                return
            current = self.table.vif_by_index(entry.parent)
            new_role = self.policy.roles.get(vif.ifname)
            cur_role = self.policy.roles.get(current.ifname) if current else None
            if new_role and (cur_role is None or _RANK[new_role] < _RANK[cur_role]):
                self.log.info("(%s, %s) now arrives on %s", up.source, up.group, vif.ifname)
                self._install(up.source, up.group, vif.ifname)

    def _install(self, source: Address, group: Address, iif: str) -> None:
        if self.selector and self.policy.roles.get(iif) is Role.UPSTREAM:
            # Data from an upstream not selected for it (a leftover flow of a switch, or
            # another provider's copy) does not take the entry: a selected upstream does.
            iif = self._preferred_parent(source, group, iif)
        vif = self.table.vifs[iif]
        oifs = self._oif_indexes(iif, source, group)
        self.table.set_mfc(source, group, vif.index, oifs)
        names = sorted(v.ifname for v in self.table.vifs.values() if v.index in oifs)
        self.emit("mfc_installed", f"({source},{group}) {iif} -> {' '.join(names) or '-'}")
        self._idle[(source, group)] = 0.0
        peers = self.peered.setdefault(group, {})
        changed = False
        if self.policy.roles.get(iif) is Role.PEERING:
            changed = peers.get(source) != iif
            peers[source] = iif
        elif source in peers:
            changed = peers.pop(source, None) is not None
        if changed:
            self._apply_subscriptions(group)

    def _delete_entry(self, source: Address, group: Address) -> None:
        self.table.del_mfc(source, group)
        self._idle.pop((source, group), None)
        self._misplaced_since.pop((source, group), None)
        self._mirrored.pop((source, group), None)
        if self.peered.get(group, {}).pop(source, None):
            self._apply_subscriptions(group)

    def _wants(self, ifname: str, source: Address, group: Address) -> bool:
        q = self.queriers.get(ifname)
        link = self.links.get(ifname)
        if q is None or link is None or not link.up:
            return False
        role = self.policy.roles.get(ifname)
        # RFC 4605 §4.2: forward on a downstream only where we are the querier; a peering
        # carries what the peer asked for whoever queries there.
        if role is Role.DOWNSTREAM and not q.is_querier:
            return False
        return q.forwards(source, group)

    def _oif_indexes(self, iif: str, source: Address, group: Address) -> frozenset[int]:
        served = None
        if self.selector and self.policy.roles.get(iif) is Role.UPSTREAM:
            mirrored = self._is_mirrored(source, group)
            selector = self.selector

            def served(d: str) -> bool:
                return selector.serves(d, source, group, iif, mirrored)

        names = self.policy.oifs(iif, source, group, self._wants, served)
        return frozenset(self.table.vifs[n].index for n in names if n in self.table.vifs)

    def _is_mirrored(self, source: Address, group: Address) -> bool:
        seen = self._mirrored.get((source, group))
        return seen is not None and self.scheduler.time() - seen <= self.tun.mirrored_hold

    # --- periodic work ------------------------------------------------------------------------

    def _poll(self) -> None:
        self._poll_handle = self.scheduler.call_later(self.tun.poll_interval, self._poll)
        before = {k: (e.packets, e.wrong_if) for k, e in self.table.mfc.items()}
        self.table.refresh_counters()
        dt = self.tun.poll_interval
        now = self.scheduler.time()
        newly_mirrored: set[Address] = set()
        for key, entry in list(self.table.mfc.items()):
            pkts, wrong = before.get(key, (entry.packets, entry.wrong_if))
            # The kernel counts every packet that hits the entry, on the wrong interface too.
            arrived, misplaced = entry.packets - pkts, entry.wrong_if - wrong
            good = arrived - misplaced
            if misplaced and good and self.selector:
                # The same flow on two interfaces: one channel carried by several upstreams.
                if not self._is_mirrored(*key):
                    newly_mirrored.add(key[1])
                self._mirrored[key] = now
            if misplaced and not good:
                if self._switch_silent_parent(key, entry):
                    continue
                if self._moved_too_early(key, entry, now):
                    continue
                # The flow left its parent interface and now hits another one (a source
                # that moved): forget the entry so its next packet installs it anew.
                self._delete_entry(*key)
                continue
            self._misplaced_since.pop(key, None)
            if good:
                self._idle[key] = 0.0
                continue
            idle = self._idle.get(key, 0.0) + dt
            self._idle[key] = idle
            parent = self.table.vif_by_index(entry.parent)
            role = self.policy.roles.get(parent.ifname) if parent else None
            # A peer's source is revoked after the RFC 7287 source timeout, anything else
            # after idle_timeout.
            limit = (
                self.tun.peering_source_timeout if role is Role.PEERING else self.tun.idle_timeout
            )
            if idle >= limit:
                self._delete_entry(*key)
        for group in newly_mirrored:
            self.refresh(group)
        if self.selector:
            self._check_carriers()
        if self.selector and now - self._prefixes_read >= self.tun.prefix_refresh:
            before_prefixes = dict(self._prefixes)
            self._read_prefixes()
            if self._prefixes != before_prefixes:
                self._reselect(None)

    def _switch_silent_parent(self, key: tuple[Address, Address], entry) -> bool:
        """Robust reception's watchdog: the parent upstream went silent while the copies of
        another upstream joined for the flow keep arriving: take those, now. This bounds a
        switch to one poll interval when no link event says why (a router that died, or a
        link event the kernel holds back)."""
        if not self.selector:
            return False
        parent = self.table.vif_by_index(entry.parent)
        if parent is None or self.policy.roles.get(parent.ifname) is not Role.UPSTREAM:
            return False
        selected = self._selected(*key)
        others = [u for u in selected if u != parent.ifname]
        if parent.ifname not in selected or not others:
            return False
        new_parent = self.table.vifs[others[0]].index
        self.table.set_mfc(*key, new_parent, entry.oifs - {new_parent})
        self.counters["mfc_moved"] += 1
        self.counters["silent_parent_switches"] += 1
        self.log.info("(%s, %s) silent on %s: now taken from %s", *key, parent.ifname, others[0])
        self.emit("mfc_moved", f"({key[0]},{key[1]}) {parent.ifname} => {others[0]} (silent)")
        return True

    def _check_carriers(self) -> None:
        """Carrier of the candidate upstreams read directly: a loss is acted on within a
        poll interval even when the kernel's link notification comes up to a second later."""
        for ifname in self.policy.names(Role.UPSTREAM):
            st = self.links.get(ifname)
            if st is None or not st.present:
                continue
            has_carrier = netlink.carrier(ifname, st.ifindex)
            if st.up and has_carrier is False:
                self.log.info("carrier lost on %s (ahead of the link notification)", ifname)
                self._carrier_lost.add(ifname)
                self.link_changed(LinkState(ifname, st.ifindex, True, False))
            elif ifname in self._carrier_lost and has_carrier:
                # Back before the kernel reported anything: its report may never come.
                self._carrier_lost.discard(ifname)
                self.link_changed(LinkState(ifname, st.ifindex, True, True))

    def _moved_too_early(self, key: tuple[Address, Address], entry, now: float) -> bool:
        """Under selection, a flow from a selected parent upstream that also arrives
        elsewhere is kept for ``moved_grace``: that is a switch in progress, not a move."""
        if not self.selector:
            return False
        parent = self.table.vif_by_index(entry.parent)
        if parent is None or self.policy.roles.get(parent.ifname) is not Role.UPSTREAM:
            return False
        if parent.ifname not in self._selected(*key):
            return False
        since = self._misplaced_since.setdefault(key, now)
        return now - since < self.tun.moved_grace

    # --- observability ------------------------------------------------------------------------

    def _served_by(self, source: Address, group: Address) -> dict:
        """For ``ctl show``: which upstreams are joined for (S,G), and why, per downstream."""
        if not self.selector:
            return {}
        why = []
        for (d, s, g), a in sorted(self.selector.assigned.items(), key=lambda kv: str(kv[0])):
            if g != group or s not in (source, None):
                continue
            if s is None and (d, source, g) in self.selector.assigned:
                continue  # this source has a request of its own
            if not self.queriers.get(d) or not self.queriers[d].forwards(source, group):
                continue
            why.append(
                {
                    "downstream": d,
                    "request": f"({'*' if s is None else s}, {g})",
                    "upstreams": sorted(a.upstreams),
                    "why": self.selector.why((d, s, g)),
                }
            )
        return {
            "upstreams": self._selected(source, group),
            "mirrored": self._is_mirrored(source, group),
            "why": why,
        }
