"""IGMP/MLD on the wire: receiving messages with their metadata and sending queries.

Received messages are checked (hop limit / TTL, Router Alert, link-local source,
checksums) and decoded here; what fails is counted by reason and dropped, never raised
to the caller.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from proxy import packets
from proxy.kernel import IPV6_HOPOPTS
from proxy.messages import Address, Message, Query

IPV6_PKTINFO = 50
IPV6_HOPLIMIT = 52
IP_PKTINFO = 8
IP_OPTIONS = 4
IP_MULTICAST_IF = 32
ALL_NODES = {6: IPv6Address("ff02::1"), 4: IPv4Address("224.0.0.1")}
# Groups a router must receive on its downstream links: all-MLDv2/IGMPv3-routers (v2/v3
# reports) and all-routers (MLDv1 Done, IGMPv2 Leave).
ROUTER_GROUPS = {
    6: (IPv6Address("ff02::16"), IPv6Address("ff02::2")),
    4: (IPv4Address("224.0.0.22"), IPv4Address("224.0.0.2")),
}
# Hop-by-hop header with Router Alert (value 0 = MLD) padded to 8 octets with PadN.
_HBH_ROUTER_ALERT = bytes([0, 0, 5, 2, 0, 0, 1, 0])
_IPV4_ROUTER_ALERT = bytes([0x94, 0x04, 0x00, 0x00])


@dataclass(frozen=True)
class Received:
    ifindex: int
    src: Address
    msg: Message


def _router_alert_in_hbh(hbh: bytes) -> bool:
    at = 2
    while at < len(hbh):
        kind = hbh[at]
        if kind == 0:
            at += 1
            continue
        if at + 1 >= len(hbh):
            return False
        if kind == 5:
            return True
        at += 2 + hbh[at + 1]
    return False


def arrival_ifindex(family: int, ancdata: list) -> int:
    """The interface a datagram arrived on, from its IPV6_PKTINFO / IP_PKTINFO (0 if absent)."""
    for level, kind, value in ancdata:
        if (
            family == 6
            and (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO)
            and len(value) >= 20
        ):
            return struct.unpack_from("=I", value, 16)[0]
        if family == 4 and (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO) and len(value) >= 4:
            return struct.unpack_from("=i", value)[0]
    return 0


def parse_mld(data: bytes, ancdata: list, src: IPv6Address, drops: Counter) -> Received | None:
    """Validate and decode one datagram read from a raw ICMPv6 socket."""
    idx, hop_limit, alert = arrival_ifindex(6, ancdata), -1, False
    for level, kind, value in ancdata:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == IPV6_HOPLIMIT and len(value) >= 4:
            hop_limit = struct.unpack_from("=i", value)[0]
        elif kind == IPV6_HOPOPTS:
            alert = _router_alert_in_hbh(value)
    try:
        msg = packets.decode_mld(data)
        packets.validate_mld_meta(src, hop_limit, alert, msg)
    except packets.PacketError as exc:
        drops[exc.reason] += 1
        return None
    return Received(idx, src, msg)


def parse_igmp(data: bytes, ancdata: list, drops: Counter) -> Received | None:
    """Validate and decode one datagram (IPv4 header included) from a raw IGMP socket."""
    idx = arrival_ifindex(4, ancdata)
    try:
        src, _dst, hlen = packets.validate_ipv4(data)
        msg = packets.decode_igmp(data[hlen:])
    except packets.PacketError as exc:
        drops[exc.reason] += 1
        return None
    return Received(idx, src, msg)


def join_router_groups(sock: socket.socket, family: int, ifidx: int, join: bool = True) -> None:
    """(Un)subscribe ``sock`` to the router groups on an interface so reports reach it."""
    for group in ROUTER_GROUPS[family]:
        try:
            if family == 6:
                opt = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
                sock.setsockopt(socket.IPPROTO_IPV6, opt, group.packed + struct.pack("@I", ifidx))
            else:
                opt = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
                mreqn = group.packed + bytes(4) + struct.pack("@i", ifidx)
                sock.setsockopt(socket.IPPROTO_IP, opt, mreqn)
        except OSError:
            pass  # already joined / interface gone: both harmless here


SO_ATTACH_FILTER = 26


class _Bpf:
    """A classic BPF program kept alive with its struct sock_fprog (the kernel copies it)."""

    def __init__(self, instructions: bytes) -> None:
        self.buf = ctypes.create_string_buffer(instructions)
        count = len(instructions) // 8
        self.program = struct.pack("HL", count, ctypes.addressof(self.buf))


def _bpf_drop_all() -> _Bpf:
    return _Bpf(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0


class QuerySender:
    """Sends queries with hop limit 1, Router Alert and (MLD) a link-local source."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.sent = 0
        if family == 6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, _HBH_ROUTER_ALERT)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, _IPV4_ROUTER_ALERT)
        # A send-only socket: a raw socket gets a copy of every IGMP/MLD packet, which
        # would pile up unread. A one-instruction BPF program ("accept 0 bytes") drops
        # them in the kernel before they are queued.
        self._drop_all = _bpf_drop_all()
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._drop_all.program)
        self.sock.setblocking(False)

    def send(self, ifidx: int, src: Address | None, query: Query) -> bool:
        """Send ``query`` out of ``ifidx``; General Queries to all-nodes, others to the group."""
        dst = ALL_NODES[self.family] if query.is_general else query.group
        try:
            if self.family == 6:
                pktinfo = (src.packed if src else bytes(16)) + struct.pack("=I", ifidx)
                self.sock.sendmsg(
                    [packets.encode_mld(query)],
                    [(socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo)],
                    0,
                    (str(dst), 0, 0, ifidx),
                )
            else:
                mreqn = bytes(8) + struct.pack("@i", ifidx)
                self.sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_IF, mreqn)
                self.sock.sendto(packets.encode_igmp(query), (str(dst), 0))
        except OSError:
            return False  # link down or gone: the querier restarts on link up
        self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()
