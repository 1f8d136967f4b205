"""Tests for proxy.packets: the IGMP/MLD wire codec, its validity checks and time codes.

scapy is the independent oracle: every message type is built with scapy and decoded by
us, and encoded by us and dissected by scapy (RFC 3376 §4, RFC 2236 §2, RFC 2710 §3,
RFC 3810 §5). scapy gets two things wrong that the tests work around: an IGMPv3 group
record has no aux data field, and an MLDv2 record's aux length is counted in octets
instead of 32-bit words, so aux data is only checked in the scapy -> us direction with
the length set by hand, and against bytes laid out from the RFC.
"""

from __future__ import annotations

import contextlib
import random
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.contrib.igmp import IGMP
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3gr, IGMPv3mq, IGMPv3mr
from scapy.layers.inet import IP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
)
from scapy.packet import NoPayload, Packet, Raw
from scapy.utils import checksum as scapy_checksum

from proxy.messages import GroupRecord, Leave, Message, OldReport, Query, RecordType, Report
from proxy.packets import (
    PacketError,
    decode_igmp,
    decode_mld,
    encode_igmp,
    encode_mld,
    igmp_code_to_tenths,
    ipv4_igmp_packet,
    mld_code_to_ms,
    ms_to_mld_code,
    qqic_to_seconds,
    seconds_to_qqic,
    split_report,
    tenths_to_igmp_code,
    validate_ipv4,
    validate_mld_meta,
)

