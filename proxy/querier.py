"""Router side of one downstream interface: querier election, General Queries, lifecycle.

One ``Querier`` runs RFC 3376 §6 (IGMPv3) or RFC 3810 §7 (MLDv2) on one link, with the
older-version compatibility of RFC 3376 §7.3 / RFC 3810 §8.3 and the SSM rules of RFC 4605
§4.3. The two families share one implementation: only the per-family constants in
``proxy.groups.FAMILIES`` differ. The per-group records and the §6.4 tables are
``proxy.groups.GroupTable``, which ``Querier`` extends. Nothing here touches sockets or
clocks: received messages come in through ``receive()``, queries go out through the injected
``send`` callable, and all timing goes through an injected ``Scheduler`` (an asyncio loop in
the daemon, ``FakeScheduler`` in tests).

The result consumed by the proxy is the forwarding view: ``state(group)`` is the RFC 4605
per-interface record INCLUDE(sources with running timers) or EXCLUDE(sources whose timers
are 0), and ``on_change(group)`` is called once whenever that view changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from proxy.clock import FakeScheduler, Handle, Scheduler
from proxy.groups import EPS, FAMILIES, GroupTable, Network, RouterGroup
from proxy.membership import MembershipState
from proxy.messages import (
    Address,
    FilterMode,
    Leave,
    Message,
    OldReport,
    Query,
    Report,
)
from proxy.timers import Timers

__all__ = ["FakeScheduler", "Querier", "Scheduler"]


class Querier(GroupTable):
    """IGMP/MLD router state machine of one downstream link (RFC 3376 §6, RFC 3810 §7).

    ``version`` is the highest version spoken (IGMP 1-3, MLD 1-2); ``family`` is
    ``socket.AF_INET``/``AF_INET6`` (4 and 6 are accepted too). ``ssm_range`` is one
    network or several; None means RFC 4607's ranges (232/8, or ff3x::/32 for every scope
    x), an empty tuple disables SSM rules.
    """

    def __init__(
        self,
        *,
        version: int,
        family: int,
        timers: Timers,
        scheduler: Scheduler,
        own_address: Address | str,
        send: Callable[[Query], None],
        on_change: Callable[[Address], None],
        election: bool = True,
        ssm_range: Network | str | Iterable[Network | str] | None = None,
    ) -> None:
        try:
            self._fam = FAMILIES[family]
        except KeyError:
            raise ValueError(f"unknown address family {family!r}") from None
        if not 1 <= version <= self._fam.max_version:
            raise ValueError(f"{self._fam.name} version must be 1..{self._fam.max_version}")
        own = ip_address(own_address)
        if own.version != self._fam.ip_version:
            raise ValueError(f"own address {own} is not IPv{self._fam.ip_version}")
        self._version = version
        self._configured = timers
        self._timers = timers
        self._sched = scheduler
        self._own: Address = own
        self._send = send
        self._on_change = on_change
        self._election = election
        self._ssm = self._ssm_networks(ssm_range)
        self._groups: dict[Address, RouterGroup] = {}
        self._running = False
        self._querier = False
        self._startup_left = 0
        self._general_handle: Handle | None = None
        self._general_at = 0.0
        self._other_querier: Address | None = None
        self._other_expires = 0.0
        self._other_handle: Handle | None = None
        self._touched: dict[Address, MembershipState] | None = None
        self.counters: Counter[str] = Counter()

    def _ssm_networks(self, ssm_range: Any) -> tuple[Network, ...]:
        if ssm_range is None:
            return self._fam.default_ssm
        items = [ssm_range] if isinstance(ssm_range, str | IPv4Network | IPv6Network) else ssm_range
        nets = tuple(ip_network(n) for n in items)
        for net in nets:
            # A range of the other family could never match: it is a configuration error.
            if net.version != self._fam.ip_version:
                raise ValueError(f"SSM range {net} is not IPv{self._fam.ip_version}")
        return nets

    # ----------------------------------------------------------------- properties

    @property
    def version(self) -> int:
        """Configured (highest) protocol version."""
        return self._version

    @property
    def family(self) -> str:
        """``"igmp"`` or ``"mld"``."""
        return self._fam.name

    @property
    def is_querier(self) -> bool:
        """Whether this router currently sends queries on the link."""
        return self._querier

    @property
    def running(self) -> bool:
        """Between ``start()`` and ``stop()``."""
        return self._running

    @property
    def own_address(self) -> Address:
        """Address used for querier election (IPv4 address / IPv6 link-local)."""
        return self._own

    @own_address.setter
    def own_address(self, value: Address | str) -> None:
        own = ip_address(value)
        if own.version != self._fam.ip_version:
            raise ValueError(f"own address {own} is not IPv{self._fam.ip_version}")
        self._own = own

    @property
    def other_querier(self) -> Address | None:
        """Address of the querier we deferred to, while its Other Querier Present timer runs."""
        return self._other_querier

    @property
    def timers(self) -> Timers:
        """Timers in effect: configured ones, or QRV/QQI adopted from the elected querier."""
        return self._timers

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Become querier and send the startup General Queries (RFC 3376 §6.6.2)."""
        self._running = True
        self._begin_as_querier(startup=True)

    def set_timers(self, timers: Timers) -> None:
        """New configured timers (a reload), without dropping any state.

        Running group and source timers keep their deadlines; queries and timers started
        from now on use the new values. A querier whose next General Query is due later
        than the new query interval sends it at the new interval.
        """
        self._configured = timers
        if not self._running or self._querier:
            self._timers = timers
        late = self._general_at - self._sched.time() > timers.query_interval + EPS
        if self._querier and self._general_handle is not None and self._startup_left == 0 and late:
            self._general_handle.cancel()
            self._general_handle = self._sched.call_later(
                timers.query_interval, self._general_query_due
            )
            self._general_at = self._sched.time() + timers.query_interval

    def restart(self) -> None:
        """Link up: querier again at once with startup queries; group state is kept."""
        self.start()

    def stop(self) -> None:
        """Cancel all timers and drop every group, calling ``on_change`` for each."""
        self._running = False
        self._querier = False
        self._cancel_general()
        self._cancel_other()
        self._timers = self._configured
        with self._tracking():
            for group in list(self._groups):
                self._touch(group)
                self._groups.pop(group).cancel_all()

    def _begin_as_querier(self, *, startup: bool) -> None:
        self._cancel_other()
        # Values adopted from another querier stop applying once we query ourselves.
        self._timers = self._configured
        self._querier = True
        self._startup_left = self._timers.sqc if startup else 0
        self._cancel_general()
        self._general_query_due()

    def _cancel_general(self) -> None:
        if self._general_handle is not None:
            self._general_handle.cancel()
            self._general_handle = None

    def _cancel_other(self) -> None:
        if self._other_handle is not None:
            self._other_handle.cancel()
            self._other_handle = None
        self._other_querier = None

    # ----------------------------------------------------------------- forwarding view

    def snapshot(self) -> dict[str, Any]:
        """JSON-serializable view of the querier and every group, times as seconds left."""
        now = self._sched.time()

        def left(expiry: float) -> float:
            return round(max(0.0, expiry - now), 6)

        groups = {}
        for g in sorted(self._groups):
            rec = self._groups[g]
            sources = {str(s): left(t) for s, t in rec.x.items()}
            sources.update((str(s), 0.0) for s in rec.y)
            groups[str(g)] = {
                "mode": rec.mode.value,
                "group_timer": left(rec.timer) if rec.mode is FilterMode.EXCLUDE else 0.0,
                "sources": dict(sorted(sources.items())),
                "compat_version": self._compat(rec),
                "older_host_present": {str(v): left(t) for v, t in sorted(rec.older.items())},
            }
        return {
            "family": self._fam.name,
            "version": self._version,
            "address": str(self._own),
            "running": self._running,
            "is_querier": self._querier,
            "other_querier": None if self._other_querier is None else str(self._other_querier),
            "other_querier_timeout": (
                None if self._other_querier is None else left(self._other_expires)
            ),
            "startup_queries_left": self._startup_left,
            "robustness": self._timers.robustness,
            "query_interval": self._timers.query_interval,
            "groups": groups,
            "counters": dict(sorted(self.counters.items())),
        }

    # ----------------------------------------------------------------- input

    def receive(self, msg: Message, src: Address) -> None:
        """Process one received IGMP/MLD message from link address ``src``."""
        if not self._running:
            self._ignore("stopped")
            return
        with self._tracking():
            if isinstance(msg, Query):
                self._receive_query(msg, src)
            elif isinstance(msg, Report):
                self._receive_report(msg)
            elif isinstance(msg, OldReport):
                self._receive_old_report(msg)
            elif isinstance(msg, Leave):
                self._receive_leave(msg)
            else:
                self._ignore("unknown-message")

    def _receive_query(self, q: Query, src: Address) -> None:
        self.counters["queries_received"] += 1
        if src == self._own:
            self._ignore("own-query")
            return
        if q.version != self._version:
            # RFC 3376 §7.3.1: mixed querier versions must be fixed by configuration; count it.
            self.counters["queries_received_other_version"] += 1
        if not self._election or int(src) == 0:
            # An unspecified source (e.g. a snooping switch) takes no part in the election.
            return
        if src > self._own:
            return
        # §6.6.2: a lower address wins. Of several lower ones, all but the lowest soon defer
        # too, so the last one heard is the querier.
        self._other_querier = src
        if self._querier:
            self._querier = False
            self._startup_left = 0
            self._cancel_general()
            for rec in self._groups.values():
                rec.cancel_queries()
        if q.version == self._fam.max_version:
            self._adopt(q)
        now = self._sched.time()
        self._other_expires = now + self._timers.oqpi
        if self._other_handle is not None:
            self._other_handle.cancel()
        self._other_handle = self._sched.call_later(self._timers.oqpi, self._other_querier_gone)
        if not q.is_general and not q.s_flag:
            self._lower_timers(q)

    def _adopt(self, q: Query) -> None:
        """Non-querier adopts the querier's QRV and QQI (RFC 3376 §4.1.6-7)."""
        values: dict[str, float] = {}
        if q.qrv and q.qrv != self._timers.robustness:
            values["robustness"] = q.qrv
        if q.qqi and q.qqi != self._timers.query_interval:
            values["query_interval"] = q.qqi
        if not values:
            return
        try:
            self._timers = replace(self._timers, **values)
        except ValueError:
            # e.g. a QQI not above our QRI: keep the values we have.
            self._ignore("query-bad-qrv-qqi")

    def _other_querier_gone(self) -> None:
        self._other_handle = None
        self._other_querier = None
        if self._running:
            # §6.6.2: resume sending General Queries (one now, then every QI).
            self._begin_as_querier(startup=False)

    # ----------------------------------------------------------------- general queries

    def _general_query_due(self) -> None:
        self._general_handle = None
        if not (self._running and self._querier):
            return
        if self._startup_left > 0:
            self._startup_left -= 1
        # Schedule before sending so that a failing send cannot stop the periodic queries.
        delay = self._timers.sqi if self._startup_left > 0 else self._timers.query_interval
        self._general_handle = self._sched.call_later(delay, self._general_query_due)
        self._general_at = self._sched.time() + delay
        unspecified = IPv4Address(0) if self._fam.ip_version == 4 else IPv6Address(0)
        self._emit(self._query(unspecified, self._timers.query_response_interval), "general")
