"""Multicast socket helpers: joins and leaves with source filters, output interface, timestamps.

Memberships go through the kernel's host stack (RFC 3678 protocol-independent API), so
the kernel itself sends the MLDv2/IGMPv3 reports; nothing here crafts a report. Receive
metadata comes from ancillary data: the kernel receive time (``SO_TIMESTAMPNS``,
``CLOCK_REALTIME``) and the hop limit / TTL the datagram arrived with.

Used by the probes, the PMIPv6 agents, the proxy tests and the benchmarks.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

Address = IPv4Address | IPv6Address

# Linux values; Python's socket module does not export most of them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
# The RFC 3678 structures are shared with the proxy's host side.
from proxy.upstream import (  # noqa: E402
    MCAST_BLOCK_SOURCE,
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    MCAST_LEAVE_GROUP,
    MCAST_LEAVE_SOURCE_GROUP,
    MCAST_UNBLOCK_SOURCE,
    group_req,
    group_source_req,
)

# Room for a timespec and an int cmsg (CMSG_SPACE(16) + CMSG_SPACE(4)) and then some.
ANCILLARY_SIZE = 256


class McSockError(OSError):
    """A socket operation failed; the message names the operation, group and interface."""


def parse_address(text: str) -> Address:
    """Parse an IPv4 or IPv6 address, raising ValueError with a readable message."""
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse_group(text: str) -> Address:
    """Parse a multicast group address."""
    group = parse_address(text)
    if not group.is_multicast:
        raise ValueError(f"not a multicast address: {text}")
    return group


def family(addr: Address) -> int:
    """AF_INET6 or AF_INET for ``addr``."""
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def ip_level(addr: Address) -> int:
    """Socket option level of the address family of ``addr``."""
    return socket.IPPROTO_IPV6 if addr.version == 6 else socket.IPPROTO_IP


def ifindex(ifname: str) -> int:
    """Interface index of ``ifname``; ValueError if there is no such interface."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise ValueError(f"no such network interface: {ifname}") from None


def error_text(exc: BaseException) -> str:
    """The message of ``exc`` for a one-line error, without Python's "[Errno N]" prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _setsockopt(sock: socket.socket, level: int, option: int, value: bytes, what: str) -> None:
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        raise McSockError(exc.errno, f"{what}: {exc.strerror}") from None


def _membership(
    sock: socket.socket,
    verb: str,
    group: Address,
    ifname: str,
    sources: Iterable[Address],
    asm_option: int,
    ssm_option: int,
) -> None:
    idx = ifindex(ifname)
    sources = list(sources)
    if not sources:
        what = f"{verb} {group} on {ifname}"
        _setsockopt(sock, ip_level(group), asm_option, group_req(idx, group), what)
    for source in sources:
        what = f"{verb} ({source}, {group}) on {ifname}"
        value = group_source_req(idx, group, source)
        _setsockopt(sock, ip_level(group), ssm_option, value, what)


def join(sock: socket.socket, group: Address, ifname: str, sources: Iterable[Address] = ()) -> None:
    """Join ``group`` on ``ifname``: any source (ASM), or only ``sources`` (SSM, INCLUDE)."""
    _membership(sock, "join", group, ifname, sources, MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP)


def leave(
    sock: socket.socket, group: Address, ifname: str, sources: Iterable[Address] = ()
) -> None:
    """Undo :func:`join` (ASM leave, or drop each source of an SSM join)."""
    _membership(sock, "leave", group, ifname, sources, MCAST_LEAVE_GROUP, MCAST_LEAVE_SOURCE_GROUP)


def block_source(sock: socket.socket, group: Address, ifname: str, source: Address) -> None:
    """Exclude ``source`` from an ASM (EXCLUDE-mode) membership."""
    _membership(sock, "block", group, ifname, [source], MCAST_BLOCK_SOURCE, MCAST_BLOCK_SOURCE)


def unblock_source(sock: socket.socket, group: Address, ifname: str, source: Address) -> None:
    """Undo :func:`block_source`."""
    _membership(
        sock, "unblock", group, ifname, [source], MCAST_UNBLOCK_SOURCE, MCAST_UNBLOCK_SOURCE
    )


def set_multicast_if(sock: socket.socket, group: Address, ifname: str) -> None:
    """Send this socket's multicast out of ``ifname``."""
    idx = ifindex(ifname)
    if group.version == 6:
        value = struct.pack("=I", idx)
        option = socket.IPV6_MULTICAST_IF
    else:
        value = struct.pack("=4s4si", bytes(4), bytes(4), idx)  # struct ip_mreqn
        option = socket.IP_MULTICAST_IF
    _setsockopt(sock, ip_level(group), option, value, f"use {ifname} for multicast")