ANY4 = IPv4Address("0.0.0.0")
G4 = IPv4Address("239.1.2.3")
S4 = (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IPv4Address("192.0.2.77"))
HOST4 = IPv4Address("10.0.0.9")
ANY6 = IPv6Address("::")
G6 = IPv6Address("ff3e::8000:1")
S6 = (IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"), IPv6Address("2001:db8:1::3"))
LINK_LOCAL = IPv6Address("fe80::1")
ALL_NODES = IPv6Address("ff02::1")
MLDV2_ROUTERS = IPv6Address("ff02::16")


def s(addrs: tuple) -> list[str]:
    return [str(a) for a in addrs]


@dataclass(frozen=True)
class Case:
    """One message as our value and as scapy builds it."""

    name: str
    message: Message
    scapy: Packet
    dst: IPv6Address = MLDV2_ROUTERS  # MLD only: for the checksum pseudo-header


IGMP_CASES = [
    Case("v1-query", Query(1, ANY4, 10.0), IGMP(type=0x11, mrcode=0, gaddr="0.0.0.0")),
    Case("v2-general-query", Query(2, ANY4, 10.0), IGMP(type=0x11, mrcode=100, gaddr="0.0.0.0")),
    Case("v2-group-query", Query(2, G4, 2.5), IGMP(type=0x11, mrcode=25, gaddr=str(G4))),
    Case(
        "v3-group-and-source-query",
        Query(3, G4, 20.0, S4[:2], s_flag=True, qrv=2, qqi=128.0),
        IGMPv3(type=0x11, mrcode=0x89)
        / IGMPv3mq(gaddr=str(G4), s=1, qrv=2, qqic=0x80, srcaddrs=s(S4[:2])),
    ),
    Case(
        "v3-general-query",
        Query(3, ANY4, 3174.4, qrv=7, qqi=125.0),
        IGMPv3(type=0x11, mrcode=0xFF) / IGMPv3mq(gaddr="0.0.0.0", qrv=7, qqic=125),
    ),
    Case("v1-report", OldReport(1, G4), IGMP(type=0x12, mrcode=0, gaddr=str(G4))),
    Case("v2-report", OldReport(2, G4), IGMP(type=0x16, mrcode=0, gaddr=str(G4))),
    Case("v2-leave", Leave(G4), IGMP(type=0x17, mrcode=0, gaddr=str(G4))),
    Case(
        "v3-report-all-record-types",
        Report(
            tuple(
                GroupRecord(rtype, IPv4Address(f"232.1.1.{int(rtype)}"), S4[: int(rtype) % 4])
                for rtype in RecordType
            )
        ),
        IGMPv3(type=0x22, mrcode=0)
        / IGMPv3mr(
            records=[
                IGMPv3gr(
                    rtype=int(rtype), maddr=f"232.1.1.{int(rtype)}", srcaddrs=s(S4[: rtype % 4])
                )
                for rtype in RecordType
            ]
        ),
    ),
    Case("v3-empty-report", Report(()), IGMPv3(type=0x22, mrcode=0) / IGMPv3mr(records=[])),
]

MLD_CASES = [
    Case(
        "v1-general-query",
        Query(1, ANY6, 10.0),
        ICMPv6MLQuery(mrd=10000, mladdr="::"),
        ALL_NODES,
    ),
    Case("v1-group-query", Query(1, G6, 1.0), ICMPv6MLQuery(mrd=1000, mladdr=str(G6)), G6),
    Case(
        "v2-group-and-source-query",
        Query(2, G6, 32.768, S6[:2], s_flag=True, qrv=3, qqi=125.0),
        ICMPv6MLQuery2(mrd=0x8000, mladdr=str(G6), S=1, QRV=3, QQIC=125, sources=s(S6[:2])),
        G6,
    ),
    Case(
        "v2-general-query",
        Query(2, ANY6, 8387.584, qrv=2, qqi=128.0),
        ICMPv6MLQuery2(mrd=0xFFFF, mladdr="::", QRV=2, QQIC=0x80),
        ALL_NODES,
    ),
    Case("v1-report", OldReport(1, G6), ICMPv6MLReport(mladdr=str(G6)), G6),
    Case("v1-done", Leave(G6), ICMPv6MLDone(mladdr=str(G6)), IPv6Address("ff02::2")),
    Case(
        "v2-report-all-record-types",
        Report(
            tuple(
                GroupRecord(rtype, IPv6Address(f"ff3e::{int(rtype)}"), S6[: int(rtype) % 4])
                for rtype in RecordType
            )
        ),
        ICMPv6MLReport2(
            records=[
                ICMPv6MLDMultAddrRec(
                    rtype=int(rtype), dst=f"ff3e::{int(rtype)}", sources=s(S6[: rtype % 4])
                )
                for rtype in RecordType
            ]
        ),
    ),
    Case("v2-empty-report", Report(()), ICMPv6MLReport2(records=[])),
]

AUX = b"\x01\x02\x03\x04\x05\x06\x07\x08"
IGMP_AUX_CASE = Case(
    "v3-report-with-aux-data",
    Report((GroupRecord(RecordType.ALLOW_NEW_SOURCES, G4, S4[:1], AUX),)),
    IGMPv3(type=0x22, mrcode=0)
    / IGMPv3mr(
        records=[IGMPv3gr(rtype=5, auxdlen=2, maddr=str(G4), srcaddrs=s(S4[:1])) / Raw(AUX)]
    ),
)
MLD_AUX_CASE = Case(
    "v2-report-with-aux-data",
    Report((GroupRecord(RecordType.BLOCK_OLD_SOURCES, G6, S6[:1], AUX),)),
    ICMPv6MLReport2(
        records=[
            ICMPv6MLDMultAddrRec(
                rtype=6, auxdata_len=2, dst=str(G6), sources=s(S6[:1]), auxdata=AUX
            )
        ]
    ),
)
ALL_IGMP = [*IGMP_CASES, IGMP_AUX_CASE]
ALL_MLD = [*MLD_CASES, MLD_AUX_CASE]


def ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


def mld_wire(case: Case) -> bytes:
    """The ICMPv6 message scapy builds, with the checksum over a link-local source."""
    return bytes(IPv6(src=str(LINK_LOCAL), dst=str(case.dst)) / case.scapy)[40:]


def our_mld(case: Case) -> bytes:
    return encode_mld(case.message, LINK_LOCAL, case.dst)


def layers(pkt: Packet) -> list[Packet]:
    out = []
    while not isinstance(pkt, NoPayload):
        out.append(pkt)
        pkt = pkt.payload
    return out


def assert_layer_fields(built: Packet, dissected: Packet) -> None:
    """Every field the test set when building is what scapy dissects from our bytes."""
    for name, want in built.fields.items():
        got = dissected.getfieldval(name)
        if isinstance(want, list) and want and isinstance(want[0], Packet):
            # scapy dissects an MLDv2 record list as a chain of payloads, so flatten both.
            want_records = [r for item in want for r in layers(item)]
            got_records = [r for item in got for r in layers(item)]
            assert len(got_records) == len(want_records), name
            for w, g in zip(want_records, got_records, strict=True):
                assert_layer_fields(w, g)
        else:
            assert got == want, f"{type(built).__name__}.{name}"


def assert_dissects_like(built: Packet, dissected: Packet) -> None:
    want, got = layers(built), layers(dissected)
    assert [type(x) for x in got] == [type(x) for x in want]
    for w, g in zip(want, got, strict=True):
        assert_layer_fields(w, g)


def with_igmp_checksum(body: bytes) -> bytes:
    """Put a valid IGMP checksum into ``body`` (computed by scapy, not by the module)."""
    body = body[:2] + b"\0\0" + body[4:]
    return body[:2] + struct.pack("!H", scapy_checksum(body)) + body[4:]


def reason(excinfo: pytest.ExceptionInfo[PacketError]) -> str:
    return excinfo.value.reason


# --- round trips against scapy -----------------------------------------------------------


@pytest.mark.parametrize("case", ALL_IGMP, ids=ids(ALL_IGMP))
def test_igmp_message_built_by_scapy_decodes_to_its_fields(case: Case) -> None:
    assert decode_igmp(bytes(case.scapy)) == case.message


@pytest.mark.parametrize("case", ALL_IGMP, ids=ids(ALL_IGMP))
def test_igmp_encoding_equals_scapy_bytes_including_checksum(case: Case) -> None:
    assert encode_igmp(case.message) == bytes(case.scapy)


@pytest.mark.parametrize("case", IGMP_CASES, ids=ids(IGMP_CASES))
def test_igmp_encoding_dissects_in_scapy_to_the_same_fields(case: Case) -> None:
    wire = encode_igmp(case.message)
    dissected = IGMP(wire)
    assert_dissects_like(case.scapy, dissected)
    assert scapy_checksum(wire) == 0
    assert dissected.chksum == IGMP(bytes(case.scapy)).chksum


@pytest.mark.parametrize("case", ALL_MLD, ids=ids(ALL_MLD))
def test_mld_message_built_by_scapy_decodes_to_its_fields(case: Case) -> None:
    assert decode_mld(mld_wire(case)) == case.message


@pytest.mark.parametrize("case", ALL_MLD, ids=ids(ALL_MLD))
def test_mld_encoding_equals_scapy_bytes_including_pseudo_header_checksum(case: Case) -> None:
    assert our_mld(case) == mld_wire(case)


@pytest.mark.parametrize("case", MLD_CASES, ids=ids(MLD_CASES))
def test_mld_encoding_dissects_in_scapy_to_the_same_fields(case: Case) -> None:
    wire = our_mld(case)
    assert_dissects_like(case.scapy, type(case.scapy)(wire))
    rebuilt = IPv6(src=str(LINK_LOCAL), dst=str(case.dst)) / type(case.scapy)(wire)
    rebuilt[type(case.scapy)].cksum = None  # let scapy compute it afresh
    assert bytes(rebuilt)[40:] == wire


@pytest.mark.parametrize("case", MLD_CASES, ids=ids(MLD_CASES))
def test_mld_checksum_is_left_zero_for_the_kernel_without_addresses(case: Case) -> None:
    wire = encode_mld(case.message)
    assert wire[2:4] == b"\0\0"
    assert wire[:2] + wire[4:] == our_mld(case)[:2] + our_mld(case)[4:]
    assert decode_mld(wire) == case.message


def test_mld_checksum_needs_both_addresses() -> None:
    with pytest.raises(ValueError):
        encode_mld(Leave(G6), src=LINK_LOCAL)


def test_aux_data_is_laid_out_in_32_bit_words_after_the_sources() -> None:
    wire = encode_igmp(IGMP_AUX_CASE.message)
    record = wire[8:]
    assert record[:4] == bytes([5, 2, 0, 1])  # type, aux words, one source
    assert record[4:12] == G4.packed + S4[0].packed
    assert record[12:] == AUX


# --- time codes --------------------------------------------------------------------------

CHECKLIST_VECTORS = [
    ("igmp-100", igmp_code_to_tenths, 100, 100),
    ("igmp-0x89", igmp_code_to_tenths, 0x89, 200),
    ("igmp-0xff", igmp_code_to_tenths, 0xFF, 31744),
    ("qqic-125", qqic_to_seconds, 125, 125),
    ("qqic-0x80", qqic_to_seconds, 0x80, 128),
    ("mld-10000", mld_code_to_ms, 10000, 10000),
    ("mld-0x8000", mld_code_to_ms, 0x8000, 32768),
    ("mld-0xffff", mld_code_to_ms, 0xFFFF, 8387584),
]


@pytest.mark.parametrize(
    ("decode", "code", "value"),
    [v[1:] for v in CHECKLIST_VECTORS],
    ids=[v[0] for v in CHECKLIST_VECTORS],
)
def test_checklist_time_code_vectors(decode, code: int, value: int) -> None:
    assert decode(code) == value


@pytest.mark.parametrize(
    ("code", "seconds"), [(100, 10.0), (0x89, 20.0), (0xFF, 3174.4), (5, 0.5), (0x80, 12.8)]
)
def test_igmpv3_query_max_resp_is_decoded_to_seconds(code: int, seconds: float) -> None:
    query = decode_igmp(bytes(IGMPv3(type=0x11, mrcode=code) / IGMPv3mq()))
    assert query.max_resp == seconds


@pytest.mark.parametrize(("code", "seconds"), [(125, 125.0), (0x80, 128.0), (0xFF, 31744.0)])
def test_query_qqic_is_decoded_to_seconds_in_igmp_and_mld(code: int, seconds: float) -> None:
    assert decode_igmp(bytes(IGMPv3(type=0x11) / IGMPv3mq(qqic=code))).qqi == seconds
    mld = Case("", Query(2, ANY6, 0), ICMPv6MLQuery2(QQIC=code), ALL_NODES)
    assert decode_mld(mld_wire(mld)).qqi == seconds


@pytest.mark.parametrize(
    ("code", "seconds"), [(10000, 10.0), (0x8000, 32.768), (0xFFFF, 8387.584), (1, 0.001)]
)
def test_mldv2_query_max_resp_is_decoded_to_seconds(code: int, seconds: float) -> None:
    query = Case("", Query(2, ANY6, 0), ICMPv6MLQuery2(mrd=code), ALL_NODES)
    assert decode_mld(mld_wire(query)).max_resp == seconds


def test_igmpv1_query_means_ten_seconds() -> None:
    assert decode_igmp(bytes(IGMP(type=0x11, mrcode=0))).max_resp == 10.0


def test_igmpv2_query_max_resp_is_linear_even_above_127() -> None:
    # 200 read as an IGMPv3 code would be 307.2 s; RFC 2236 §2.2 makes it 20 s.
    assert decode_igmp(bytes(IGMP(type=0x11, mrcode=200))).max_resp == 20.0


def test_mldv1_query_max_resp_is_linear_even_above_32767() -> None:
    case = Case("", Query(1, ANY6, 0), ICMPv6MLQuery(mrd=40000), ALL_NODES)
    assert decode_mld(mld_wire(case)).max_resp == 40.0


@pytest.mark.parametrize(
    ("decode", "encode", "largest"),
    [
        (igmp_code_to_tenths, tenths_to_igmp_code, 0xFF),
        (qqic_to_seconds, seconds_to_qqic, 0xFF),
        (mld_code_to_ms, ms_to_mld_code, 0xFFFF),
    ],
    ids=["igmp", "qqic", "mld"],
)
def test_every_code_survives_decoding_and_encoding(decode, encode, largest: int) -> None:
    assert [encode(decode(c)) for c in range(largest + 1)] == list(range(largest + 1))


def _assert_smallest_code_not_below(decode, encode, value: int) -> None:
    code = encode(value)
    assert decode(code) >= value
    assert code == 0 or decode(code - 1) < value


def test_igmp_encoder_picks_the_smallest_code_not_below_each_value() -> None:
    for tenths in range(0, 31745):
        _assert_smallest_code_not_below(igmp_code_to_tenths, tenths_to_igmp_code, tenths)


def test_mld_encoder_picks_the_smallest_code_not_below_sampled_values() -> None:
    boundaries = [
        v + d
        for c in (0x8000, 0x8FFF, 0x9000, 0xF000)
        for v in [mld_code_to_ms(c)]
        for d in (-1, 0, 1)
    ]
    for ms in [*range(0, 8387585, 977), *boundaries, 32767, 8387583, 8387584]:
        _assert_smallest_code_not_below(mld_code_to_ms, ms_to_mld_code, ms)


def test_times_beyond_the_largest_code_are_capped() -> None:
    assert tenths_to_igmp_code(31745) == 0xFF
    assert tenths_to_igmp_code(10**9) == 0xFF
    assert seconds_to_qqic(100000) == 0xFF
    assert ms_to_mld_code(8387585) == 0xFFFF


def test_fractions_round_up_so_a_short_time_never_becomes_zero() -> None:
    assert tenths_to_igmp_code(0.2) == 1
    assert ms_to_mld_code(0.5) == 1
    assert seconds_to_qqic(31.25) == 32  # QI/4 of the default timers
    assert encode_igmp(Query(3, G4, 0.01))[1] == 1
    assert decode_mld(encode_mld(Query(1, G6, 0.0004))).max_resp == 0.001


def test_float_noise_does_not_round_a_whole_unit_up() -> None:
    assert encode_igmp(Query(3, G4, 0.3))[1] == 3  # 0.3 * 10 is 3.0000000000000004
    assert decode_mld(encode_mld(Query(2, G6, 1.1))).max_resp == 1.1


def test_igmpv2_query_never_encodes_as_igmpv1() -> None:
    assert decode_igmp(encode_igmp(Query(2, G4, 0.0))) == Query(2, G4, 0.1)


def test_old_query_time_fields_are_capped_at_their_width() -> None:
    assert decode_igmp(encode_igmp(Query(2, G4, 60.0))).max_resp == 25.5
    assert decode_mld(encode_mld(Query(1, G6, 100.0))).max_resp == 65.535


def test_negative_times_and_codes_outside_the_field_are_refused() -> None:
    for bad in (
        lambda: tenths_to_igmp_code(-1),
        lambda: igmp_code_to_tenths(256),
        lambda: mld_code_to_ms(0x10000),
        lambda: qqic_to_seconds(-1),
    ):
        with pytest.raises(ValueError):
            bad()


# --- encoder input rules -----------------------------------------------------------------


def test_qrv_above_seven_is_sent_as_zero() -> None:
    assert decode_igmp(encode_igmp(Query(3, G4, 10.0, qrv=9))).qrv == 0
    assert decode_mld(encode_mld(Query(2, G6, 10.0, qrv=8))).qrv == 0


def test_old_queries_drop_fields_their_format_lacks() -> None:
    rich = Query(2, G4, 1.0, s_flag=True, qrv=2, qqi=125.0)
    assert encode_igmp(rich) == encode_igmp(Query(2, G4, 1.0))
    assert encode_mld(Query(1, G6, 1.0, qrv=2, qqi=125.0)) == encode_mld(Query(1, G6, 1.0))


@pytest.mark.parametrize(
    "encode, message",
    [
        (encode_igmp, Query(2, G4, 1.0, S4[:1])),
        (encode_igmp, Query(1, ANY4, 10.0, S4[:1])),
        (encode_mld, Query(1, G6, 1.0, S6[:1])),
        (encode_igmp, Query(4, G4, 1.0)),
        (encode_mld, Query(3, G6, 1.0)),
        (encode_igmp, OldReport(3, G4)),
        (encode_mld, OldReport(2, G6)),
        (encode_igmp, Leave(G6)),
        (encode_mld, Leave(G4)),
        (encode_igmp, Report((GroupRecord(RecordType.MODE_IS_INCLUDE, G4, S6[:1]),))),
        (encode_igmp, Report((GroupRecord(RecordType.MODE_IS_INCLUDE, G4, (), b"abc"),))),
    ],
    ids=[
        "v2-query-sources",
        "v1-query-sources",
        "mldv1-query-sources",
        "igmpv4-query",
        "mldv3-query",
        "igmpv3-old-report",
        "mldv2-old-report",
        "ipv6-in-igmp",
        "ipv4-in-mld",
        "mixed-family-record",
        "aux-not-whole-words",
    ],
)
def test_encoder_refuses_messages_the_wire_format_cannot_carry(encode, message) -> None:
    with pytest.raises(ValueError):
        encode(message)


# --- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize("decode", [decode_igmp, decode_mld], ids=["igmp", "mld"])
def test_empty_message_is_short(decode) -> None:
    with pytest.raises(PacketError) as err:
        decode(b"")
    assert reason(err) == "short"


@pytest.mark.parametrize("case", IGMP_CASES, ids=ids(IGMP_CASES))
def test_every_truncation_of_an_igmp_message_is_short(case: Case) -> None:
    wire = bytes(case.scapy)
    for end in range(1, len(wire)):
        if wire[0] == 0x11 and 8 <= end < 12:
            continue  # an older query, or between the formats (bad-length, tested below)
        cut = with_igmp_checksum(wire[:end]) if end >= 4 else wire[:end]
        with pytest.raises(PacketError) as err:
            decode_igmp(cut)
        assert reason(err) == "short", end


@pytest.mark.parametrize("case", MLD_CASES, ids=ids(MLD_CASES))
def test_every_truncation_of_an_mld_message_is_short(case: Case) -> None:
    wire = mld_wire(case)
    for end in range(1, len(wire)):
        if wire[0] == 130 and 24 <= end < 28:
            continue  # an MLDv1 query, or between the formats (bad-length, tested below)
        with pytest.raises(PacketError) as err:
            decode_mld(wire[:end])
        assert reason(err) == "short", end


@pytest.mark.parametrize("length", [9, 10, 11])
def test_igmp_query_between_v2_and_v3_length_is_rejected(length: int) -> None:
    wire = with_igmp_checksum(bytes(IGMP(type=0x11, mrcode=100, gaddr=str(G4))) + bytes(length - 8))
    with pytest.raises(PacketError) as err:
        decode_igmp(wire)
    assert reason(err) == "bad-length"


def test_query_of_nine_octets_is_rejected() -> None:
    wire = with_igmp_checksum(bytes(IGMP(type=0x11, mrcode=0)) + b"\0")
    with pytest.raises(PacketError) as err:
        decode_igmp(wire)
    assert reason(err) == "bad-length"


@pytest.mark.parametrize("length", [25, 26, 27])
def test_mld_query_between_v1_and_v2_length_is_rejected(length: int) -> None:
    wire = mld_wire(MLD_CASES[1])[:24] + bytes(length - 24)
    with pytest.raises(PacketError) as err:
        decode_mld(wire)
    assert reason(err) == "bad-length"


def test_igmpv3_query_with_fewer_sources_than_counted_is_short() -> None:
    wire = bytes(IGMPv3(type=0x11) / IGMPv3mq(gaddr=str(G4), srcaddrs=s(S4)))
    with pytest.raises(PacketError) as err:
        decode_igmp(with_igmp_checksum(wire[:-4]))
    assert reason(err) == "short"


def test_mldv2_query_with_fewer_sources_than_counted_is_short() -> None:
    wire = mld_wire(MLD_CASES[2])
    with pytest.raises(PacketError) as err:
        decode_mld(wire[:-16])
    assert reason(err) == "short"


@pytest.mark.parametrize("case", IGMP_CASES, ids=ids(IGMP_CASES))
def test_igmp_message_with_a_wrong_checksum_is_rejected(case: Case) -> None:
    wire = bytes(case.scapy)
    for flipped in (
        bytes([wire[0], wire[1], wire[2] ^ 0x01]) + wire[3:],
        wire[:-1] + bytes([wire[-1] ^ 0x80]),
    ):
        with pytest.raises(PacketError) as err:
            decode_igmp(flipped)
        assert reason(err) == "checksum"


def test_mld_message_is_not_checked_against_its_checksum() -> None:
    assert decode_mld(b"\x84\0\xde\xad\0\0\0\0" + G6.packed) == Leave(G6)


@pytest.mark.parametrize("kind", [0x00, 0x13, 0x14, 0x1E, 0x1F, 0x30, 0x31, 0xFF])
def test_unknown_igmp_type_is_rejected(kind: int) -> None:
    with pytest.raises(PacketError) as err:
        decode_igmp(with_igmp_checksum(bytes([kind]) + bytes(7)))
    assert reason(err) == "unknown-type"


@pytest.mark.parametrize("kind", [1, 128, 129, 133, 134, 135, 151, 0])
def test_unknown_icmpv6_type_is_rejected(kind: int) -> None:
    with pytest.raises(PacketError) as err:
        decode_mld(bytes([kind]) + bytes(23))
    assert reason(err) == "unknown-type"


def test_octets_after_an_igmpv3_query_are_ignored_but_checksummed() -> None:
    case = IGMP_CASES[3]
    longer = bytes(case.scapy) + b"\xaa\xbb\xcc\xdd"
    assert decode_igmp(with_igmp_checksum(longer)) == case.message
    with pytest.raises(PacketError):
        decode_igmp(bytes(case.scapy) + b"\xaa\xbb\xcc\xdd")


@pytest.mark.parametrize("case", IGMP_CASES[5:], ids=ids(IGMP_CASES[5:]))
def test_octets_after_an_igmp_report_or_leave_are_ignored(case: Case) -> None:
    assert decode_igmp(with_igmp_checksum(bytes(case.scapy) + b"\x01\x02\x03")) == case.message


@pytest.mark.parametrize("case", MLD_CASES[4:], ids=ids(MLD_CASES[4:]))
def test_octets_after_an_mld_report_or_done_are_ignored(case: Case) -> None:
    assert decode_mld(mld_wire(case) + b"\x01\x02\x03\x04") == case.message


def test_group_record_of_unknown_type_is_skipped() -> None:
    igmp = IGMPv3(type=0x22) / IGMPv3mr(
        records=[IGMPv3gr(rtype=7, maddr=str(G4), srcaddrs=s(S4)), IGMPv3gr(rtype=1, maddr=str(G4))]
    )
    assert decode_igmp(bytes(igmp)) == Report((GroupRecord(RecordType.MODE_IS_INCLUDE, G4),))
    mld = Case(
        "",
        Report(()),
        ICMPv6MLReport2(
            records=[
                ICMPv6MLDMultAddrRec(rtype=0, dst=str(G6)),
                ICMPv6MLDMultAddrRec(rtype=2, dst=str(G6), sources=s(S6[:1])),
            ]
        ),
    )
    assert decode_mld(mld_wire(mld)) == Report(
        (GroupRecord(RecordType.MODE_IS_EXCLUDE, G6, S6[:1]),)
    )


def _mutations(rng: random.Random, seeds: list[bytes], known_types: list[int]) -> bytes:
    pick = rng.random()
    if pick < 0.3:
        head = [rng.choice(known_types)] if rng.random() < 0.7 else []
        return bytes(head) + rng.randbytes(rng.randrange(0, 72))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 4)):
        op = rng.random()
        if op < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.7:
            del data[rng.randrange(len(data) + 1) :]
        else:
            data += rng.randbytes(rng.randrange(1, 20))
    return bytes(data)


