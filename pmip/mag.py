"""The mobile access gateway (RFC 5213 §6): PBU/PBA exchanges, MN routes, the MAG daemon.

A MAG notices an MN the way a real one does: its access interface gets carrier (the L2
attach). ``MagDaemon`` watches the access interfaces of one MAG through rtnetlink and, on
attach, sends the Proxy Binding Update over the MAG-LMA path (so it pays the tunnel delay),
waits for the Ack and routes the home network prefix to the MN; on detach it de-registers.
The proxy on the same MAG sees the same carrier change and starts querying at once
(RFC 6224 §3). The testbed's driver only moves the L2 link.
"""

from __future__ import annotations

import itertools
import json
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from pmip.mh import (
    DEFAULT_LIFETIME_S,
    INITIAL_BINDACK_TIMEOUT_S,
    MAX_BINDACK_TIMEOUT_S,
    PBA,
    PBU,
    AccessTech,
    Handoff,
    MhError,
    Received,
    Status,
    encode_pbu,
    event_detail,
    open_mh_socket,
    receive_mh,
    timestamp_from_ns,
)
from pmip.routes import RouteError, RouteTable
from proxy.events import EventLog
from proxy.netlink import LinkMonitor


class SignallingError(Exception):
    """A PBU exchange that failed: rejected by the LMA or no answer at all."""


@dataclass(frozen=True)
class Exchange:
    """One completed PBU/PBA exchange, timed on CLOCK_REALTIME."""

    pba: PBA
    sent_ns: int  # send time of the PBU this PBA answers
    received_ns: int  # kernel receive time of the PBA
    attempts: int

    @property
    def rtt_ns(self) -> int:
        return self.received_ns - self.sent_ns


class MagAgent:
    """Mobile access gateway side: PBU/PBA exchanges with retransmission, MN host routes.

    Retransmissions follow RFC 6275 §11.8 as RFC 5213 §6.9.4 asks: first timeout
    ``initial_timeout`` (InitialBindackTimeoutFirstReg, 1 s), doubled after each try until it
    would exceed ``max_timeout`` (MAX_BINDACK_TIMEOUT, 32 s). Each transmission is a new PBU
    with the next sequence number and a fresh timestamp.

    Exchanges may run in several threads at once: each opens its own raw socket before its
    first PBU (the kernel gives every raw socket a copy of each PBA) and keeps the PBA that
    answers one of its own sequence numbers.
    """

    def __init__(
        self,
        proxy_coa: IPv6Address,
        *,
        events: EventLog,
        access_tech: int = AccessTech.IEEE_802_3,
        initial_timeout: float = INITIAL_BINDACK_TIMEOUT_S,
        max_timeout: float = MAX_BINDACK_TIMEOUT_S,
        routes: RouteTable | None = None,
    ) -> None:
        self.proxy_coa = proxy_coa
        self.routes = routes or RouteTable()
        self.events = events
        self.access_tech = access_tech
        self.initial_timeout = initial_timeout
        self.max_timeout = max_timeout
        self._sequence = itertools.count(random.getrandbits(16) + 1)  # next() is thread-safe
        open_mh_socket(proxy_coa).close()  # fail here if this node does not own proxy_coa

    def close(self) -> None:
        """Nothing to release (sockets live per exchange); kept for ``with`` and callers."""

    def __enter__(self) -> MagAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(
        self,
        mn_id: str,
        hnp: IPv6Network,
        lma: IPv6Address,
        access_if: str,
        *,
        handoff: int = Handoff.NEW_INTERFACE,
        lifetime_s: int = DEFAULT_LIFETIME_S,
    ) -> Exchange:
        """Register ``mn_id`` with ``lma``, then route ``hnp`` to the MN over ``access_if``."""
        if lifetime_s <= 0:
            raise ValueError("a registration needs a positive lifetime")
        done = self._exchange("pbu_sent", mn_id, hnp, lma, handoff, lifetime_s)
        assert done is not None
        self.routes.replace(hnp, access_if)
        self.events.emit("route_added", event_detail(hnp=hnp, dev=access_if))
        return done

    def deregister(
        self,
        mn_id: str,
        hnp: IPv6Network,
        lma: IPv6Address,
        *,
        access_if: str | None = None,
        handoff: int = Handoff.UNKNOWN,
        wait: bool = True,
    ) -> Exchange | None:
        """Send a lifetime-0 PBU for ``mn_id``; also drop its host route if ``access_if``.

        With ``wait`` False the PBU goes out once and None is returned: an LMA ignores a
        de-registration from a MAG that no longer serves the MN (RFC 5213 §5.3.5), and a
        handover driver may not want to sit out the retransmissions.
        """
        if access_if is not None:
            try:
                self.routes.delete(hnp, access_if)
                self.events.emit("route_deleted", event_detail(hnp=hnp, dev=access_if))
            except RouteError as exc:
                print(f"pmip mag: {exc}", file=sys.stderr)
        return self._exchange("dereg_sent", mn_id, hnp, lma, handoff, 0, wait=wait)

    def _exchange(
        self,
        event: str,
        mn_id: str,
        hnp: IPv6Network,
        lma: IPv6Address,
        handoff: int,
        lifetime_s: int,
        *,
        wait: bool = True,
    ) -> Exchange | None:
        # Open before the first PBU, so that no PBA can arrive before there is a socket.
        with open_mh_socket(self.proxy_coa) as sock:
            sent: dict[int, int] = {}
            timeout = self.initial_timeout
            while timeout <= self.max_timeout:
                pbu = PBU(
                    sequence=next(self._sequence) & 0xFFFF,
                    lifetime_s=lifetime_s,
                    mn_id=mn_id,
                    hnps=(hnp,),
                    handoff=handoff,
                    access_tech=self.access_tech,
                    timestamp=timestamp_from_ns(time.time_ns()),
                )
                data = encode_pbu(pbu)
                t = time.time_ns()
                sock.sendto(data, (str(lma), 0))
                sent[pbu.sequence] = t
                self.events.emit(
                    event,
                    event_detail(
                        mn=mn_id,
                        seq=pbu.sequence,
                        lma=lma,
                        hnp=hnp,
                        lifetime=lifetime_s,
                        hi=handoff,
                        attempt=len(sent),
                    ),
                    t,
                )
                if not wait:
                    return None
                rx = self._await_pba(sock, mn_id, lma, sent, time.monotonic() + timeout)
                if rx is not None:
                    pba = rx.msg
                    assert isinstance(pba, PBA)
                    self.events.emit(
                        "pba_received",
                        event_detail(
                            mn=mn_id, seq=pba.sequence, status=pba.status, lifetime=pba.lifetime_s
                        ),
                        rx.recv_ns,
                    )
                    if not pba.accepted:
                        raise SignallingError(
                            f"LMA {lma} rejected {mn_id}: {_status_name(pba.status)}"
                        )
                    return Exchange(pba, sent[pba.sequence], rx.recv_ns, len(sent))
                timeout *= 2
            raise SignallingError(f"no PBA from LMA {lma} for {mn_id} after {len(sent)} PBUs")

    @staticmethod
    def _await_pba(
        sock: socket.socket, mn_id: str, lma: IPv6Address, sent: Mapping[int, int], deadline: float
    ) -> Received | None:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                rx = receive_mh(sock)
            except TimeoutError:
                return None
            except MhError as exc:
                print(f"pmip mag: dropped mobility header: {exc}", file=sys.stderr)
                continue
            msg = rx.msg
            if (
                isinstance(msg, PBA)
                and rx.src == lma
                and msg.sequence in sent
                and msg.mn_id in (None, mn_id)
            ):
                return rx
        return None


