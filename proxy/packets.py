"""Wire codec for IGMPv1/v2/v3 and MLDv1/v2: encode, decode, validity checks and time codes.

Decoding turns the bytes of one IGMP message (after the IPv4 header) or one ICMPv6 MLD
message into the values of ``proxy.messages``; encoding does the reverse. Every malformed
input raises :class:`PacketError`, whose ``reason`` is a short counter name, and nothing
else. Programming errors in what is handed to an encoder (wrong address family, a version
that has no such message) raise a plain ``ValueError``.

Decisions that callers must know:

- Lengths. A message shorter than its smallest format is ``"short"``, as is one whose
  counts (sources, records, aux words) point past its end. A Query whose length falls
  between the old and the new format (IGMP 9-11 octets, MLD 25-27) is ``"bad-length"``
  (RFC 3376 §7.1, RFC 3810 §8.1). Octets after the last field are ignored but covered
  by the IGMP checksum (RFC 2236 §2.5, RFC 3376 §4.1.10 and §4.2.11, RFC 2710 §3.7).
- Group records of an unknown type are skipped (RFC 3376 §4.2.12, RFC 3810 §5.2.12).
  Auxiliary data is kept in ``GroupRecord.aux`` for the record; the state machines must
  ignore it (RFC 3376 §4.2.10).
- IGMPv2 and MLDv1 Queries carry a linear Max Response Time (RFC 2236 §2.2, RFC 2710
  §3.4); only IGMPv3 / MLDv2 Queries use the exponential codes. An IGMPv1 Query means
  10 s (RFC 3376 §7.1).
- Router Alert on IPv4 is not required by default, see :func:`validate_ipv4`.
- The codec does not judge addresses inside messages (a record for a unicast "group",
  a General Query sent to the wrong destination): that is policy for the state machines.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

from proxy.messages import (
    Address,
    GroupRecord,
    Leave,
    Message,
    OldReport,
    Query,
    RecordType,
    Report,
)

__all__ = [
    "IgmpType",
    "MldType",
    "PacketError",
    "decode_igmp",
    "decode_mld",
    "encode_igmp",
    "encode_mld",
    "igmp_code_to_tenths",
    "ipv4_igmp_packet",
    "mld_code_to_ms",
    "ms_to_mld_code",
    "qqic_to_seconds",
    "seconds_to_qqic",
    "split_report",
    "tenths_to_igmp_code",
    "validate_ipv4",
    "validate_mld_meta",
]


class PacketError(ValueError):
    """A received message that must be dropped; ``reason`` names the drop counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class IgmpType(enum.IntEnum):
    """IGMP message types (RFC 3376 §4, RFC 2236 §2.1, RFC 1112 App. I)."""

    QUERY = 0x11
    V1_REPORT = 0x12
    V2_REPORT = 0x16
    LEAVE = 0x17
    V3_REPORT = 0x22


class MldType(enum.IntEnum):
    """ICMPv6 types of MLD messages (RFC 2710 §3, RFC 3810 §5)."""

    QUERY = 130
    V1_REPORT = 131
    DONE = 132
    V2_REPORT = 143


# Wire layouts. The first fields of every IGMP and MLD message are type, code, checksum.
_IGMP_HEADER = struct.Struct("!BBH4s")  # type, max resp code, checksum, group
_MLD_HEADER = struct.Struct("!BBHHH16s")  # type, code, checksum, max resp code, reserved, group
_QUERY_TAIL = struct.Struct("!BBH")  # resv|S|QRV, QQIC, number of sources (after the group)
_REPORT_HEADER = struct.Struct("!BBHHH")  # type, reserved, checksum, reserved, number of records
_RECORD_HEADER = struct.Struct("!BBH")  # record type, aux data words, number of sources
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # ver|ihl, tos, length, id, frag, ttl, proto, cksum
_CHECKSUM_AT = 2  # same offset in IGMP, ICMPv6 and (at 10) the IPv4 header
_IPV4_CHECKSUM_AT = 10