@pytest.mark.parametrize(
    ("decode", "encode", "seeds", "types", "fix_checksum"),
    [
        (
            decode_igmp,
            encode_igmp,
            [bytes(c.scapy) for c in IGMP_CASES],
            [0x11, 0x12, 0x16, 0x17, 0x22],
            True,
        ),
        (decode_mld, encode_mld, [mld_wire(c) for c in MLD_CASES], [130, 131, 132, 143], False),
    ],
    ids=["igmp", "mld"],
)
def test_random_and_mutated_input_raises_only_packet_error(
    decode, encode, seeds, types, fix_checksum
) -> None:
    rng = random.Random(20240611)
    decoded = rejected = 0
    for _ in range(3000):
        data = _mutations(rng, seeds, types)
        if fix_checksum and len(data) >= 4 and rng.random() < 0.8:
            data = with_igmp_checksum(data)
        try:
            message = decode(data)
        except PacketError as err:
            assert err.reason in {"short", "checksum", "unknown-type", "bad-length"}
            rejected += 1
            continue
        decoded += 1
        # Whatever decodes must encode back to the same values.
        assert decode(encode(message)) == message
    assert decoded > 300 and rejected > 300  # the loop really reaches both paths


# --- IPv4 header ---------------------------------------------------------------------


def test_igmp_datagram_has_ttl_one_tos_c0_router_alert_and_protocol_two() -> None:
    wire = ipv4_igmp_packet(OldReport(2, G4), HOST4, G4)
    ip = IP(wire)
    assert (ip.version, ip.ihl, ip.tos, ip.ttl, ip.proto) == (4, 6, 0xC0, 1, 2)
    assert (ip.src, ip.dst, ip.len) == (str(HOST4), str(G4), len(wire))
    assert [type(o) for o in ip.options] == [IPOption_Router_Alert]
    assert ip.options[0].alert == 0
    assert scapy_checksum(wire[:24]) == 0
    assert bytes(ip[IGMP]) == encode_igmp(OldReport(2, G4))


