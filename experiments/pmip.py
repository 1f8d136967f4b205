"""PMIPv6 signalling emulation (RFC 5213): the PBU/PBA codec, the LMA and MAG agents, their CLI.

Wire format (RFC 6275 §6.1, RFC 5213 §8): a Mobility Header (IPv6 next header 135,
payload proto 59, length in 8-octet units not counting the first 8, checksum over the
IPv6 pseudo-header) carrying a Proxy Binding Update (MH type 5; flags A and P set, H
clear: RFC 5213 §6.9.1.5 asks for A and P only, H is Mobile IPv6's home registration) or a
Proxy Binding Acknowledgement (MH type 6; P set). Lifetimes travel in 4 s units. Options:
MN Identifier (8, RFC 4283, subtype 1 = NAI), Home Network Prefix (22, alignment 8n+4),
Handoff Indicator (23), Access Technology Type (24), Timestamp (27, alignment 8n+2, 48-bit
seconds and 16-bit 1/65536 fractions since 1970), padded with Pad1/PadN so that each option
meets its alignment and the header is a multiple of 8 octets.

Agents: the kernel has no ip6tnl, so a MAG-LMA "tunnel" is the point-to-point link
between them, and the LMA's binding is the route ``HNP via Proxy-CoA dev TUNNEL_IF``
(set over rtnetlink, as ``ip -6 route replace`` would). A registration from another MAG
moves that route; a de-registration keeps the entry, and its route, for
MinDelayBeforeBCEDelete unless another MAG registers meanwhile (RFC 5213 §5.3.5 would drop
the MN's traffic during that wait instead). The MAG retransmits with exponential backoff
and routes the HNP onto the MN's access link once the PBA accepts. Linux hands Mobility
Headers to raw ``IPPROTO_MH`` sockets and fills in and verifies their checksum itself
(offset 4), with or without CONFIG_IPV6_MIP6.

Every step is logged as a ``t_ns,event,node,detail`` row (CLOCK_REALTIME ns; received
messages carry the kernel receive time) to an events CSV that several processes may share.

CLI: ``python -m experiments.pmip lma|mag-register|mag-deregister --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, IntFlag
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from experiments import mcsock
from proxy.events import EventLog

IPPROTO_MH = 135
IPPROTO_NONE = 59
MH_TYPE_BU = 5
MH_TYPE_BA = 6
MNID_SUBTYPE_NAI = 1
MAX_LIFETIME_S = 0xFFFF * 4
DEFAULT_LIFETIME_S = 3600
# RFC 5213 §12 protocol constants and RFC 6275 §13 retransmission bounds.
MIN_DELAY_BEFORE_BCE_DELETE_S = 10.0
INITIAL_BINDACK_TIMEOUT_S = 1.0
MAX_BINDACK_TIMEOUT_S = 32.0
_NS = 1_000_000_000
_HEADER = struct.Struct("!BBBBH")  # payload proto, header length, MH type, reserved, checksum
_BU_FIXED = struct.Struct("!HHH")  # sequence, flags, lifetime
_BA_FIXED = struct.Struct("!BBHH")  # status, flags, sequence, lifetime
_OPTIONS_AT = _HEADER.size + _BU_FIXED.size  # 12 for both PBU and PBA


class OptionType(IntEnum):
    PAD1 = 0
    PADN = 1
    MN_ID = 8
    HOME_NETWORK_PREFIX = 22
    HANDOFF_INDICATOR = 23
    ACCESS_TECHNOLOGY_TYPE = 24
    TIMESTAMP = 27


# (x, y) of an "xn+y" alignment requirement; options not listed have none.
_ALIGNMENT = {OptionType.HOME_NETWORK_PREFIX: (8, 4), OptionType.TIMESTAMP: (8, 2)}


class Handoff(IntEnum):
    """Handoff Indicator values (RFC 5213 §8.4)."""

    NEW_INTERFACE = 1
    INTERFACE_CHANGE = 2
    BETWEEN_MAGS = 3
    UNKNOWN = 4
    NOT_CHANGED = 5


class AccessTech(IntEnum):
    """Access Technology Type values (RFC 5213 §8.5, 6-8 from the IANA registry)."""

    VIRTUAL = 1
    PPP = 2
    IEEE_802_3 = 3
    IEEE_802_11 = 4
    IEEE_802_16E = 5
    GERAN = 6
    UTRAN = 7
    E_UTRAN = 8


class BuFlags(IntFlag):
    """Binding Update flags (RFC 6275 §6.1.7, RFC 3963, RFC 4140, RFC 5213 §8.1)."""

    A = 0x8000
    H = 0x4000
    L = 0x2000
    K = 0x1000
    M = 0x0800
    R = 0x0400
    P = 0x0200


class BaFlags(IntFlag):
    """Binding Acknowledgement flags (RFC 6275 §6.1.8, RFC 3963, RFC 5213 §8.2)."""

    K = 0x80
    R = 0x40
    P = 0x20


class Status(IntEnum):
    """PBA status codes used here (RFC 6275 §6.1.8, RFC 5213 §8.9); below 128 is accepted."""

    ACCEPTED = 0
    REASON_UNSPECIFIED = 128
    SEQUENCE_OUT_OF_WINDOW = 135
    PROXY_REG_NOT_ENABLED = 152
    NOT_LMA_FOR_THIS_MOBILE_NODE = 153
    MAG_NOT_AUTHORIZED_FOR_PROXY_REG = 154
    NOT_AUTHORIZED_FOR_HOME_NETWORK_PREFIX = 155
    TIMESTAMP_MISMATCH = 156
    TIMESTAMP_LOWER_THAN_PREV_ACCEPTED = 157
    MISSING_HOME_NETWORK_PREFIX_OPTION = 158
    BCE_PBU_PREFIX_SET_DO_NOT_MATCH = 159
    MISSING_MN_IDENTIFIER_OPTION = 160
    MISSING_HANDOFF_INDICATOR_OPTION = 161
    MISSING_ACCESS_TECH_TYPE_OPTION = 162


class MhError(ValueError):
    """A malformed Mobility Header; ``reason`` is a short counter name such as ``"checksum"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- codec