def set_multicast_hops(sock: socket.socket, group: Address, hops: int) -> None:
    """Hop limit (IPv6) or TTL (IPv4) of this socket's multicast."""
    option = socket.IPV6_MULTICAST_HOPS if group.version == 6 else socket.IP_MULTICAST_TTL
    _setsockopt(sock, ip_level(group), option, struct.pack("=i", hops), f"set hop limit {hops}")


def enable_rx_metadata(sock: socket.socket, version: int) -> None:
    """Ask for kernel receive timestamps and the received hop limit (TTL) in ancillary data."""
    _setsockopt(sock, socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("=i", 1), "SO_TIMESTAMPNS")
    if version == 6:
        level, option = socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT
    else:
        level, option = socket.IPPROTO_IP, IP_RECVTTL
    _setsockopt(sock, level, option, struct.pack("=i", 1), "receive hop limit")


@dataclass(frozen=True)
class RxMeta:
    """What the kernel told about one received datagram (None where it said nothing)."""

    recv_ns: int | None
    hop_limit: int | None
    dst: IPv6Address | None = None
    ifindex: int | None = None


def parse_ancillary(ancdata: list[tuple[int, int, bytes]]) -> RxMeta:
    """Extract receive time, hop limit/TTL and IPv6 packet info from ``recvmsg`` ancillary data."""
    recv_ns = hop_limit = idx = None
    dst = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            # struct timespec: two longs (8 bytes each on 64-bit, 4 on 32-bit).
            fmt = "=qq" if len(data) >= 16 else "=ii"
            sec, nsec = struct.unpack_from(fmt, data)
            recv_ns = sec * 1_000_000_000 + nsec
        elif (level, kind) in (
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
            (socket.IPPROTO_IP, socket.IP_TTL),
        ):
            # IPv6 hands an int; IPv4 an int on Linux too, but a byte on some systems.
            hop_limit = struct.unpack_from("=i", data)[0] if len(data) >= 4 else data[0]
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            addr, idx = struct.unpack_from("=16sI", data)
            dst = IPv6Address(addr)
    return RxMeta(recv_ns, hop_limit, dst, idx)


def open_receiver(
    group: Address, port: int, ifname: str, sources: Iterable[Address] = ()
) -> socket.socket:
    """A UDP socket bound to (group, port) on which ``group`` is joined, with rx metadata on."""
    sock = socket.socket(family(group), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # By default Linux hands a socket every group joined by any socket on the host
        # that matches its port; this socket should see only its own memberships.
        all_option = IPV6_MULTICAST_ALL if group.version == 6 else IP_MULTICAST_ALL
        _setsockopt(sock, ip_level(group), all_option, struct.pack("=i", 0), "multicast_all off")
        enable_rx_metadata(sock, group.version)
        try:
            sock.bind((str(group), port))
        except OSError as exc:
            raise McSockError(exc.errno, f"bind to [{group}]:{port}: {exc.strerror}") from None
        join(sock, group, ifname, sources)
    except BaseException:
        sock.close()
        raise
    return sock


def open_sender(group: Address, ifname: str | None = None, hops: int = 1) -> socket.socket:
    """A UDP socket sending to ``group`` out of ``ifname`` (if None, the routing table picks)."""
    sock = socket.socket(family(group), socket.SOCK_DGRAM)
    try:
        if ifname is not None:
            set_multicast_if(sock, group, ifname)
        set_multicast_hops(sock, group, hops)
    except BaseException:
        sock.close()
        raise
    return sock