def test_validate_ipv4_returns_source_destination_and_header_length() -> None:
    wire = ipv4_igmp_packet(Leave(G4), HOST4, IPv4Address("224.0.0.2"))
    assert validate_ipv4(wire) == (HOST4, IPv4Address("224.0.0.2"), 24)
    assert validate_ipv4(wire[:24]) == (HOST4, IPv4Address("224.0.0.2"), 24)
    src, dst, hlen = validate_ipv4(wire, require_router_alert=True)
    assert decode_igmp(wire[hlen:]) == Leave(G4)


def test_report_from_unspecified_source_is_accepted() -> None:
    report = Report((GroupRecord(RecordType.CHANGE_TO_EXCLUDE, G4),))
    wire = ipv4_igmp_packet(report, ANY4, IPv4Address("224.0.0.22"))
    assert validate_ipv4(wire)[0] == ANY4


def scapy_ip(**fields) -> bytes:
    fields = {"src": str(HOST4), "dst": str(G4), "ttl": 1, **fields}
    return bytes(IP(**fields) / IGMP(type=0x16, mrcode=0, gaddr=str(G4)))


@pytest.mark.parametrize("ttl", [0, 2, 64, 255])
def test_ttl_other_than_one_is_rejected(ttl: int) -> None:
    with pytest.raises(PacketError) as err:
        validate_ipv4(scapy_ip(ttl=ttl, options=[IPOption_Router_Alert()]))
    assert reason(err) == "bad-ttl"