@dataclass(frozen=True, kw_only=True)
class _Binding:
    """Fields and options that PBU and PBA share; absent options are None or empty."""

    sequence: int
    lifetime_s: int
    mn_id: str | None = None
    hnps: tuple[IPv6Network, ...] = ()
    handoff: int | None = None
    access_tech: int | None = None
    timestamp: int | None = None  # RFC 5213 §8.8 64-bit fixed point; see timestamp_from_ns


@dataclass(frozen=True, kw_only=True)
class PBU(_Binding):
    """Proxy Binding Update (MH type 5)."""

    flags: BuFlags = BuFlags.A | BuFlags.P


@dataclass(frozen=True, kw_only=True)
class PBA(_Binding):
    """Proxy Binding Acknowledgement (MH type 6)."""

    status: int = Status.ACCEPTED
    flags: BaFlags = BaFlags.P

    @property
    def accepted(self) -> bool:
        return self.status < 128


def timestamp_from_ns(t_ns: int) -> int:
    """RFC 5213 §8.8 timestamp (48-bit seconds, 16-bit fraction) of a CLOCK_REALTIME time."""
    seconds, rest = divmod(t_ns, _NS)
    return (seconds << 16) | ((rest << 16) // _NS)


def timestamp_to_ns(timestamp: int) -> int:
    """CLOCK_REALTIME ns of an RFC 5213 timestamp (truncated to its 1/65536 s resolution)."""
    return (timestamp >> 16) * _NS + (((timestamp & 0xFFFF) * _NS) >> 16)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mh_checksum(src: IPv6Address, dst: IPv6Address, mh: bytes) -> int:
    """Internet checksum of ``mh`` with the IPv6 pseudo-header (RFC 6275 §6.1.1)."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(mh), IPPROTO_MH)
    return _checksum(pseudo + mh)


def _check_range(name: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise ValueError(f"{name} {value} is outside 0..{top}")


def _option(otype: OptionType, body: bytes) -> bytes:
    return bytes([otype, len(body)]) + body


def _options(msg: _Binding) -> list[bytes]:
    options = []
    if msg.mn_id is not None:
        ident = msg.mn_id.encode()
        if not 0 < len(ident) < 255:
            raise ValueError(f"MN identifier must be 1..254 bytes, got {len(ident)}")
        options.append(_option(OptionType.MN_ID, bytes([MNID_SUBTYPE_NAI]) + ident))
    for hnp in msg.hnps:
        body = struct.pack("!xB16s", hnp.prefixlen, hnp.network_address.packed)
        options.append(_option(OptionType.HOME_NETWORK_PREFIX, body))
    for otype, value in (
        (OptionType.HANDOFF_INDICATOR, msg.handoff),
        (OptionType.ACCESS_TECHNOLOGY_TYPE, msg.access_tech),
    ):
        if value is not None:
            _check_range(otype.name.lower(), value, 0xFF)
            options.append(_option(otype, bytes([0, value])))
    if msg.timestamp is not None:
        _check_range("timestamp", msg.timestamp, 2**64 - 1)
        options.append(_option(OptionType.TIMESTAMP, struct.pack("!Q", msg.timestamp)))
    return options


def _padding(length: int) -> bytes:
    if length == 0:
        return b""
    if length == 1:
        return bytes([OptionType.PAD1])
    return bytes([OptionType.PADN, length - 2]) + bytes(length - 2)


def _lay_out(options: list[bytes], at: int) -> bytes:
    """Options placed from offset ``at`` with the padding their alignment asks for."""
    out = bytearray()
    for option in options:
        x, y = _ALIGNMENT.get(option[0], (1, 0))
        gap = (y - at) % x
        out += _padding(gap) + option
        at += gap + len(option)
    return bytes(out + _padding(-at % 8))


def _encode(
    mh_type: int, fixed: bytes, msg: _Binding, src: IPv6Address | None, dst: IPv6Address | None
) -> bytes:
    body = fixed + _lay_out(_options(msg), _HEADER.size + len(fixed))
    length = _HEADER.size + len(body)
    mh = _HEADER.pack(IPPROTO_NONE, length // 8 - 1, mh_type, 0, 0) + body
    if src is None or dst is None:
        return mh  # a raw IPPROTO_MH socket fills the checksum in
    return mh[:4] + struct.pack("!H", mh_checksum(src, dst, mh)) + mh[6:]


def _lifetime_units(lifetime_s: int) -> int:
    if lifetime_s % 4 or not 0 <= lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(
            f"lifetime {lifetime_s} s is not a multiple of 4 s in 0..{MAX_LIFETIME_S} s"
        )
    return lifetime_s // 4


def encode_pbu(pbu: PBU, src: IPv6Address | None = None, dst: IPv6Address | None = None) -> bytes:
    """Mobility Header bytes of ``pbu``; the checksum is filled in when src and dst are given."""
    _check_range("sequence", pbu.sequence, 0xFFFF)
    fixed = _BU_FIXED.pack(pbu.sequence, pbu.flags & 0xFE00, _lifetime_units(pbu.lifetime_s))
    return _encode(MH_TYPE_BU, fixed, pbu, src, dst)


def encode_pba(pba: PBA, src: IPv6Address | None = None, dst: IPv6Address | None = None) -> bytes:
    """Mobility Header bytes of ``pba``; the checksum is filled in when src and dst are given."""
    _check_range("sequence", pba.sequence, 0xFFFF)
    _check_range("status", pba.status, 0xFF)
    units = _lifetime_units(pba.lifetime_s)
    fixed = _BA_FIXED.pack(pba.status, pba.flags & 0xE0, pba.sequence, units)
    return _encode(MH_TYPE_BA, fixed, pba, src, dst)


def _fixed_length(otype: int, body: bytes, length: int) -> bytes:
    if len(body) != length:
        raise MhError(
            "option", f"{OptionType(otype).name} option has length {len(body)}, expected {length}"
        )
    return body


def _decode_options(data: bytes, at: int) -> dict:
    fields: dict = {}
    hnps = []
    while at < len(data):
        otype = data[at]
        if otype == OptionType.PAD1:
            at += 1
            continue
        if at + 2 > len(data) or at + 2 + data[at + 1] > len(data):
            raise MhError("option", f"option type {otype} at offset {at} runs past the end")
        body = data[at + 2 : at + 2 + data[at + 1]]
        at += 2 + len(body)
        if otype == OptionType.HOME_NETWORK_PREFIX:
            plen, prefix = struct.unpack("!xB16s", _fixed_length(otype, body, 18))
            if plen > 128:
                raise MhError("option", f"home network prefix length {plen} exceeds 128")
            hnps.append(IPv6Network((IPv6Address(prefix), plen), strict=False))
            continue
        if otype == OptionType.MN_ID:
            key, value = "mn_id", _decode_mn_id(body)
        elif otype == OptionType.HANDOFF_INDICATOR:
            key, value = "handoff", _fixed_length(otype, body, 2)[1]
        elif otype == OptionType.ACCESS_TECHNOLOGY_TYPE:
            key, value = "access_tech", _fixed_length(otype, body, 2)[1]
        elif otype == OptionType.TIMESTAMP:
            key, value = "timestamp", struct.unpack("!Q", _fixed_length(otype, body, 8))[0]
        else:
            continue  # PadN and options we do not know are skipped (RFC 6275 §6.2.1)
        if key in fields:
            raise MhError("option", f"{OptionType(otype).name} option appears twice")
        fields[key] = value
    fields["hnps"] = tuple(hnps)
    return fields


def _decode_mn_id(body: bytes) -> str:
    if len(body) < 2:
        raise MhError("option", f"MN_ID option has length {len(body)}, needs at least 2")
    if body[0] != MNID_SUBTYPE_NAI:
        raise MhError("option", f"MN identifier subtype {body[0]} is not 1 (NAI)")
    try:
        return body[1:].decode()
    except UnicodeDecodeError:
        raise MhError("option", "MN identifier (NAI) is not valid UTF-8") from None


def decode_mh(
    data: bytes, src: IPv6Address | None = None, dst: IPv6Address | None = None
) -> PBU | PBA:
    """Decode a Mobility Header holding a PBU or PBA; checksum checked when src and dst given.

    Raises MhError (a ValueError) naming what is wrong.
    """
    if len(data) < _OPTIONS_AT:
        raise MhError("short", f"mobility header of {len(data)} bytes, need at least 12")
    proto, hdrlen, mh_type, _reserved, _cksum = _HEADER.unpack_from(data)
    if (hdrlen + 1) * 8 != len(data):
        raise MhError(
            "length", f"header length field says {(hdrlen + 1) * 8} bytes, got {len(data)}"
        )
    if proto != IPPROTO_NONE:
        raise MhError("proto", f"payload proto is {proto}, must be 59 (no next header)")
    if src is not None and dst is not None and mh_checksum(src, dst, data) != 0:
        raise MhError("checksum", f"bad mobility header checksum from {src}")
    if mh_type == MH_TYPE_BU:
        seq, flags, units = _BU_FIXED.unpack_from(data, _HEADER.size)
        fixed: dict = {"sequence": seq, "flags": BuFlags(flags & 0xFE00)}
        cls: type[PBU] | type[PBA] = PBU
    elif mh_type == MH_TYPE_BA:
        status, flags, seq, units = _BA_FIXED.unpack_from(data, _HEADER.size)
        fixed = {"sequence": seq, "flags": BaFlags(flags & 0xE0), "status": status}
        cls = PBA
    else:
        raise MhError("unknown-type", f"mobility header type {mh_type} is not a PBU (5) or PBA (6)")
    return cls(lifetime_s=units * 4, **fixed, **_decode_options(data, _OPTIONS_AT))


# --------------------------------------------------------------------------- events


def _detail(**values: object) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items() if value is not None)


def _prefixes(hnps: Iterable[IPv6Network]) -> str:
    return ",".join(map(str, hnps))


# --------------------------------------------------------------------------- kernel glue


class RouteError(RuntimeError):
    """A route change the kernel refused; the message reads like the ``ip`` command's."""


# rtnetlink (linux/netlink.h, linux/rtnetlink.h)
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


class RouteTable:
    """The IPv6 main routing table of this process's namespace, changed over rtnetlink.

    ``replace`` and ``delete`` do what ``ip -6 route replace|del PREFIX [via GW] dev IF``
    do, without forking ``ip`` (about 2 ms a time here, which would show in every handover).
    Agents take any object with these two methods, so their logic can run against a fake.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()  # one request and its ack at a time

    def replace(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        """Install or overwrite the route to ``prefix``."""
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, prefix, dev, via)

    def delete(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        """Remove the route to ``prefix``."""
        self._request(RTM_DELROUTE, 0, prefix, dev, via)

    def _request(
        self, kind: int, flags: int, prefix: IPv6Network, dev: str, via: IPv6Address | None
    ) -> None:
        words = f"{'replace' if kind == RTM_NEWROUTE else 'del'} {prefix}"
        words += f" via {via} dev {dev}" if via is not None else f" dev {dev}"
        try:
            ifidx = mcsock.ifindex(dev)
        except ValueError as exc:
            raise RouteError(f"ip -6 route {words}: {exc}") from None
        attrs = _rtattr(RTA_DST, prefix.network_address.packed)
        attrs += _rtattr(RTA_OIF, struct.pack("=I", ifidx))
        if via is not None:
            attrs += _rtattr(RTA_GATEWAY, via.packed)
        protocol = RTPROT_STATIC if kind == RTM_NEWROUTE else 0
        rtm = _RTMSG.pack(
            socket.AF_INET6, prefix.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
            RT_SCOPE_UNIVERSE, RTN_UNICAST, 0,
        )  # fmt: skip
        body = rtm + attrs
        with self._lock:
            self._seq += 1
            hdr = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0
            )
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._sock.send(hdr + body)
            error = self._ack(self._seq)
        if error:
            raise RouteError(f"ip -6 route {words}: {os.strerror(error)}")

    def _ack(self, seq: int) -> int:
        """The errno the kernel acknowledged request ``seq`` with (0: done)."""
        assert self._sock is not None
        while True:
            data = self._sock.recv(65536)
            at = 0
            while at + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, at)
                if kind == NLMSG_ERROR and got_seq == seq:
                    return -struct.unpack_from("=i", data, at + _NLMSGHDR.size)[0]
                at += max((length + 3) & ~3, _NLMSGHDR.size)


def _rtattr(kind: int, value: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(value), kind) + value
    return attr + bytes(-len(attr) % 4)


def open_mh_socket(address: IPv6Address) -> socket.socket:
    """A raw Mobility Header socket bound to ``address``, with receive metadata on.

    Binding makes it hear only MH sent to ``address`` and use ``address`` as source.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_MH)
    try:
        sock.bind((str(address), 0))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        mcsock.enable_rx_metadata(sock, 6)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"raw MH socket on {address}: {exc.strerror}") from None
    return sock