_S_FLAG = 0x08
_QRV_MASK = 0x07
_IGMP_V1_MAX_RESP = 10.0  # RFC 3376 §7.1: an IGMPv1 Query counts as Max Resp Code 100
_IPPROTO_IGMP = 2
_IPPROTO_ICMPV6 = 58
_ROUTER_ALERT = b"\x94\x04\x00\x00"  # RFC 2113: copied, option 20, length 4, value 0
_TOS_INTERNETWORK_CONTROL = 0xC0
_IPV4_DONT_FRAGMENT = 0x4000
_EXCLUDE_TYPES = frozenset({RecordType.MODE_IS_EXCLUDE, RecordType.CHANGE_TO_EXCLUDE})
_IGMP_TYPES = frozenset(IgmpType)
_MLD_TYPES = frozenset(MldType)
_RECORD_TYPES = frozenset(RecordType)


# --- time codes --------------------------------------------------------------------------


@dataclass(frozen=True)
class _FloatCode:
    """RFC 3376 §4.1.1 / RFC 3810 §5.1.3 codes: linear below 1|000..., else 1|exp(3)|mant.

    The value of an exponential code is ``(mant | 1 << mant_bits) << (exp + 3)``.
    """

    mant_bits: int

    @property
    def linear_limit(self) -> int:
        return 1 << (self.mant_bits + 3)

    @property
    def max_code(self) -> int:
        return (1 << (self.mant_bits + 4)) - 1

    def decode(self, code: int) -> int:
        if not 0 <= code <= self.max_code:
            raise ValueError(f"code {code} outside 0..{self.max_code}")
        if code < self.linear_limit:
            return code
        exp = (code >> self.mant_bits) & 0x7
        mant = code & ((1 << self.mant_bits) - 1)
        return (mant | 1 << self.mant_bits) << (exp + 3)

    def encode(self, value: float) -> int:
        """Smallest code whose value is >= ``value``, capped at the largest code."""
        units = _ceil(value)
        if units < self.linear_limit:
            return units
        hidden = 1 << self.mant_bits
        # Values grow with the code, so the first exponent whose mantissa fits gives the
        # smallest code that is not below the request.
        for exp in range(8):
            mant = -(-units // (1 << (exp + 3))) - hidden
            if mant < hidden:
                return self.linear_limit | exp << self.mant_bits | mant
        return self.max_code


_CODE8 = _FloatCode(mant_bits=4)  # IGMPv3 Max Resp Code and the QQIC of IGMPv3 and MLDv2
_CODE16 = _FloatCode(mant_bits=12)  # MLDv2 Maximum Response Code


def _ceil(value: float) -> int:
    """Round up to a whole unit; values a float rounding error above a whole stay there."""
    if value < 0:
        raise ValueError(f"negative time {value}")
    return math.ceil(round(value, 6))


def igmp_code_to_tenths(code: int) -> int:
    """IGMPv3 Max Resp Code -> tenths of a second (RFC 3376 §4.1.1)."""
    return _CODE8.decode(code)


def tenths_to_igmp_code(t: float) -> int:
    """Tenths of a second -> the smallest IGMPv3 Max Resp Code covering them."""
    return _CODE8.encode(t)


def mld_code_to_ms(code: int) -> int:
    """MLDv2 Maximum Response Code -> milliseconds (RFC 3810 §5.1.3)."""
    return _CODE16.decode(code)


def ms_to_mld_code(ms: float) -> int:
    """Milliseconds -> the smallest MLDv2 Maximum Response Code covering them."""
    return _CODE16.encode(ms)


def qqic_to_seconds(code: int) -> int:
    """Querier's Query Interval Code -> seconds (RFC 3376 §4.1.7, RFC 3810 §5.1.9)."""
    return _CODE8.decode(code)


def seconds_to_qqic(s: float) -> int:
    """Seconds -> the smallest QQIC covering them."""
    return _CODE8.encode(s)


def _linear_code(units: float, largest: int) -> int:
    """IGMPv2 / MLDv1 plain time fields: round up, cap at the field's maximum."""
    return min(_ceil(units), largest)


# --- shared pieces -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """What the shared IGMPv3/MLDv2 layouts need to know about addresses."""

    address: type[IPv4Address] | type[IPv6Address]
    width: int

    def pack(self, addrs: Iterable[Address]) -> bytes:
        out = bytearray()
        for addr in addrs:
            if not isinstance(addr, self.address):
                raise ValueError(f"{addr!r} is not an {self.address.__name__}")
            out += addr.packed
        return bytes(out)

    def unpack(self, data: bytes, offset: int, count: int) -> tuple[Address, ...]:
        _need(data, offset + count * self.width)
        w = self.width
        return tuple(self.address(data[i : i + w]) for i in range(offset, offset + count * w, w))


_V4 = _Family(IPv4Address, 4)
_V6 = _Family(IPv6Address, 16)


def _family_of(addr: Address) -> _Family:
    return _V4 if isinstance(addr, IPv4Address) else _V6


def _need(data: bytes, end: int) -> None:
    if len(data) < end:
        raise PacketError("short", f"{len(data)} octets, need {end}")


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum; 0 when computed over data that carries a valid one."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(message: bytes, pseudo_header: bytes = b"", at: int = _CHECKSUM_AT) -> bytes:
    value = _checksum(pseudo_header + message)
    return message[:at] + struct.pack("!H", value) + message[at + 2 :]


def _has_source_list(data: bytes, old_length: int) -> bool:
    """Tell an old from a new Query by its length alone (RFC 3376 §7.1, RFC 3810 §8.1)."""
    if len(data) == old_length:
        return False
    if len(data) < old_length + _QUERY_TAIL.size:
        raise PacketError("bad-length", f"query of {len(data)} octets")
    return True


def _decode_sourced_query(
    data: bytes, fam: _Family, tail_at: int, version: int, group: Address, max_resp: float
) -> Query:
    flags, qqic, count = _QUERY_TAIL.unpack_from(data, tail_at)
    return Query(
        version=version,
        group=group,
        max_resp=max_resp,
        sources=fam.unpack(data, tail_at + _QUERY_TAIL.size, count),
        s_flag=bool(flags & _S_FLAG),
        qrv=flags & _QRV_MASK,
        qqi=float(qqic_to_seconds(qqic)),
    )


def _encode_query_tail(query: Query, fam: _Family) -> bytes:
    if query.qrv < 0:
        raise ValueError(f"negative QRV {query.qrv}")
    # RFC 3376 §4.1.6: a Robustness Variable above 7 is sent as 0.
    qrv = query.qrv if query.qrv <= _QRV_MASK else 0
    flags = (_S_FLAG if query.s_flag else 0) | qrv
    tail = _QUERY_TAIL.pack(flags, seconds_to_qqic(query.qqi), len(query.sources))
    return tail + fam.pack(query.sources)


def _no_sources(query: Query, what: str) -> None:
    # S, QRV and QQI have no field in the old formats and are dropped; a source list would
    # change what the Query asks, so it is refused.
    if query.sources:
        raise ValueError(f"{what} queries carry no source list")


def _decode_report(data: bytes, fam: _Family) -> Report:
    _need(data, _REPORT_HEADER.size)
    *_, count = _REPORT_HEADER.unpack_from(data)
    records = []
    at = _REPORT_HEADER.size
    for _ in range(count):
        _need(data, at + _RECORD_HEADER.size + fam.width)
        rtype, aux_words, nsrc = _RECORD_HEADER.unpack_from(data, at)
        (group,) = fam.unpack(data, at + _RECORD_HEADER.size, 1)
        sources_at = at + _RECORD_HEADER.size + fam.width
        sources = fam.unpack(data, sources_at, nsrc)
        aux_at = sources_at + nsrc * fam.width
        end = aux_at + 4 * aux_words
        _need(data, end)
        if rtype in _RECORD_TYPES:
            records.append(GroupRecord(RecordType(rtype), group, sources, data[aux_at:end]))
        at = end
    return Report(tuple(records))


def _encode_report(report: Report, fam: _Family, msg_type: int) -> bytes:
    out = bytearray(_REPORT_HEADER.pack(msg_type, 0, 0, 0, len(report.records)))
    for rec in report.records:
        if len(rec.aux) % 4:
            raise ValueError("auxiliary data must be a whole number of 32-bit words")
        out += _RECORD_HEADER.pack(int(rec.rtype), len(rec.aux) // 4, len(rec.sources))
        out += fam.pack((rec.group, *rec.sources)) + rec.aux
    return bytes(out)


def _record_size(rec: GroupRecord, fam: _Family) -> int:
    return _RECORD_HEADER.size + fam.width * (1 + len(rec.sources)) + len(rec.aux)


# --- IGMP --------------------------------------------------------------------------------


def decode_igmp(data: bytes) -> Message:
    """Decode one IGMP message (the IPv4 payload) and verify its checksum."""
    data = bytes(data)
    _need(data, 1)
    if data[0] not in _IGMP_TYPES:
        raise PacketError("unknown-type", f"IGMP type {data[0]:#04x}")
    _need(data, _IGMP_HEADER.size)
    if _checksum(data):
        raise PacketError("checksum")
    kind, code, _, raw_group = _IGMP_HEADER.unpack_from(data)
    group = IPv4Address(raw_group)
    if kind == IgmpType.QUERY:
        if _has_source_list(data, _IGMP_HEADER.size):
            max_resp = igmp_code_to_tenths(code) / 10
            return _decode_sourced_query(data, _V4, _IGMP_HEADER.size, 3, group, max_resp)
        if code == 0:
            return Query(version=1, group=group, max_resp=_IGMP_V1_MAX_RESP)
        return Query(version=2, group=group, max_resp=code / 10)
    if kind == IgmpType.V3_REPORT:
        return _decode_report(data, _V4)
    if kind == IgmpType.LEAVE:
        return Leave(group)
    return OldReport(version=1 if kind == IgmpType.V1_REPORT else 2, group=group)


def encode_igmp(msg: Message) -> bytes:
    """Encode one IGMP message with its checksum; a Query's format follows its version."""
    if isinstance(msg, Report):
        return _with_checksum(_encode_report(msg, _V4, IgmpType.V3_REPORT))
    group = _V4.pack((msg.group,))
    if isinstance(msg, Query):
        if msg.version == 3:
            code = tenths_to_igmp_code(msg.max_resp * 10)
            body = _IGMP_HEADER.pack(IgmpType.QUERY, code, 0, group) + _encode_query_tail(msg, _V4)
            return _with_checksum(body)
        if msg.version == 2:
            _no_sources(msg, "IGMPv2")
            # A zero code would turn the message into an IGMPv1 Query (RFC 3376 §7.1).
            code = max(1, _linear_code(msg.max_resp * 10, 0xFF))
        elif msg.version == 1:
            _no_sources(msg, "IGMPv1")
            code = 0
        else:
            raise ValueError(f"no IGMP query version {msg.version}")
        return _with_checksum(_IGMP_HEADER.pack(IgmpType.QUERY, code, 0, group))
    if isinstance(msg, Leave):
        kind = IgmpType.LEAVE
    elif msg.version in (1, 2):
        kind = IgmpType.V1_REPORT if msg.version == 1 else IgmpType.V2_REPORT
    else:
        raise ValueError(f"no IGMPv{msg.version} single-group report")
    return _with_checksum(_IGMP_HEADER.pack(kind, 0, 0, group))


def ipv4_igmp_packet(msg: Message, src: IPv4Address, dst: IPv4Address) -> bytes:
    """A whole IPv4 datagram carrying ``msg`` as RFC 3376 §4 sends it.

    TTL 1, ToS 0xc0 (Internetwork Control), Router Alert, protocol 2, header checksum.
    The identification is 0: with ``IP_HDRINCL`` Linux fills it in.
    """
    payload = encode_igmp(msg)
    header_len = _IPV4_HEADER.size + len(_ROUTER_ALERT)
    header = _IPV4_HEADER.pack(
        0x40 | header_len // 4,
        _TOS_INTERNETWORK_CONTROL,
        header_len + len(payload),
        0,
        _IPV4_DONT_FRAGMENT,
        1,
        _IPPROTO_IGMP,
        0,
        _V4.pack((src,)),
        _V4.pack((dst,)),
    )
    return _with_checksum(header + _ROUTER_ALERT, at=_IPV4_CHECKSUM_AT) + payload


def _ipv4_router_alert(options: bytes) -> bool:
    """Walk the IPv4 options (RFC 791); True if a Router Alert (RFC 2113) is among them."""
    found = False
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == 0:  # end of option list
            break
        if kind == 1:  # no-operation, a single octet
            at += 1
            continue
        if at + 1 >= len(options) or not 2 <= options[at + 1] <= len(options) - at:
            raise PacketError("bad-ipv4", f"malformed IP option {kind:#04x}")
        found = found or options[at : at + 2] == _ROUTER_ALERT[:2]
        at += options[at + 1]
    return found


def validate_ipv4(
    header: bytes, *, require_router_alert: bool = False
) -> tuple[IPv4Address, IPv4Address, int]:
    """Check the IPv4 header of a received IGMP datagram; return (src, dst, header length).

    ``header`` starts with the IPv4 header; the IGMP message may follow and is not read.
    Checked: version, header length, header checksum, protocol 2 and multicast-free
    source ("bad-ipv4"), TTL 1 ("bad-ttl"). Source 0.0.0.0 is accepted (RFC 3376
    §4.2.13: routers MUST accept it for Reports).

    Router Alert is not required by default. RFC 3376 §4 sends every message with it,
    but for routers §9.2 (and RFC 2236 §9) lists ignoring Reports without it only as an
    optional defence against off-link forgery that "breaks backwards compatibility";
    the "Hosts SHOULD ignore v2 or v3 Queries without" rule of §9.1 is for the host side,
    which here is the kernel's own stack. IGMPv1 never carries it, and the TTL 1 check
    already drops what a router forwarded. ``require_router_alert=True`` applies the
    strict rule to every message (so it also drops IGMPv1) with "no-router-alert".
    """
    header = bytes(header)
    _need(header, _IPV4_HEADER.size)
    ver_ihl, _, total, _, _, ttl, proto, _, raw_src, raw_dst = _IPV4_HEADER.unpack_from(header)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < _IPV4_HEADER.size:
        raise PacketError("bad-ipv4", f"version/IHL octet {ver_ihl:#04x}")
    _need(header, header_len)
    if _checksum(header[:header_len]):
        raise PacketError("bad-ipv4", "header checksum")
    if total < header_len:
        raise PacketError("bad-ipv4", f"total length {total} below header length {header_len}")
    if proto != _IPPROTO_IGMP:
        raise PacketError("bad-ipv4", f"protocol {proto}")
    src, dst = IPv4Address(raw_src), IPv4Address(raw_dst)
    if src.is_multicast or src == IPv4Address("255.255.255.255"):
        raise PacketError("bad-ipv4", f"source {src}")
    if ttl != 1:
        raise PacketError("bad-ttl", f"TTL {ttl}")
    has_alert = _ipv4_router_alert(header[_IPV4_HEADER.size : header_len])
    if require_router_alert and not has_alert:
        raise PacketError("no-router-alert")
    return src, dst, header_len


# --- MLD ---------------------------------------------------------------------------------


def decode_mld(data: bytes) -> Message:
    """Decode one MLD message (the ICMPv6 message); the kernel has checked its checksum."""
    data = bytes(data)
    _need(data, 1)
    if data[0] not in _MLD_TYPES:
        raise PacketError("unknown-type", f"ICMPv6 type {data[0]}")
    if data[0] == MldType.V2_REPORT:
        return _decode_report(data, _V6)
    _need(data, _MLD_HEADER.size)
    kind, _, _, code, _, raw_group = _MLD_HEADER.unpack_from(data)
    group = IPv6Address(raw_group)
    if kind == MldType.QUERY:
        if _has_source_list(data, _MLD_HEADER.size):
            max_resp = mld_code_to_ms(code) / 1000
            return _decode_sourced_query(data, _V6, _MLD_HEADER.size, 2, group, max_resp)
        return Query(version=1, group=group, max_resp=code / 1000)
    if kind == MldType.DONE:
        return Leave(group)
    return OldReport(version=1, group=group)


def encode_mld(
    msg: Message, src: IPv6Address | None = None, dst: IPv6Address | None = None
) -> bytes:
    """Encode one MLD message; the checksum is filled only when ``src`` and ``dst`` are given.

    Without them it stays 0 for a raw ICMPv6 socket, where the kernel computes it.
    """
    if (src is None) != (dst is None):
        raise ValueError("the MLD checksum needs both src and dst")
    if isinstance(msg, Report):
        body = _encode_report(msg, _V6, MldType.V2_REPORT)
    else:
        group = _V6.pack((msg.group,))
        if isinstance(msg, Query):
            if msg.version == 2:
                code = ms_to_mld_code(msg.max_resp * 1000)
                tail = _encode_query_tail(msg, _V6)
            elif msg.version == 1:
                _no_sources(msg, "MLDv1")
                code, tail = _linear_code(msg.max_resp * 1000, 0xFFFF), b""
            else:
                raise ValueError(f"no MLD query version {msg.version}")
            body = _MLD_HEADER.pack(MldType.QUERY, 0, 0, code, 0, group) + tail
        elif isinstance(msg, Leave):
            body = _MLD_HEADER.pack(MldType.DONE, 0, 0, 0, 0, group)
        elif msg.version == 1:
            body = _MLD_HEADER.pack(MldType.V1_REPORT, 0, 0, 0, 0, group)
        else:
            raise ValueError(f"no MLDv{msg.version} single-group report")
    if src is None or dst is None:
        return body
    pseudo = _V6.pack((src, dst)) + struct.pack("!I3xB", len(body), _IPPROTO_ICMPV6)
    return _with_checksum(body, pseudo)


def validate_mld_meta(src: IPv6Address, hop_limit: int, router_alert: bool, msg: Message) -> None:
    """Apply the IPv6-level rules every received MLD message must pass (RFC 3810 §5, §7.4).

    Hop Limit 1 ("hoplimit"), a Router Alert in the Hop-by-Hop header ("no-router-alert")
    and a link-local source ("not-link-local"). A message from :: is "unspecified-source":
    an MLDv2 Report may legitimately come from :: during DAD (RFC 3810 §5.2.13), but a
    router keeps no state for it; for the other messages :: is simply not link-local, and
    the one counter for "came from ::" is the clearer of the two.
    """
    if hop_limit != 1:
        raise PacketError("hoplimit", f"hop limit {hop_limit}")
    if not router_alert:
        raise PacketError("no-router-alert")
    if src.is_unspecified:
        raise PacketError("unspecified-source", type(msg).__name__)
    if not src.is_link_local:
        raise PacketError("not-link-local", str(src))


# --- oversized reports -------------------------------------------------------------------


def split_report(records: Sequence[GroupRecord], max_payload: int) -> list[Report]:
    """Pack group records into Reports of at most ``max_payload`` octets (RFC 3376 §4.2.16).

    ``max_payload`` is the size of the whole IGMP / ICMPv6 message, e.g. MTU - 24 for IPv4
    with Router Alert, MTU - 48 for IPv6 with the Hop-by-Hop Router Alert. Records keep
    their order. A record too large for any Report is split into records with disjoint
    source subsets, each in its own Report; IS_EX and TO_EX records are instead truncated
    to the sources that fit, and the rest go unreported as the RFC says.
    """
    room = max_payload - _REPORT_HEADER.size
    reports: list[Report] = []
    current: list[GroupRecord] = []
    used = 0
    families = {_family_of(rec.group) for rec in records}
    if len(families) > 1:
        raise ValueError("records of both address families in one report")
    for rec in records:
        fam = _family_of(rec.group)
        fixed = _record_size(rec, fam) - fam.width * len(rec.sources)
        per_record = (room - fixed) // fam.width
        if per_record < 0 or (per_record == 0 and rec.sources):
            raise ValueError(f"max_payload {max_payload} cannot hold a record for {rec.group}")
        if len(rec.sources) <= per_record:
            pieces = [rec]
        elif rec.rtype in _EXCLUDE_TYPES:
            pieces = [replace(rec, sources=rec.sources[:per_record])]
        else:
            pieces = [
                replace(rec, sources=rec.sources[i : i + per_record])
                for i in range(0, len(rec.sources), per_record)
            ]
        for piece in pieces:
            size = _record_size(piece, fam)
            if used + size > room:
                reports.append(Report(tuple(current)))
                current, used = [], 0
            current.append(piece)
            used += size
    if current:
        reports.append(Report(tuple(current)))
    return reports
