"""Interface presence and link state from rtnetlink, and the addresses the proxy speaks from.

The proxy must notice interfaces that appear, disappear, or lose carrier at runtime (a
handover does all three), so it listens to RTM_NEWLINK/RTM_DELLINK instead of polling.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_DONE, NLMSG_ERROR = 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


@dataclass(frozen=True)
class LinkState:
    ifname: str
    ifindex: int
    present: bool
    up: bool  # administratively up and carrier present


def _parse_link(msg_type: int, payload: bytes) -> LinkState | None:
    if len(payload) < 16:
        return None
    _family, _pad, _type, index, flags, _change = struct.unpack_from("=BBHiII", payload)
    off, name = 16, None
    while off + 4 <= len(payload):
        rta_len, rta_type = struct.unpack_from("=HH", payload, off)
        if rta_len < 4:
            break
        if rta_type == IFLA_IFNAME:
            name = payload[off + 4 : off + rta_len].split(b"\0", 1)[0].decode()
        off += (rta_len + 3) & ~3
    if name is None:
        return None
    present = msg_type == RTM_NEWLINK
    up = present and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
    return LinkState(name, index, present, up)


def parse_messages(data: bytes) -> list[LinkState]:
    """Link states in one netlink datagram (ignores everything else)."""
    out, off = [], 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            state = _parse_link(mtype, data[off + 16 : off + length])
            if state:
                out.append(state)
        off += (length + 3) & ~3
    return out


class LinkMonitor:
    """A non-blocking rtnetlink socket subscribed to link events."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def dump(self) -> dict[str, LinkState]:
        """The current state of every interface (blocking, at start-up)."""
        req = struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        req += struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0)
        dump_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            dump_sock.sendto(req, (0, 0))
            states: dict[str, LinkState] = {}
            while True:
                data = dump_sock.recv(1 << 16)
                for s in parse_messages(data):
                    states[s.ifname] = s
                if _has_done(data):
                    return states
        finally:
            dump_sock.close()

    def read(self) -> list[LinkState]:
        """Events queued since the last call (non-blocking)."""
        out = []
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.extend(parse_messages(data))

    def close(self) -> None:
        self.sock.close()


def _has_done(data: bytes) -> bool:
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if length < 16:
            return True
        off += (length + 3) & ~3
    return False


def link_local(ifname: str) -> IPv6Address | None:
    """The interface's link-local IPv6 address (lowest, if several), from /proc/net/if_inet6."""
    found = []
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                addr, _idx, _plen, scope, _flags, name = line.split()
                if name == ifname and int(scope, 16) == 0x20:
                    found.append(IPv6Address(int(addr, 16)))
    except OSError:
        return None
    return min(found) if found else None


def ipv4_address(ifname: str) -> IPv4Address | None:
    """The interface's primary IPv4 address (SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return None
    return IPv4Address(res[20:24])


def own_address(family: int, ifname: str) -> IPv4Address | IPv6Address | None:
    """The address this router speaks IGMP/MLD from on ``ifname``."""
    return link_local(ifname) if family == 6 else ipv4_address(ifname)


def carrier(ifname: str, ifindex: int) -> bool | None:
    """The carrier bit right now (None if unknown). The kernel tells carrier changes through
    its link watcher, which may hold a notification back for up to a second; this reads
    the bit itself. ``ifindex`` guards against a /sys mounted for another namespace."""
    base = f"/sys/class/net/{ifname}"
    try:
        with open(f"{base}/ifindex") as f:
            if int(f.read()) != ifindex:
                return None
        with open(f"{base}/carrier") as f:
            return f.read().strip() == "1"
    except (OSError, ValueError):
        return None


def prefixes(family: int, ifname: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """The global prefixes configured on ``ifname`` (its subscriber prefixes), sorted.

    IPv6 from /proc/net/if_inet6 (global scope only); IPv4 the primary address and mask.
    """
    if family == 4:
        addr = ipv4_address(ifname)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                res = fcntl.ioctl(
                    s.fileno(), SIOCGIFNETMASK, struct.pack("256s", ifname.encode()[:15])
                )
            except OSError:
                return ()
        if addr is None:
            return ()
        return (ip_network(f"{addr}/{IPv4Address(res[20:24])}", strict=False),)
    found = set()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                addr, _idx, plen, scope, _flags, name = line.split()
                if name == ifname and int(scope, 16) == 0:
                    found.add(ip_network(f"{IPv6Address(int(addr, 16))}/{int(plen, 16)}", False))
    except OSError:
        return ()
    return tuple(sorted(found))