def test_datagram_without_router_alert_is_accepted_by_default() -> None:
    assert validate_ipv4(scapy_ip()) == (HOST4, G4, 20)


def test_datagram_without_router_alert_is_rejected_when_router_alert_is_required() -> None:
    with pytest.raises(PacketError) as err:
        validate_ipv4(scapy_ip(), require_router_alert=True)
    assert reason(err) == "no-router-alert"


def test_router_alert_after_no_operation_options_is_found() -> None:
    wire = scapy_ip(options=[IPOption_NOP(), IPOption_NOP(), IPOption_Router_Alert()])
    assert validate_ipv4(wire, require_router_alert=True)[2] == 28


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (scapy_ip(proto=17), "bad-ipv4"),
        (b"\x60" + scapy_ip()[1:], "bad-ipv4"),
        (b"\x44" + scapy_ip()[1:], "bad-ipv4"),
        (scapy_ip(src="224.0.0.5"), "bad-ipv4"),
        (scapy_ip(src="255.255.255.255"), "bad-ipv4"),
        (scapy_ip(chksum=0x1234), "bad-ipv4"),
        (scapy_ip(len=12), "bad-ipv4"),
        (scapy_ip()[:19], "short"),
        (scapy_ip(options=[IPOption_Router_Alert()])[:22], "short"),
    ],
    ids=[
        "not-igmp",
        "version-6",
        "ihl-4",
        "multicast-source",
        "broadcast-source",
        "header-checksum",
        "total-below-header",
        "under-20-octets",
        "options-cut",
    ],
)
def test_malformed_ipv4_header_is_rejected(wire: bytes, why: str) -> None:
    with pytest.raises(PacketError) as err:
        validate_ipv4(wire)
    assert reason(err) == why