def _status_name(status: int) -> str:
    try:
        return f"{Status(status).name} ({status})"
    except ValueError:
        return f"status {status}"


# --------------------------------------------------------------------------- daemon


@dataclass(frozen=True)
class AccessLink:
    """An MN this MAG serves on one access interface: who it is and where it is anchored."""

    mn_id: str
    hnp: str
    lma: str
    proxy_coa: str


@dataclass(frozen=True)
class MagPlan:
    """What a MAG daemon needs: its node name and, per access interface, the MN behind it."""

    node: str
    access: dict[str, AccessLink]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> MagPlan:
        data = json.loads(text)
        return cls(data["node"], {k: AccessLink(**v) for k, v in data["access"].items()})


class MagDaemon:
    """Registers MNs when their access link comes up, de-registers them when it goes down."""

    def __init__(self, plan: MagPlan, events: Path | None) -> None:
        self.node = plan.node
        self.events = EventLog(events, self.node)
        self.access = plan.access
        self.agents: dict[str, MagAgent] = {}
        self.up: dict[str, bool] = {}
        self.lock = threading.Lock()

    def agent(self, coa: str) -> MagAgent:
        if coa not in self.agents:
            self.agents[coa] = MagAgent(IPv6Address(coa), events=self.events)
        return self.agents[coa]

    def link(self, ifname: str, up: bool) -> None:
        entry = self.access.get(ifname)
        if entry is None or self.up.get(ifname) == up:
            return
        first = ifname not in self.up
        self.up[ifname] = up
        if not up and first:
            return
        # One thread per exchange: a slow PBA for one MN must not delay another's.
        threading.Thread(
            target=self._exchange, args=(ifname, entry, up, first), daemon=True
        ).start()

    def _exchange(self, ifname: str, entry: AccessLink, up: bool, first: bool) -> None:
        hnp, lma = IPv6Network(entry.hnp), IPv6Address(entry.lma)
        with self.lock:
            agent = self.agent(entry.proxy_coa)
        try:
            if up:
                self.events.emit("l2_attach_detected", f"{ifname} mn={entry.mn_id}")
                handoff = Handoff.NEW_INTERFACE if first else Handoff.BETWEEN_MAGS
                agent.register(entry.mn_id, hnp, lma, ifname, handoff=handoff)
            else:
                self.events.emit("l2_detach_detected", f"{ifname} mn={entry.mn_id}")
                agent.deregister(entry.mn_id, hnp, lma, access_if=ifname, wait=False)
        except Exception as exc:  # noqa: BLE001 - logged, the daemon keeps serving others
            self.events.emit("pmip_error", f"{ifname} {exc}")
            print(f"mag {self.node}: {ifname}: {exc}", file=sys.stderr, flush=True)

    def run(self) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        monitor = LinkMonitor()
        for st in monitor.dump().values():
            self.link(st.ifname, st.up)
        while not stop.is_set():
            ready, _, _ = select.select([monitor.sock], [], [], 0.2)
            if ready:
                for st in monitor.read():
                    self.link(st.ifname, st.up)
        monitor.close()
        for agent in self.agents.values():
            agent.close()
        self.events.close()
