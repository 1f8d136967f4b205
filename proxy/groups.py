"""Router-side records of one link: per group and per source (RFC 3376 §6.2-6.5, RFC 3810 §7).

``GroupTable`` holds the group records of one downstream link and runs the §6.4 state
tables on them: current-state and state-change records, the group and source timers,
Group/Source-Specific Queries with their retransmissions, older-version host compatibility
(§7.3) and the SSM rules of RFC 4605 §4.3. Its forwarding view is ``state(group)``, and
``on_change(group)`` is called once whenever that view changes. ``Querier`` (in
``proxy.querier``) adds querier election and General Queries on top.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from proxy.clock import Handle, Scheduler
from proxy.membership import NO_INTEREST, MembershipState
from proxy.messages import (
    Address,
    FilterMode,
    GroupRecord,
    Leave,
    OldReport,
    Query,
    RecordType,
    Report,
)
from proxy.timers import Timers

log = logging.getLogger("proxy.querier")

Network = IPv4Network | IPv6Network

# Timer comparisons allow for float rounding and for asyncio firing callbacks up to one clock
# resolution early; a deadline within this margin counts as reached.
EPS = 1e-6

_IN = FilterMode.INCLUDE
_EX = FilterMode.EXCLUDE
_R = RecordType


@dataclass(frozen=True)
class Family:
    """What differs between IGMP and MLD for the router side."""

    name: str
    ip_version: int
    max_version: int  # IGMPv3 / MLDv2: the version with source filtering
    leave_version: int  # oldest version whose hosts send Leave / Done (IGMPv2, MLDv1)
    default_ssm: tuple[Network, ...]  # RFC 4607 §1: 232/8, FF3x::/32 for every scope x
    all_nodes: Address  # groups nobody reports (RFC 3376 §5, RFC 3810 §6)

    def reportable(self, group: Address) -> bool:
        if group.version != self.ip_version or not group.is_multicast or group == self.all_nodes:
            return False
        # MLD: scopes 0 (reserved) and 1 (interface-local) are never reported (RFC 3810 §6).
        return self.ip_version == 4 or (int(group) >> 112) & 0xF > 1


IGMP = Family("igmp", 4, 3, 2, (IPv4Network("232.0.0.0/8"),), IPv4Address("224.0.0.1"))
#: ff3x::/32 only: ff3x with a non-zero plen (RFC 3306 unicast-prefix-based groups such as
#: ff3e:40:2001:db8::/64) is any-source multicast.
SSM6 = tuple(IPv6Network(f"ff3{x:x}::/32") for x in range(16))
MLD = Family("mld", 6, 2, 1, SSM6, IPv6Address("ff02::1"))
FAMILIES = {socket.AF_INET: IGMP, 4: IGMP, socket.AF_INET6: MLD, 6: MLD}


@dataclass(eq=False)
class RouterGroup:
    """Router record of one group (RFC 3376 §6.2.3), with absolute expiry times.

    ``x`` holds the sources with a running timer (the INCLUDE list, or X in EXCLUDE mode);
    ``y`` the EXCLUDE-mode sources whose timer is 0. ``timer`` is the group timer, used only
    in EXCLUDE mode. ``older`` maps an older host version to its Host Present expiry.
    """

    mode: FilterMode = _IN
    timer: float = 0.0
    x: dict[Address, float] = field(default_factory=dict)
    y: set[Address] = field(default_factory=set)
    older: dict[int, float] = field(default_factory=dict)
    # Query retransmissions left (RFC 3376 §6.6.3): per source, and for the group query.
    retrans: dict[Address, int] = field(default_factory=dict)
    group_retrans: int = 0
    # One expiry handle per group rather than one per source; it may fire early and re-arm.
    expiry_handle: Handle | None = None
    expiry_at: float = 0.0
    group_query_handle: Handle | None = None
    source_query_handle: Handle | None = None

    def cancel_queries(self) -> None:
        for handle in (self.group_query_handle, self.source_query_handle):
            if handle is not None:
                handle.cancel()
        self.group_query_handle = self.source_query_handle = None
        self.retrans.clear()
        self.group_retrans = 0

    def cancel_all(self) -> None:
        self.cancel_queries()
        if self.expiry_handle is not None:
            self.expiry_handle.cancel()
            self.expiry_handle = None


class GroupTable:
    """The group records of one link and the §6.4 tables that change them.

    A subclass (``Querier``) sets the attributes below in its ``__init__`` and decides
    when this router is the querier, which is when the specific queries are sent.
    """

    _fam: Family
    _version: int
    _timers: Timers
    _sched: Scheduler
    _querier: bool
    _groups: dict[Address, RouterGroup]
    _touched: dict[Address, MembershipState] | None
    _send: Callable[[Query], None]
    _on_change: Callable[[Address], None]
    _ssm: tuple[Network, ...]
    _own: Address
    counters: Counter[str]

    @property
    def is_v3(self) -> bool:
        """True for IGMPv3 and MLDv2, the source-filtering versions."""
        return self._version == self._fam.max_version

    # ----------------------------------------------------------------- forwarding view

    def state(self, group: Address) -> MembershipState:
        """RFC 4605 per-interface state: IN(sources with timer>0) or EX(sources with timer 0)."""
        rec = self._groups.get(group)
        if rec is None:
            return NO_INTEREST
        if rec.mode is _IN:
            return MembershipState(_IN, frozenset(rec.x))
        return MembershipState(_EX, frozenset(rec.y))

    def forwards(self, source: Address, group: Address) -> bool:
        """Whether (source, group) traffic is wanted on this link (RFC 3376 §6.3)."""
        return self.state(group).allows(source)

    def groups(self) -> list[Address]:
        """Groups that have a record, sorted."""
        return sorted(self._groups)

    def compat_version(self, group: Address) -> int:
        """Group Compatibility Mode: lowest version with hosts present (RFC 3376 §7.3.2)."""
        return self._compat(self._groups.get(group))

    # ----------------------------------------------------------------- input

    def _ignore(self, reason: str) -> None:
        self.counters[f"ignored.{reason}"] += 1

    def _lower_timers(self, q: Query) -> None:
        """§6.6.1: a Q(G)/Q(G,A) with S clear lowers the group / source timers to LMQT."""
        rec = self._groups.get(q.group)
        if rec is None:
            return
        self._touch(q.group)
        limit = self._sched.time() + self._timers.lmqt
        if q.sources:
            for s in q.sources:
                if s in rec.x and rec.x[s] > limit:
                    rec.x[s] = limit
        elif rec.mode is _EX and rec.timer > limit:
            rec.timer = limit
        self._reschedule_expiry(q.group, rec)

    def _receive_report(self, msg: Report) -> None:
        self.counters["reports_received"] += 1
        if not self.is_v3:
            # An IGMPv1/v2 or MLDv1 router does not understand v3/v2 reports.
            self._ignore("report-version")
            return
        for record in msg.records:
            self.counters["records_received"] += 1
            self._apply_record(record)

    def _receive_old_report(self, msg: OldReport) -> None:
        self.counters["old_reports_received"] += 1
        group = msg.group
        if msg.version > self._version:
            self._ignore("report-version")
        elif not self._fam.reportable(group):
            self._ignore("bad-group")
        elif self._in_ssm(group):
            self._ignore("ssm-any-source")
        else:
            rec = self._record(group)
            if msg.version < self._version:
                rec.older[msg.version] = self._sched.time() + self._timers.older_version_present()
            # §7.3.2: a v1/v2 report is IS_EX({}).
            self._current_state(rec, _R.MODE_IS_EXCLUDE, frozenset())
            self._settle(group, rec)

    def _receive_leave(self, msg: Leave) -> None:
        self.counters["leaves_received"] += 1
        group = msg.group
        rec = self._groups.get(group)
        if not self._fam.reportable(group):
            self._ignore("bad-group")
        elif self._in_ssm(group):
            self._ignore("ssm-any-source")
        elif self._compat(rec) < self._fam.leave_version:
            # IGMPv1 hosts cannot leave, so a Leave must not cut them off (§7.3.2).
            self._ignore("leave-v1-compat")
        elif rec is None:
            self._ignore("leave-unknown-group")
        else:
            self._touch(group)
            # A Leave/Done is TO_IN({}).
            self._state_change(group, rec, _R.CHANGE_TO_INCLUDE, frozenset())
            self._settle(group, rec)

    def _apply_record(self, record: GroupRecord) -> None:
        group, rtype = record.group, record.rtype
        sources = frozenset(record.sources)
        if not self._fam.reportable(group):
            self._ignore("bad-group")
            return
        if self._in_ssm(group) and rtype in (_R.MODE_IS_EXCLUDE, _R.CHANGE_TO_EXCLUDE):
            self._ignore("ssm-exclude")
            return
        if self._compat(self._groups.get(group)) < self._fam.max_version:
            # §7.3.2 / RFC 3810 §8.3.2: older hosts would not see the effect of these.
            if rtype is _R.BLOCK_OLD_SOURCES:
                self._ignore("compat-block")
                return
            if rtype is _R.CHANGE_TO_EXCLUDE:
                sources = frozenset()
        rec = self._record(group)
        if rtype in (_R.MODE_IS_INCLUDE, _R.MODE_IS_EXCLUDE):
            self._current_state(rec, rtype, sources)
        else:
            self._state_change(group, rec, rtype, sources)
        self._settle(group, rec)

    # ----------------------------------------------------------------- §6.4 tables

    def _current_state(self, rec: RouterGroup, rtype: RecordType, b: frozenset) -> None:
        """RFC 3376 §6.4.1 (RFC 3810 §7.4.1); ``b`` is the record's source list."""
        gmi_at = self._sched.time() + self._timers.gmi
        if rtype is _R.MODE_IS_INCLUDE:
            # IN(A)+IS_IN(B): IN(A+B), (B)=GMI.  EX(X,Y)+IS_IN(A): EX(X+A,Y-A), (A)=GMI.
            rec.y -= b
            rec.x.update(dict.fromkeys(b, gmi_at))
        elif rec.mode is _IN:
            # IN(A)+IS_EX(B): EX(A*B,B-A), (B-A)=0, Delete(A-B), Group Timer=GMI.
            a = set(rec.x)
            rec.x = {s: t for s, t in rec.x.items() if s in b}
            rec.y = set(b - a)
            rec.mode, rec.timer = _EX, gmi_at
        else:
            # EX(X,Y)+IS_EX(A): EX(A-Y,Y*A), (A-X-Y)=GMI, Delete(X-A), Delete(Y-A), GT=GMI.
            x, y = set(rec.x), rec.y
            kept = {s: t for s, t in rec.x.items() if s in b}
            kept.update(dict.fromkeys(b - x - y, gmi_at))
            rec.x, rec.y, rec.timer = kept, y & b, gmi_at
        self._drop_stale_retrans(rec)

    def _state_change(
        self, group: Address, rec: RouterGroup, rtype: RecordType, b: frozenset
    ) -> None:
        """RFC 3376 §6.4.2 (RFC 3810 §7.4.2); ``b`` is the record's source list."""
        now = self._sched.time()
        gmi_at = now + self._timers.gmi
        if rec.mode is _IN:
            a = frozenset(rec.x)
            if rtype is _R.ALLOW_NEW_SOURCES:
                # IN(A)+ALLOW(B): IN(A+B), (B)=GMI.
                rec.x.update(dict.fromkeys(b, gmi_at))
            elif rtype is _R.BLOCK_OLD_SOURCES:
                # IN(A)+BLOCK(B): IN(A), Send Q(G,A*B).
                self._query_sources(group, rec, a & b)
            elif rtype is _R.CHANGE_TO_EXCLUDE:
                # IN(A)+TO_EX(B): EX(A*B,B-A), (B-A)=0, Delete(A-B), Send Q(G,A*B), GT=GMI.
                rec.x = {s: t for s, t in rec.x.items() if s in b}
                rec.y = set(b - a)
                rec.mode, rec.timer = _EX, gmi_at
                self._drop_stale_retrans(rec)
                self._query_sources(group, rec, a & b)
            else:
                # IN(A)+TO_IN(B): IN(A+B), (B)=GMI, Send Q(G,A-B).
                rec.x.update(dict.fromkeys(b, gmi_at))
                self._query_sources(group, rec, a - b)
            return
        x, y = frozenset(rec.x), frozenset(rec.y)
        if rtype is _R.ALLOW_NEW_SOURCES:
            # EX(X,Y)+ALLOW(A): EX(X+A,Y-A), (A)=GMI.
            rec.y -= b
            rec.x.update(dict.fromkeys(b, gmi_at))
        elif rtype is _R.BLOCK_OLD_SOURCES:
            # EX(X,Y)+BLOCK(A): EX(X+(A-Y),Y), (A-X-Y)=Group Timer, Send Q(G,A-Y).
            rec.x.update(dict.fromkeys(b - x - y, rec.timer))
            self._query_sources(group, rec, b - y)
        elif rtype is _R.CHANGE_TO_EXCLUDE:
            # EX(X,Y)+TO_EX(A): EX(A-Y,Y*A), (A-X-Y)=Group Timer, Delete(X-A), Delete(Y-A),
            # Send Q(G,A-Y), Group Timer=GMI.
            kept = {s: t for s, t in rec.x.items() if s in b}
            kept.update(dict.fromkeys(b - x - y, rec.timer))
            rec.x, rec.y = kept, set(y & b)
            self._drop_stale_retrans(rec)
            self._query_sources(group, rec, b - y)
            rec.timer = gmi_at
        else:
            # EX(X,Y)+TO_IN(A): EX(X+A,Y-A), (A)=GMI, Send Q(G,X-A), Send Q(G).
            rec.y -= b
            rec.x.update(dict.fromkeys(b, gmi_at))
            self._query_sources(group, rec, x - b)
            self._query_group(group, rec)

    # ----------------------------------------------------------------- specific queries

    def _query_sources(self, group: Address, rec: RouterGroup, sources: Iterable[Address]) -> None:
        """Table action Send Q(G,A) (RFC 3376 §6.6.3.2)."""
        # Only the querier sends; a non-querier's timers are lowered by the querier's query.
        # Q(G,A) needs the v3/MLDv2 format; older queriers never get here with sources.
        if not self._querier or not self.is_v3:
            return
        now = self._sched.time()
        limit = now + self._timers.lmqt
        started = False
        for s in sources:
            # Sources at or below LMQT are already being queried or about to expire.
            if rec.x.get(s, 0.0) > limit + EPS:
                rec.x[s] = limit
                rec.retrans[s] = self._timers.lmqc
                started = True
        if started:
            self._reschedule_expiry(group, rec)
            self._send_source_queries(group, rec)

    def _send_source_queries(self, group: Address, rec: RouterGroup) -> None:
        now = self._sched.time()
        lmqt = self._timers.lmqt
        suppressed: list[Address] = []
        plain: list[Address] = []
        for s, left in list(rec.retrans.items()):
            expiry = rec.x.get(s)
            if expiry is None:
                del rec.retrans[s]
                continue
            # S=1 for sources refreshed meanwhile: other routers must not lower their timers.
            (suppressed if expiry - now > lmqt + EPS else plain).append(s)
            if left > 1:
                rec.retrans[s] = left - 1
            else:
                del rec.retrans[s]
        if rec.source_query_handle is not None:
            rec.source_query_handle.cancel()
            rec.source_query_handle = None
        if rec.retrans:
            rec.source_query_handle = self._sched.call_later(
                self._timers.last_listener_query_interval, self._retransmit_sources, group, rec
            )
        for s_flag, sources in ((True, suppressed), (False, plain)):
            if sources:
                lmqi = self._timers.last_listener_query_interval
                self._emit(self._query(group, lmqi, sorted(sources), s_flag), "source")

    def _retransmit_sources(self, group: Address, rec: RouterGroup) -> None:
        rec.source_query_handle = None
        if self._querier and self._groups.get(group) is rec:
            self._send_source_queries(group, rec)

    def _query_group(self, group: Address, rec: RouterGroup) -> None:
        """Table action Send Q(G) (RFC 3376 §6.6.3.1)."""
        if not self._querier or rec.mode is not _EX:
            return
        limit = self._sched.time() + self._timers.lmqt
        # A timer already at or below LMQT means a last-member query round is under way.
        if rec.timer > limit + EPS:
            rec.timer = limit
            rec.group_retrans = self._timers.lmqc
            self._reschedule_expiry(group, rec)
            self._send_group_query(group, rec)

    def _send_group_query(self, group: Address, rec: RouterGroup) -> None:
        now = self._sched.time()
        s_flag = rec.timer - now > self._timers.lmqt + EPS
        rec.group_retrans -= 1
        if rec.group_query_handle is not None:
            rec.group_query_handle.cancel()
            rec.group_query_handle = None
        lmqi = self._timers.last_listener_query_interval
        if rec.group_retrans > 0:
            rec.group_query_handle = self._sched.call_later(
                lmqi, self._retransmit_group, group, rec
            )
        self._emit(self._query(group, lmqi, (), s_flag), "group")

    def _retransmit_group(self, group: Address, rec: RouterGroup) -> None:
        rec.group_query_handle = None
        if self._querier and self._groups.get(group) is rec and rec.mode is _EX:
            self._send_group_query(group, rec)

    # ----------------------------------------------------------------- query messages

    def _query(
        self, group: Address, max_resp: float, sources: Iterable[Address] = (), s_flag: bool = False
    ) -> Query:
        if not self.is_v3:
            # IGMPv2/MLDv1 queries have no S, QRV or QQIC fields, and an IGMPv1 query has no
            # response time at all: it is sent as 0 (RFC 2236 §4) and hosts assume 10 s.
            if self._fam is IGMP and self._version == 1:
                max_resp = 0.0
            return Query(self._version, group, max_resp)
        rv = self._timers.robustness
        return Query(
            self._version,
            group,
            max_resp,
            tuple(sources),
            s_flag=s_flag,
            qrv=rv if rv <= 7 else 0,
            qqi=self._timers.query_interval,
        )

    def _emit(self, query: Query, kind: str) -> None:
        self.counters["queries_sent"] += 1
        self.counters[f"{kind}_queries_sent"] += 1
        try:
            self._send(query)
        except OSError as exc:
            # The link may be going down; timers keep running and the next send retries.
            self.counters["send_errors"] += 1
            log.warning("%s query on %s failed: %s", self._fam.name, self._own, exc)

    # ----------------------------------------------------------------- records and timers

    def _in_ssm(self, group: Address) -> bool:
        return any(group in net for net in self._ssm)

    def _compat(self, rec: RouterGroup | None) -> int:
        if rec is None or not rec.older:
            return self._version
        now = self._sched.time()
        running = [v for v, t in rec.older.items() if t > now + EPS]
        return min(running, default=self._version)

    def _record(self, group: Address) -> RouterGroup:
        """The record of ``group``, created as INCLUDE({}) if missing; marks it touched."""
        self._touch(group)
        rec = self._groups.get(group)
        if rec is None:
            rec = self._groups[group] = RouterGroup()
        return rec

    @staticmethod
    def _drop_stale_retrans(rec: RouterGroup) -> None:
        for s in [s for s in rec.retrans if s not in rec.x]:
            del rec.retrans[s]

    def _settle(self, group: Address, rec: RouterGroup) -> None:
        """Delete an empty INCLUDE record, otherwise re-arm its expiry timer."""
        if rec.mode is _IN and not rec.x:
            rec.cancel_all()
            if self._groups.get(group) is rec:
                del self._groups[group]
        else:
            self._reschedule_expiry(group, rec)

    def _reschedule_expiry(self, group: Address, rec: RouterGroup) -> None:
        deadlines = [*rec.x.values(), *rec.older.values()]
        if rec.mode is _EX:
            deadlines.append(rec.timer)
        if not deadlines:
            return
        due = min(deadlines)
        # Keep a handle that fires no later than needed; it re-arms itself for the rest.
        if rec.expiry_handle is not None:
            if rec.expiry_at <= due + EPS:
                return
            rec.expiry_handle.cancel()
        rec.expiry_at = due
        rec.expiry_handle = self._sched.call_later(
            due - self._sched.time(), self._expire, group, rec
        )

    def _expire(self, group: Address, rec: RouterGroup) -> None:
        """Group, source and older-host timers that ran out (RFC 3376 §6.3, §6.5, §7.3.2)."""
        rec.expiry_handle = None
        if self._groups.get(group) is not rec:
            return
        with self._tracking():
            self._touch(group)
            reached = self._sched.time() + EPS
            for version in [v for v, t in rec.older.items() if t <= reached]:
                del rec.older[version]
            for s in [s for s, t in rec.x.items() if t <= reached]:
                del rec.x[s]
                rec.retrans.pop(s, None)
                if rec.mode is _EX:
                    # EXCLUDE keeps the source, now blocked (timer 0).
                    rec.y.add(s)
            if rec.mode is _EX and rec.timer <= reached:
                # §6.5: INCLUDE with the sources still running, or delete the record.
                rec.mode, rec.y, rec.timer = _IN, set(), 0.0
                if rec.group_query_handle is not None:
                    rec.group_query_handle.cancel()
                    rec.group_query_handle = None
                rec.group_retrans = 0
            self._settle(group, rec)

    # ----------------------------------------------------------------- change tracking

    @contextmanager
    def _tracking(self) -> Iterator[None]:
        """Call ``on_change`` once per group whose forwarding view differs afterwards."""
        if self._touched is not None:
            # Nested (e.g. send looped a message back): the outer block reports.
            yield
            return
        self._touched = touched = {}
        try:
            yield
        finally:
            self._touched = None
            for group, before in touched.items():
                if self.state(group) != before:
                    self._on_change(group)

    def _touch(self, group: Address) -> None:
        if self._touched is not None and group not in self._touched:
            self._touched[group] = self.state(group)
