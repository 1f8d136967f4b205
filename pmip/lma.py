"""The local mobility anchor (RFC 5213 §5): binding cache, HNP routes, PBA replies."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address, IPv6Network

from pmip.mh import (
    MAX_LIFETIME_S,
    MIN_DELAY_BEFORE_BCE_DELETE_S,
    PBA,
    PBU,
    BuFlags,
    MhError,
    Status,
    encode_pba,
    event_detail,
    event_prefixes,
    open_mh_socket,
    receive_mh,
)
from pmip.routes import RouteError, RouteTable
from proxy.events import EventLog


@dataclass
class BindingCacheEntry:
    """One mobility session at the LMA (RFC 5213 §5.1), keyed by MN identifier."""

    mn_id: str
    hnps: tuple[IPv6Network, ...]
    proxy_coa: IPv6Address
    tunnel_if: str
    lifetime_s: int
    sequence: int
    timestamp: int | None
    deregistering: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _sequence_newer(new: int, old: int) -> bool:
    """RFC 6275 §9.5.1: modulo 2**16 comparison."""
    return 0 < (new - old) % 0x10000 < 0x8000


class LmaAgent:
    """Local mobility anchor: binding cache, HNP routes towards the serving MAG, PBA replies.

    ``tunnel_ifs`` are the point-to-point MAG links PBUs may arrive on; the route of a binding
    goes out of the link its PBU came in on, via the Proxy-CoA. ``coa_tunnels`` maps a
    Proxy-CoA to its IPv6-in-IPv6 tunnel device (RFC 5213 §6.10: the PBU arrives outside the
    tunnel, on the transport link); those routes point into the tunnel, with no gateway.
    ``bce_delete_delay`` is MinDelayBeforeBCEDelete (10 s in RFC 5213).
    """

    def __init__(
        self,
        address: IPv6Address,
        *,
        tunnel_ifs: Iterable[str] = (),
        coa_tunnels: Mapping[IPv6Address, str] | None = None,
        events: EventLog,
        bce_delete_delay: float = MIN_DELAY_BEFORE_BCE_DELETE_S,
        max_lifetime_s: int = MAX_LIFETIME_S,
        routes: RouteTable | None = None,
    ) -> None:
        self.address = address
        self.routes = routes or RouteTable()
        self.tunnel_ifs = frozenset(tunnel_ifs)
        self.coa_tunnels = dict(coa_tunnels or {})
        self.events = events
        self.bce_delete_delay = bce_delete_delay
        self.max_lifetime_s = max_lifetime_s - max_lifetime_s % 4
        self.bindings: dict[str, BindingCacheEntry] = {}
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Answer PBUs until ``stop`` is set; ``on_ready`` runs once the socket listens."""
        self._loop = asyncio.get_running_loop()
        self._sock = open_mh_socket(self.address)
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock, self._on_readable)
        if on_ready is not None:
            on_ready()
        try:
            await stop.wait()
        finally:
            self._loop.remove_reader(self._sock)
            for bce in self.bindings.values():
                bce.cancel_timer()
            self._sock.close()

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                rx = receive_mh(self._sock)
            except BlockingIOError:
                return
            except MhError as exc:
                self.dropped += 1
                print(f"pmip lma: dropped mobility header: {exc}", file=sys.stderr)
                continue
            if isinstance(rx.msg, PBU):
                reply = self.handle_pbu(rx.msg, rx.src, rx.ifname, rx.recv_ns)
                if reply is not None:
                    self._send_pba(reply, rx.src)

    def _send_pba(self, pba: PBA, coa: IPv6Address) -> None:
        assert self._sock is not None
        data = encode_pba(pba)
        t = time.time_ns()
        try:
            self._sock.sendto(data, (str(coa), 0))
        except OSError as exc:
            print(f"pmip lma: cannot send PBA to {coa}: {exc.strerror}", file=sys.stderr)
            return
        self.events.emit(
            "pba_sent",
            event_detail(
                mn=pba.mn_id, seq=pba.sequence, status=pba.status, to=coa, lifetime=pba.lifetime_s
            ),
            t,
        )

    def _gateway(self, coa: IPv6Address) -> IPv6Address | None:
        """The next hop of an HNP route: none into a tunnel device, else the Proxy-CoA."""
        return None if coa in self.coa_tunnels else coa

    def _tunnel_for(self, coa: IPv6Address, ifname: str | None) -> str | None:
        if coa in self.coa_tunnels:
            return self.coa_tunnels[coa]
        return ifname if ifname in self.tunnel_ifs else None

    def _check(self, pbu: PBU, coa: IPv6Address, tunnel: str | None) -> int:
        """RFC 5213 §5.3.1 validity checks; the status to answer with."""
        if not pbu.flags & BuFlags.P:
            return Status.PROXY_REG_NOT_ENABLED
        if pbu.mn_id is None:
            return Status.MISSING_MN_IDENTIFIER_OPTION
        if tunnel is None:
            return Status.MAG_NOT_AUTHORIZED_FOR_PROXY_REG
        if not pbu.hnps:
            return Status.MISSING_HOME_NETWORK_PREFIX_OPTION
        if pbu.handoff is None:
            return Status.MISSING_HANDOFF_INDICATOR_OPTION
        if pbu.access_tech is None:
            return Status.MISSING_ACCESS_TECH_TYPE_OPTION
        for other in self.bindings.values():
            if other.mn_id != pbu.mn_id and set(other.hnps) & set(pbu.hnps):
                return Status.NOT_AUTHORIZED_FOR_HOME_NETWORK_PREFIX
        bce = self.bindings.get(pbu.mn_id)
        if bce is None:
            return Status.NOT_LMA_FOR_THIS_MOBILE_NODE if pbu.lifetime_s == 0 else Status.ACCEPTED
        if set(bce.hnps) != set(pbu.hnps):
            return Status.BCE_PBU_PREFIX_SET_DO_NOT_MATCH
        # Timestamps order PBUs across MAGs (§5.5); sequence numbers only within one MAG.
        if pbu.timestamp is not None and bce.timestamp is not None:
            if pbu.timestamp < bce.timestamp:
                return Status.TIMESTAMP_LOWER_THAN_PREV_ACCEPTED
        elif coa == bce.proxy_coa and not _sequence_newer(pbu.sequence, bce.sequence):
            return Status.SEQUENCE_OUT_OF_WINDOW
        return Status.ACCEPTED

    def handle_pbu(
        self, pbu: PBU, coa: IPv6Address, ifname: str | None, recv_ns: int | None = None
    ) -> PBA | None:
        """Process one PBU from ``coa`` that arrived on ``ifname``; the PBA to send, or None."""
        detail = event_detail(
            mn=pbu.mn_id,
            seq=pbu.sequence,
            coa=coa,
            dev=ifname,
            lifetime=pbu.lifetime_s,
            hi=pbu.handoff,
            hnp=event_prefixes(pbu.hnps),
        )
        self.events.emit("pbu_received", detail, recv_ns)
        bce = None if pbu.mn_id is None else self.bindings.get(pbu.mn_id)
        if pbu.lifetime_s == 0 and bce is not None and bce.proxy_coa != coa:
            # §5.3.5: a de-registration from a MAG that no longer serves the MN (the new
            # MAG's registration came first) is ignored, without a reply.
            self.events.emit(
                "pbu_ignored", event_detail(mn=pbu.mn_id, coa=coa, serving=bce.proxy_coa)
            )
            return None
        tunnel = self._tunnel_for(coa, ifname)
        status = self._check(pbu, coa, tunnel)
        lifetime = 0
        if status == Status.ACCEPTED:
            assert tunnel is not None
            if pbu.lifetime_s == 0:
                self._deregister(pbu)
            else:
                lifetime = min(pbu.lifetime_s, self.max_lifetime_s)
                status = self._register(pbu, coa, tunnel, lifetime)
        elif status == Status.SEQUENCE_OUT_OF_WINDOW and bce is not None:
            pbu = replace(pbu, sequence=bce.sequence)  # RFC 6275: answer with the last accepted
        return PBA(
            sequence=pbu.sequence,
            status=status,
            lifetime_s=lifetime,
            mn_id=pbu.mn_id,
            hnps=pbu.hnps,
            handoff=pbu.handoff,
            access_tech=pbu.access_tech,
            timestamp=pbu.timestamp,
        )

    def _register(self, pbu: PBU, coa: IPv6Address, tunnel: str, lifetime: int) -> int:
        assert pbu.mn_id is not None
        bce = self.bindings.get(pbu.mn_id)
        moved = bce is not None and (bce.proxy_coa, bce.tunnel_if) != (coa, tunnel)
        if bce is None or moved:
            try:
                for hnp in pbu.hnps:
                    self.routes.replace(hnp, tunnel, self._gateway(coa))
            except RouteError as exc:
                self.events.emit("route_failed", str(exc))
                return Status.REASON_UNSPECIFIED
        what = "new" if bce is None else "moved" if moved else "refreshed"
        self.events.emit(
            "bce_updated",
            event_detail(mn=pbu.mn_id, binding=what, coa=coa, dev=tunnel, lifetime=lifetime),
        )
        if bce is None or moved:
            old = None if bce is None else f"{bce.proxy_coa}%{bce.tunnel_if}"
            self.events.emit(
                "route_moved" if moved else "route_added",
                event_detail(hnp=event_prefixes(pbu.hnps), via=coa, dev=tunnel, old=old),
            )
        if bce is None:
            bce = BindingCacheEntry(
                pbu.mn_id, pbu.hnps, coa, tunnel, lifetime, pbu.sequence, pbu.timestamp
            )
            self.bindings[pbu.mn_id] = bce
        bce.cancel_timer()
        bce.proxy_coa, bce.tunnel_if, bce.lifetime_s = coa, tunnel, lifetime
        bce.sequence, bce.timestamp, bce.deregistering = pbu.sequence, pbu.timestamp, False
        bce.timer = self._call_later(lifetime, self._delete, pbu.mn_id, "lifetime expired")
        return Status.ACCEPTED

    def _deregister(self, pbu: PBU) -> None:
        assert pbu.mn_id is not None
        bce = self.bindings[pbu.mn_id]
        bce.sequence, bce.timestamp = pbu.sequence, pbu.timestamp
        if bce.deregistering:
            return  # a retransmitted de-registration does not restart the delay
        bce.cancel_timer()
        bce.deregistering = True
        self.events.emit(
            "bce_updated",
            event_detail(
                mn=pbu.mn_id, binding="deregistered", delete_in=f"{self.bce_delete_delay}s"
            ),
        )
        bce.timer = self._call_later(self.bce_delete_delay, self._delete, pbu.mn_id, "deregistered")

    def _call_later(
        self, delay: float, callback: Callable[..., None], *args: object
    ) -> asyncio.TimerHandle | None:
        # Without a running loop (handle_pbu driven directly) nothing expires on its own.
        return None if self._loop is None else self._loop.call_later(delay, callback, *args)

    def _delete(self, mn_id: str, reason: str) -> None:
        bce = self.bindings.pop(mn_id, None)
        if bce is None:
            return
        bce.cancel_timer()
        for hnp in bce.hnps:
            try:
                self.routes.delete(hnp, bce.tunnel_if, self._gateway(bce.proxy_coa))
            except RouteError as exc:  # someone else removed it; the BCE goes regardless
                print(f"pmip lma: {exc}", file=sys.stderr)
        self.events.emit(
            "bce_deleted",
            event_detail(
                mn=mn_id,
                reason=reason.replace(" ", "_"),
                hnp=event_prefixes(bce.hnps),
                coa=bce.proxy_coa,
            ),
        )