@dataclass(frozen=True)
class Received:
    """A decoded Mobility Header with where and when it arrived."""

    msg: PBU | PBA
    src: IPv6Address
    dst: IPv6Address | None
    ifname: str | None
    recv_ns: int


def receive_mh(sock: socket.socket) -> Received:
    """Read one Mobility Header from ``sock``; MhError if it is malformed."""
    data, ancdata, _flags, addr = sock.recvmsg(65535, mcsock.ANCILLARY_SIZE)
    meta = mcsock.parse_ancillary(ancdata)
    src = IPv6Address(addr[0].split("%")[0])
    ifname = None
    if meta.ifindex:
        with contextlib.suppress(OSError):  # the interface went away meanwhile
            ifname = socket.if_indextoname(meta.ifindex)
    msg = decode_mh(data, src, meta.dst)
    recv_ns = meta.recv_ns if meta.recv_ns is not None else time.time_ns()
    return Received(msg, src, meta.dst, ifname, recv_ns)


# --------------------------------------------------------------------------- LMA


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
    goes out of the link its PBU came in on, unless ``coa_tunnels`` maps that Proxy-CoA to a
    link explicitly. ``bce_delete_delay`` is MinDelayBeforeBCEDelete (10 s in RFC 5213).
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
            _detail(
                mn=pba.mn_id, seq=pba.sequence, status=pba.status, to=coa, lifetime=pba.lifetime_s
            ),
            t,
        )

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
        detail = _detail(
            mn=pbu.mn_id,
            seq=pbu.sequence,
            coa=coa,
            dev=ifname,
            lifetime=pbu.lifetime_s,
            hi=pbu.handoff,
            hnp=_prefixes(pbu.hnps),
        )
        self.events.emit("pbu_received", detail, recv_ns)
        bce = None if pbu.mn_id is None else self.bindings.get(pbu.mn_id)
        if pbu.lifetime_s == 0 and bce is not None and bce.proxy_coa != coa:
            # §5.3.5: a de-registration from a MAG that no longer serves the MN (the new
            # MAG's registration came first) is ignored, without a reply.
            self.events.emit("pbu_ignored", _detail(mn=pbu.mn_id, coa=coa, serving=bce.proxy_coa))
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
                    self.routes.replace(hnp, tunnel, coa)
            except RouteError as exc:
                self.events.emit("route_failed", str(exc))
                return Status.REASON_UNSPECIFIED
        what = "new" if bce is None else "moved" if moved else "refreshed"
        self.events.emit(
            "bce_updated",
            _detail(mn=pbu.mn_id, binding=what, coa=coa, dev=tunnel, lifetime=lifetime),
        )
        if bce is None or moved:
            old = None if bce is None else f"{bce.proxy_coa}%{bce.tunnel_if}"
            self.events.emit(
                "route_moved" if moved else "route_added",
                _detail(hnp=_prefixes(pbu.hnps), via=coa, dev=tunnel, old=old),
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
            _detail(mn=pbu.mn_id, binding="deregistered", delete_in=f"{self.bce_delete_delay}s"),
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
                self.routes.delete(hnp, bce.tunnel_if, bce.proxy_coa)
            except RouteError as exc:  # someone else removed it; the BCE goes regardless
                print(f"pmip lma: {exc}", file=sys.stderr)
        self.events.emit(
            "bce_deleted",
            _detail(
                mn=mn_id,
                reason=reason.replace(" ", "_"),
                hnp=_prefixes(bce.hnps),
                coa=bce.proxy_coa,
            ),
        )


# --------------------------------------------------------------------------- MAG


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
        self.events.emit("route_added", _detail(hnp=hnp, dev=access_if))
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
                self.events.emit("route_deleted", _detail(hnp=hnp, dev=access_if))
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
                    _detail(
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
                        _detail(
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


# --------------------------------------------------------------------------- CLI


def _ipv6(text: str) -> IPv6Address:
    try:
        return IPv6Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv6 address: {text}") from None


def _prefix(text: str) -> IPv6Network:
    try:
        return IPv6Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv6 prefix: {exc}") from None


def _byte(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise argparse.ArgumentTypeError(f"not a value in 0..255: {text}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _lifetime(text: str) -> int:
    if not text.isdigit() or int(text) % 4 or not 0 < int(text) <= MAX_LIFETIME_S:
        raise argparse.ArgumentTypeError(
            f"lifetime must be a positive multiple of 4 s up to {MAX_LIFETIME_S}: {text}"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.pmip", description="RFC 5213 PBU/PBA signalling emulation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    lma = sub.add_parser("lma", help="run the LMA agent until SIGTERM")
    lma.add_argument("--address", type=_ipv6, required=True, help="LMAA, the LMA's address")
    lma.add_argument(
        "--tunnel-if",
        action="append",
        required=True,
        metavar="IF|COA=IF",
        help="MAG link accepted for PBUs (repeatable); COA=IF pins a Proxy-CoA to a link",
    )
    lma.add_argument(
        "--bce-delete-delay",
        type=_seconds,
        default=MIN_DELAY_BEFORE_BCE_DELETE_S,
        metavar="S",
        help="MinDelayBeforeBCEDelete (10 s)",
    )
    lma.add_argument("--max-lifetime", type=_lifetime, default=MAX_LIFETIME_S, metavar="S")

    agents = {
        "mag-register": "register an MN (one-shot)",
        "mag-deregister": "de-register an MN with a lifetime-0 PBU (one-shot)",
    }
    mags = {name: sub.add_parser(name, help=text) for name, text in agents.items()}
    for name, mag in mags.items():
        mag.add_argument("--proxy-coa", type=_ipv6, required=True, help="this MAG's address")
        mag.add_argument("--lma", type=_ipv6, required=True, help="LMAA")
        mag.add_argument("--mn-id", required=True, help="MN identifier (NAI)")
        mag.add_argument("--hnp", type=_prefix, required=True, help="home network prefix")
        mag.add_argument(
            "--access-if",
            required=name == "mag-register",
            help="MN's access link (the host route goes here)",
        )
        mag.add_argument(
            "--handoff",
            type=_byte,
            default=Handoff.NEW_INTERFACE if name == "mag-register" else Handoff.UNKNOWN,
            help="Handoff Indicator: 1 new interface, 3 between MAGs, 4 unknown",
        )
        mag.add_argument(
            "--att",
            type=_byte,
            default=AccessTech.IEEE_802_3,
            help="Access Technology Type (3 = IEEE 802.3)",
        )
        mag.add_argument(
            "--initial-timeout", type=_seconds, default=INITIAL_BINDACK_TIMEOUT_S, metavar="S"
        )
        mag.add_argument("--max-timeout", type=_seconds, default=MAX_BINDACK_TIMEOUT_S, metavar="S")
    mags["mag-deregister"].add_argument(
        "--no-wait", action="store_true", help="send one PBU, do not wait for the PBA"
    )
    mags["mag-register"].add_argument(
        "--lifetime", type=_lifetime, default=DEFAULT_LIFETIME_S, metavar="S"
    )
    for command in (lma, *mags.values()):
        command.add_argument("--events", type=Path, help="events CSV to append to")
        command.add_argument("--node", help="node name in the events (default: the role)")
    return parser


def _tunnels(specs: list[str]) -> tuple[list[str], dict[IPv6Address, str]]:
    names, pinned = [], {}
    for spec in specs:
        coa, sep, ifname = spec.rpartition("=")
        if not sep:
            names.append(spec)
            continue
        try:
            pinned[IPv6Address(coa)] = ifname
        except ValueError:
            raise ValueError(f"--tunnel-if {spec}: {coa!r} is not an IPv6 address") from None
    for ifname in [*names, *pinned.values()]:
        mcsock.ifindex(ifname)  # fail now, with the interface's name, not at the first PBU
    return names, pinned


def run_lma(args: argparse.Namespace, events: EventLog) -> int:
    names, pinned = _tunnels(args.tunnel_if)
    agent = LmaAgent(
        args.address,
        tunnel_ifs=names,
        coa_tunnels=pinned,
        events=events,
        bce_delete_delay=args.bce_delete_delay,
        max_lifetime_s=args.max_lifetime,
    )

    def ready() -> None:
        # Harnesses wait for this line before the first PBU.
        print(
            f"pmip lma: listening on {args.address}, tunnels {', '.join(args.tunnel_if)}",
            flush=True,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.serve(stop, ready)

    asyncio.run(serve())
    return 0


def run_mag(args: argparse.Namespace, events: EventLog) -> int:
    with MagAgent(
        args.proxy_coa,
        events=events,
        access_tech=args.att,
        initial_timeout=args.initial_timeout,
        max_timeout=args.max_timeout,
    ) as mag:
        if args.command == "mag-register":
            done = mag.register(
                args.mn_id,
                args.hnp,
                args.lma,
                args.access_if,
                handoff=args.handoff,
                lifetime_s=args.lifetime,
            )
        else:
            done = mag.deregister(
                args.mn_id,
                args.hnp,
                args.lma,
                access_if=args.access_if,
                handoff=args.handoff,
                wait=not args.no_wait,
            )
    if done is None:
        print(f"pmip {args.command}: {args.mn_id} {args.hnp}: PBU sent to {args.lma}")
    else:
        print(
            f"pmip {args.command}: {args.mn_id} {args.hnp} accepted by {args.lma}, "
            f"PBU->PBA {done.rtt_ns / 1e6:.3f} ms, {done.attempts} PBU(s)"
        )
    return 0


def _one_line(exc: Exception) -> str:
    hint = ""
    if isinstance(exc, OSError) and exc.errno == errno.EPERM:
        hint = " (raw sockets and routes need root)"
    return mcsock.error_text(exc) + hint


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    role = "lma" if args.command == "lma" else "mag"
    try:
        events = EventLog(args.events, args.node or role)
    except OSError as exc:
        print(
            f"pmip {args.command}: error: cannot open {args.events}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 1
    try:
        return (run_lma if role == "lma" else run_mag)(args, events)
    except (SignallingError, RouteError, ValueError, OSError) as exc:
        print(f"pmip {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pmip {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
