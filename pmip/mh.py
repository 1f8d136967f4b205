"""The Mobility Header codec of PMIPv6 (RFC 6275 §6.1, RFC 5213 §8): PBU and PBA, and their socket.

Wire format (RFC 6275 §6.1, RFC 5213 §8): a Mobility Header (IPv6 next header 135,
payload proto 59, length in 8-octet units not counting the first 8, checksum over the
IPv6 pseudo-header) carrying a Proxy Binding Update (MH type 5; flags A and P set, H
clear: RFC 5213 §6.9.1.5 asks for A and P only, H is Mobile IPv6's home registration) or a
Proxy Binding Acknowledgement (MH type 6; P set). Lifetimes travel in 4 s units. Options:
MN Identifier (8, RFC 4283, subtype 1 = NAI), Home Network Prefix (22, alignment 8n+4),
Handoff Indicator (23), Access Technology Type (24), Timestamp (27, alignment 8n+2, 48-bit
seconds and 16-bit 1/65536 fractions since 1970), padded with Pad1/PadN so that each option
meets its alignment and the header is a multiple of 8 octets.

"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from ipaddress import IPv6Address, IPv6Network

from lab import mcsock

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


def event_detail(**values: object) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items() if value is not None)


def event_prefixes(hnps: Iterable[IPv6Network]) -> str:
    return ",".join(map(str, hnps))


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