@pytest.mark.parametrize("option", [b"\x94\x00\x00\x00", b"\x94\x09\x00\x00", b"\x01\x01\x01\x07"])
def test_malformed_ip_option_is_rejected(option: bytes) -> None:
    header = bytearray(ipv4_igmp_packet(Leave(G4), HOST4, G4)[:24])
    header[20:24] = option
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", scapy_checksum(bytes(header)))
    with pytest.raises(PacketError) as err:
        validate_ipv4(bytes(header))
    assert reason(err) == "bad-ipv4"


def test_ipv4_fuzz_raises_only_packet_error() -> None:
    rng = random.Random(7)
    seed = ipv4_igmp_packet(Leave(G4), HOST4, G4)
    for _ in range(2000):
        data = bytearray(seed if rng.random() < 0.7 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(1, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(PacketError):
            validate_ipv4(bytes(data), require_router_alert=rng.random() < 0.5)


# --- MLD IPv6 metadata ---------------------------------------------------------------


@pytest.mark.parametrize("case", MLD_CASES, ids=ids(MLD_CASES))
def test_mld_from_link_local_with_hop_limit_one_and_router_alert_is_accepted(case: Case) -> None:
    validate_mld_meta(LINK_LOCAL, 1, True, case.message)


@pytest.mark.parametrize("hop_limit", [0, 2, 64, 255])
def test_mld_hop_limit_other_than_one_is_rejected(hop_limit: int) -> None:
    with pytest.raises(PacketError) as err:
        validate_mld_meta(LINK_LOCAL, hop_limit, True, Query(2, ANY6, 10.0))
    assert reason(err) == "hoplimit"


def test_mld_without_router_alert_is_rejected() -> None:
    with pytest.raises(PacketError) as err:
        validate_mld_meta(LINK_LOCAL, 1, False, Report(()))
    assert reason(err) == "no-router-alert"


@pytest.mark.parametrize("case", MLD_CASES, ids=ids(MLD_CASES))
def test_mld_from_a_global_source_is_rejected(case: Case) -> None:
    with pytest.raises(PacketError) as err:
        validate_mld_meta(S6[0], 1, True, case.message)
    assert reason(err) == "not-link-local"


def test_mldv2_report_from_unspecified_source_is_ignored_by_routers() -> None:
    report = Report((GroupRecord(RecordType.CHANGE_TO_EXCLUDE, G6),))
    with pytest.raises(PacketError) as err:
        validate_mld_meta(ANY6, 1, True, report)
    assert reason(err) == "unspecified-source"


def test_mldv1_report_from_unspecified_source_is_rejected() -> None:
    with pytest.raises(PacketError) as err:
        validate_mld_meta(ANY6, 1, True, OldReport(1, G6))
    assert reason(err) == "unspecified-source"


# --- oversized reports ---------------------------------------------------------------

IGMP_MTU_PAYLOAD = 1500 - 24
MLD_MTU_PAYLOAD = 1500 - 48


def v4_sources(n: int, third: int = 0) -> tuple[IPv4Address, ...]:
    return tuple(IPv4Address(0x0A000000 + (third << 16) + i) for i in range(n))


def test_records_that_fit_go_in_one_report() -> None:
    records = [
        GroupRecord(RecordType.MODE_IS_INCLUDE, G4, S4),
        GroupRecord(RecordType.MODE_IS_EXCLUDE, IPv4Address("239.9.9.9")),
    ]
    assert split_report(records, IGMP_MTU_PAYLOAD) == [Report(tuple(records))]


def test_empty_record_list_gives_no_report() -> None:
    assert split_report([], IGMP_MTU_PAYLOAD) == []


def test_records_beyond_the_size_limit_are_spread_over_reports_in_order() -> None:
    records = [
        GroupRecord(RecordType.MODE_IS_INCLUDE, IPv4Address(f"239.0.0.{i}"), v4_sources(10, i))
        for i in range(10)
    ]
    # Each record is 4 + 4 + 10 * 4 = 48 octets: 8 + 4 * 48 = 200 holds exactly four.
    for limit, counts in ((200, [4, 4, 2]), (199, [3, 3, 3, 1])):
        reports = split_report(records, limit)
        assert [len(r.records) for r in reports] == counts
        assert [rec for r in reports for rec in r.records] == records
        assert all(len(encode_igmp(r)) <= limit for r in reports)


@pytest.mark.parametrize(
    "rtype",
    [
        RecordType.ALLOW_NEW_SOURCES,
        RecordType.BLOCK_OLD_SOURCES,
        RecordType.MODE_IS_INCLUDE,
        RecordType.CHANGE_TO_INCLUDE,
    ],
)
def test_oversized_record_is_split_into_disjoint_source_subsets(rtype: RecordType) -> None:
    sources = v4_sources(800)
    before = GroupRecord(RecordType.MODE_IS_INCLUDE, IPv4Address("239.0.0.1"), S4)
    big = GroupRecord(rtype, G4, sources)
    reports = split_report([before, big], IGMP_MTU_PAYLOAD)
    pieces = [rec for r in reports for rec in r.records if rec.group == G4]
    assert [len(p.sources) for p in pieces] == [365, 365, 70]  # (1476 - 8 - 8) // 4 = 365
    assert all(p.rtype == rtype for p in pieces)
    assert tuple(src for p in pieces for src in p.sources) == sources
    assert all(sum(rec.group == G4 for rec in r.records) <= 1 for r in reports)
    assert reports[0].records[0] == before
    assert all(len(encode_igmp(r)) <= IGMP_MTU_PAYLOAD for r in reports)


@pytest.mark.parametrize("rtype", [RecordType.MODE_IS_EXCLUDE, RecordType.CHANGE_TO_EXCLUDE])
def test_oversized_exclude_record_is_truncated_to_the_sources_that_fit(rtype: RecordType) -> None:
    sources = v4_sources(800)
    reports = split_report([GroupRecord(rtype, G4, sources)], IGMP_MTU_PAYLOAD)
    assert reports == [Report((GroupRecord(rtype, G4, sources[:365]),))]
    assert len(encode_igmp(reports[0])) == IGMP_MTU_PAYLOAD


def test_mld_records_are_split_by_ipv6_address_size() -> None:
    sources = tuple(IPv6Address(int(S6[0]) + i) for i in range(200))
    reports = split_report(
        [GroupRecord(RecordType.ALLOW_NEW_SOURCES, G6, sources)], MLD_MTU_PAYLOAD
    )
    assert [len(r.records[0].sources) for r in reports] == [89, 89, 22]  # (1452-8-20) // 16
    assert all(len(encode_mld(r)) <= MLD_MTU_PAYLOAD for r in reports)


def test_size_limit_below_one_record_is_refused() -> None:
    with pytest.raises(ValueError):
        split_report([GroupRecord(RecordType.MODE_IS_EXCLUDE, G4, S4)], 16)


def test_records_of_both_families_are_refused() -> None:
    with pytest.raises(ValueError):
        split_report(
            [
                GroupRecord(RecordType.MODE_IS_EXCLUDE, G4),
                GroupRecord(RecordType.MODE_IS_EXCLUDE, G6),
            ],
            IGMP_MTU_PAYLOAD,
        )
