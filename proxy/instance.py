"""One proxy instance: queriers on its downstreams, host memberships upstream, and its MFC.

The instance glues the pure state machines (``querier``, ``routing``) to the kernel
(``kernel``, ``upstream``, ``wire``). Every change of a downstream's forwarding view ends in
``refresh(group)``, which recomputes the upstream subscriptions and the output interfaces
of every (S,G) entry of that group, so running flows follow joins and leaves at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from proxy import kernel, netlink
from proxy.clock import Scheduler
from proxy.config import Instance
from proxy.kernel import MrouteTable, Upcall, UpcallType
from proxy.membership import MembershipState
from proxy.messages import Address, Message, Query
from proxy.netlink import LinkState
from proxy.querier import Querier
from proxy.routing import Policy, Role
from proxy.upstream import HostMemberships
from proxy.wire import QuerySender, join_router_groups

# Where a flow may arrive from, best first: a local source beats a peer, a peer beats an
# upstream (RFC 7287 §5.4: the peering is the preferred upstream).
_RANK = {Role.DOWNSTREAM: 0, Role.PEERING: 1, Role.UPSTREAM: 2}


@dataclass
class Tunables:
    """Data-plane timing of an instance, in seconds."""

    poll_interval: float = 0.1  # MFC counter polling
    idle_timeout: float = 60.0  # delete (S,G) entries without packets for this long
    peering_source_timeout: float = 0.05  # RFC 7287 §5.4: revoke the upstream filter


def is_routable_group(group: Address) -> bool:
    """False for link-local scope groups, which are never proxied."""
    if group.version == 6:
        return (group.packed[1] & 0x0F) > 2
    return not group.is_link_local and int(group) >> 8 != 0xE00000


class ProxyInstance:
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

    # --- life cycle ---------------------------------------------------------------------

    def start(self, links: dict[str, LinkState]) -> None:
        for ifname in self.policy.roles:
            kernel.mrule_add(self.family, ifname, self.cfg.table_id)
            self.link_changed(links.get(ifname, LinkState(ifname, 0, False, False)))
        self._poll_handle = self.scheduler.call_later(self.tun.poll_interval, self._poll)

    def stop(self) -> None:
        """Leave upstream groups, remove MFC entries, vifs and mrules."""
        if self._poll_handle:
            self._poll_handle.cancel()
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

    def reconfigure(self, cfg: Instance, links: dict[str, LinkState]) -> None:
        """Apply a changed configuration in place: only changed interfaces are touched."""
        new_policy = Policy(cfg)
        for ifname, role in list(self.policy.roles.items()):
            if new_policy.roles.get(ifname) is not role:
                self.remove_interface(ifname)
        self.cfg = cfg
        added = [n for n in new_policy.roles if n not in self.policy.roles]
        self.policy = new_policy
        for ifname in added:
            kernel.mrule_add(self.family, ifname, cfg.table_id)
            self.link_changed(links.get(ifname, LinkState(ifname, 0, False, False)))
        for group in self.groups():
            self.refresh(group)

    def link_changed(self, st: LinkState) -> None:
        role = self.policy.roles.get(st.ifname)
        if role is None:
            return
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
        self.log.info("link up: %s (%s)", ifname, role.value)
        self.emit("proxy_link_up", ifname)
        self.addresses[ifname] = netlink.own_address(self.family, ifname)
        if role is not Role.UPSTREAM:
            q = self.queriers.get(ifname) or self._make_querier(ifname)
            q.own_address = self.addresses[ifname] or q.own_address
            q.start()
        if role is not Role.DOWNSTREAM:
            for group in self.groups():
                self._apply_subscriptions(group)

    def _link_down(self, ifname: str, role: Role, gone: bool) -> None:
        self.log.info("link %s: %s (%s)", "gone" if gone else "down", ifname, role.value)
        self.emit("proxy_link_down", ifname)
        vif = self.table.vifs.get(ifname)
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
        else:
            self.counters["rx_upstream_ignored"] += 1

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
            current = self.table.vif_by_index(entry.parent)
            new_role = self.policy.roles.get(vif.ifname)
            cur_role = self.policy.roles.get(current.ifname) if current else None
            if new_role and (cur_role is None or _RANK[new_role] < _RANK[cur_role]):
                self.log.info("(%s, %s) now arrives on %s", up.source, up.group, vif.ifname)
                self._install(up.source, up.group, vif.ifname)

    def _install(self, source: Address, group: Address, iif: str) -> None:
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
        names = self.policy.oifs(iif, source, group, self._wants)
        return frozenset(self.table.vifs[n].index for n in names if n in self.table.vifs)

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
        """Recompute upstream subscriptions and the oifs of every (S,G) of ``group``."""
        if not is_routable_group(group):
            return
        self._apply_subscriptions(group)
        for (source, g), entry in list(self.table.mfc.items()):
            if g != group:
                continue
            iif = self.table.vif_by_index(entry.parent)
            if iif is None:
                continue
            oifs = self._oif_indexes(iif.ifname, source, group)
            if oifs != entry.oifs:
                self.table.set_mfc(source, group, entry.parent, oifs)
                names = sorted(v.ifname for v in self.table.vifs.values() if v.index in oifs)
                self.emit(
                    "mfc_updated", f"({source},{group}) {iif.ifname} -> {' '.join(names) or '-'}"
                )

    def _downstream_states(self, group: Address) -> dict[str, MembershipState]:
        return {
            name: q.state(group)
            for name, q in self.queriers.items()
            if self.policy.roles.get(name) is Role.DOWNSTREAM and self.links.get(name, _DOWN).up
        }

    def _apply_subscriptions(self, group: Address) -> None:
        if not is_routable_group(group):
            return
        subs = self.policy.subscriptions(
            group,
            self._downstream_states(group),
            peered_sources=frozenset(self.peered.get(group, {})),
        )
        for ifname, state in subs.items():
            if not self.links.get(ifname, _DOWN).up:
                continue
            try:
                if self.host.set(ifname, group, state):
                    self.counters["upstream_changes"] += 1
                    self.log.info("upstream %s: %s %s", ifname, group, state)
                    self.emit("upstream_changed", f"{ifname} {group} {state}")
            except kernel.KernelError as exc:
                self.log.warning("%s", exc)

    # --- periodic work ---------------------------------------------------------------------

    def _poll(self) -> None:
        self._poll_handle = self.scheduler.call_later(self.tun.poll_interval, self._poll)
        before = {k: (e.packets, e.wrong_if) for k, e in self.table.mfc.items()}
        self.table.refresh_counters()
        dt = self.tun.poll_interval
        for key, entry in list(self.table.mfc.items()):
            pkts, wrong = before.get(key, (entry.packets, entry.wrong_if))
            # The kernel counts every packet that hits the entry, on the wrong interface too.
            arrived, misplaced = entry.packets - pkts, entry.wrong_if - wrong
            good = arrived - misplaced
            if misplaced and not good:
                # The flow left its parent interface and now hits another one (a source
                # that moved): forget the entry so its next packet installs it anew.
                self._delete_entry(*key)
                continue
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

    # --- observability ---------------------------------------------------------------------

    def snapshot(self) -> dict:
        vifname = {v.index: v.ifname for v in self.table.vifs.values()}
        return {
            "name": self.name,
            "table": self.cfg.table_id,
            "interfaces": {
                name: {
                    "role": role.value,
                    "present": self.links.get(name, _DOWN).present,
                    "up": self.links.get(name, _DOWN).up,
                    "vif": self.table.vifs[name].index if name in self.table.vifs else None,
                    "address": str(self.addresses.get(name) or ""),
                }
                for name, role in self.policy.roles.items()
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
            "mfc": [
                {
                    "source": str(e.source),
                    "group": str(e.group),
                    "iif": vifname.get(e.parent, e.parent),
                    "oifs": sorted(vifname.get(i, str(i)) for i in e.oifs),
                    "packets": e.packets,
                    "bytes": e.bytes,
                    "wrong_if": e.wrong_if,
                }
                for e in self.table.mfc.values()
            ],
            "counters": dict(self.counters),
        }


_DOWN = LinkState("", 0, False, False)


def _unspecified(family: int) -> Address:
    from ipaddress import ip_address

    return ip_address("::" if family == 6 else "0.0.0.0")
