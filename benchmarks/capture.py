"""Timestamps on the wire: an AF_PACKET capture of one interface in a namespace.

The socket is opened inside the namespace and bound to the interface; the kernel stamps
every frame (``SO_TIMESTAMPNS``, CLOCK_REALTIME, the clock every namespace shares) when it
passes the packet tap, so an outgoing report is stamped as it leaves for the wire and an
incoming data packet as it arrives from it. A thread parses the frames:

- outgoing IGMPv2/IGMPv3/MLDv1/MLDv2 reports: per group the first join record and the first
  leave record (IGMPv3/MLDv2 TO_EX/IS_EX = join, TO_IN{} = leave; v2 report/leave,
  MLDv1 report/done), each after the caller ``arm``-ed the group;
- incoming UDP datagrams to the probe port: per group the first and the last arrival and
  their count.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from lab.mcsock import SO_TIMESTAMPNS
from lab.netns import in_netns

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
JOIN_TYPES = {2, 4}  # MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE_MODE (ASM join)
LEAVE_TYPE = 3  # CHANGE_TO_INCLUDE_MODE with no sources


@dataclass
class GroupSeen:
    join_ns: int | None = None
    leave_ns: int | None = None
    first_data_ns: int | None = None
    last_data_ns: int | None = None
    data: int = 0
    reports: list[tuple[int, str]] = field(default_factory=list)


class Sniffer:
    """Capture on ``ifname`` in ``netns``; ``seen(group)`` tells what passed for a group."""

    def __init__(self, netns: str, ifname: str, port: int = 5001) -> None:
        self.port = port
        self.ifname = ifname
        self.groups: dict[str, GroupSeen] = {}
        self.frames = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = False

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind((ifname, ETH_P_ALL))
            s.settimeout(0.2)
            return s

        self.sock = in_netns(netns, make)
        self.thread = threading.Thread(target=self._run, name=f"sniff-{netns}", daemon=True)
        self.thread.start()

    def seen(self, group: str) -> GroupSeen:
        with self._lock:
            return self.groups.setdefault(group, GroupSeen())

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    # --- the capture loop ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError as exc:
                # ENETDOWN once after the link went down; the hook returns with link up.
                if exc.errno not in (errno.ENETDOWN, errno.EAGAIN):
                    self.errors += 1
                continue
            ts = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("qq", payload)
                    ts = sec * 1_000_000_000 + nsec
            if ts is None:
                continue
            self.frames += 1
            try:
                self._parse(data, ts, addr[2] == PACKET_OUTGOING)
            except (struct.error, IndexError, ValueError):
                self.errors += 1

    def _parse(self, frame: bytes, ts: int, outgoing: bool) -> None:
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == 0x0800:
            ihl = (frame[14] & 0x0F) * 4
            proto = frame[23]
            l4 = 14 + ihl
            dst = str(IPv4Address(frame[30:34]))
            if proto == 17 and not outgoing:
                if struct.unpack_from("!H", frame, l4 + 2)[0] == self.port:
                    self._data(dst, ts)
            elif proto == 2 and outgoing:
                self._igmp(frame, l4, ts)
        elif ethertype == 0x86DD:
            nxt = frame[20]
            off = 54
            dst = frame[38:54]
            while nxt in (0, 60, 43):  # hop-by-hop, destination options, routing
                nxt, off = frame[off], off + (frame[off + 1] + 1) * 8
            if nxt == 17 and not outgoing:
                if struct.unpack_from("!H", frame, off + 2)[0] == self.port:
                    self._data(str(IPv6Address(dst)), ts)
            elif nxt == 58 and outgoing:
                self._mld(frame, off, ts)

    def _data(self, group: str, ts: int) -> None:
        g = self.groups.get(group)
        if g is None:
            with self._lock:
                g = self.groups.setdefault(group, GroupSeen())
        if g.first_data_ns is None:
            g.first_data_ns = ts
        g.last_data_ns = ts
        g.data += 1

    def _report(self, group: str, ts: int, join: bool) -> None:
        g = self.seen(group)
        g.reports.append((ts, "join" if join else "leave"))
        if join and g.join_ns is None:
            g.join_ns = ts
        elif not join and g.join_ns is not None and g.leave_ns is None:
            g.leave_ns = ts

    def _records(self, frame: bytes, off: int, count: int, addr_len: int, ts: int) -> None:
        for _ in range(count):
            rtype, aux, nsrc = (
                frame[off],
                frame[off + 1],
                struct.unpack_from("!H", frame, off + 2)[0],
            )
            raw = frame[off + 4 : off + 4 + addr_len]
            group = str(IPv4Address(raw) if addr_len == 4 else IPv6Address(raw))
            if rtype in JOIN_TYPES and nsrc == 0:
                self._report(group, ts, True)
            elif rtype == LEAVE_TYPE and nsrc == 0:
                self._report(group, ts, False)
            off += 4 + addr_len + nsrc * addr_len + aux * 4

    def _igmp(self, frame: bytes, off: int, ts: int) -> None:
        kind = frame[off]
        if kind in (0x12, 0x16):  # v1/v2 membership report
            self._report(str(IPv4Address(frame[off + 4 : off + 8])), ts, True)
        elif kind == 0x17:  # v2 leave group
            self._report(str(IPv4Address(frame[off + 4 : off + 8])), ts, False)
        elif kind == 0x22:  # v3 report
            count = struct.unpack_from("!H", frame, off + 6)[0]
            self._records(frame, off + 8, count, 4, ts)

    def _mld(self, frame: bytes, off: int, ts: int) -> None:
        kind = frame[off]
        if kind == 131:
            self._report(str(IPv6Address(frame[off + 8 : off + 24])), ts, True)
        elif kind == 132:
            self._report(str(IPv6Address(frame[off + 8 : off + 24])), ts, False)
        elif kind == 143:
            count = struct.unpack_from("!H", frame, off + 6)[0]
            self._records(frame, off + 8, count, 16, ts)
