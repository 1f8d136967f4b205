"""PBU/PBA codec of pmip.mh against scapy (the independent oracle) and by hand;
also the LMA's PBU checks and binding-cache decisions, run against a fake routing table.

scapy 2.5 knows the Binding Update/Ack and the MN Identifier option, and NEMO's Mobile
Network Prefix option, whose layout and 8n+4 alignment the Home Network Prefix option
shares (RFC 5213 §8.3), so that class with otype 22 is the HNP oracle. It lacks the
Handoff Indicator and Access Technology Type options (no alignment requirement: generic
unknown options model them) and the Timestamp option (8n+2), which is checked by hand.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address, IPv6Network

import pytest

from pmip.lma import LmaAgent
from pmip.mh import (
    PBA,
    PBU,
    BaFlags,
    BuFlags,
    Handoff,
    MhError,
    Status,
    decode_mh,
    encode_pba,
    encode_pbu,
    mh_checksum,
    timestamp_from_ns,
    timestamp_to_ns,
)
from proxy.events import EventLog

scapy_inet6 = pytest.importorskip("scapy.layers.inet6")

MAG = IPv6Address("2001:db8:a1::2")
LMA = IPv6Address("2001:db8:ff::1")
HNP = IPv6Network("2001:db8:100::/64")


def _scapy_options(mn_id: str, handoff: int, att: int) -> list:
    return [
        scapy_inet6.MIP6OptMNID(id=mn_id.encode()),
        scapy_inet6.MIP6OptMobNetPrefix(otype=22, plen=HNP.prefixlen, prefix=str(HNP[0])),
        scapy_inet6.MIP6OptUnknown(otype=23, odata=bytes([0, handoff])),
        scapy_inet6.MIP6OptUnknown(otype=24, odata=bytes([0, att])),
    ]


def _scapy_mh(mh, src: IPv6Address, dst: IPv6Address) -> bytes:
    """The Mobility Header scapy builds (checksum included) under an IPv6 header."""
    return bytes(scapy_inet6.IPv6(src=str(src), dst=str(dst)) / mh)[40:]


# MN identifiers of 1..8 bytes put the HNP option at every offset mod 8, so every
# padding length (none, Pad1, PadN of 2..7) is exercised.
@pytest.mark.parametrize("id_len", range(1, 9))
def test_pbu_bytes_equal_scapy_for_every_padding_before_the_hnp(id_len: int) -> None:
    mn_id = "m" * id_len
    pbu = PBU(sequence=4242, lifetime_s=3600, mn_id=mn_id, hnps=(HNP,), handoff=1, access_tech=3)
    oracle = scapy_inet6.MIP6MH_BU(
        seq=4242, flags="AP", mhtime=900, options=_scapy_options(mn_id, 1, 3)
    )
    assert encode_pbu(pbu, MAG, LMA) == _scapy_mh(oracle, MAG, LMA)


def test_pba_bytes_equal_scapy() -> None:
    pba = PBA(
        sequence=7,
        status=0,
        lifetime_s=3600,
        mn_id="mn1@pmip.example",
        hnps=(HNP,),
        handoff=Handoff.BETWEEN_MAGS,
        access_tech=3,
    )
    oracle = scapy_inet6.MIP6MH_BA(
        status=0,
        flags="P",
        seq=7,
        mhtime=900,
        options=_scapy_options("mn1@pmip.example", 3, 3),
    )
    assert encode_pba(pba, LMA, MAG) == _scapy_mh(oracle, LMA, MAG)


def test_scapy_dissects_our_pbu_with_a_p_set_and_h_clear() -> None:
    pbu = PBU(sequence=1, lifetime_s=40, mn_id="mn", hnps=(HNP,), handoff=4, access_tech=3)
    packet = scapy_inet6.IPv6(
        bytes(scapy_inet6.IPv6(src=str(MAG), dst=str(LMA), nh=135) / encode_pbu(pbu, MAG, LMA))
    )
    bu = packet[scapy_inet6.MIP6MH_BU]
    assert (bu.nh, bu.mhtype, bu.seq, bu.mhtime) == (59, 5, 1, 10)
    assert bu.flags.A and bu.flags.P and not bu.flags.H
    assert bu[scapy_inet6.MIP6OptMNID].id == b"mn"
    # The kernel fills the checksum in on raw MH sockets; ours must agree with scapy's.
    rebuilt = scapy_inet6.IPv6(src=str(MAG), dst=str(LMA)) / bu.copy()
    rebuilt[scapy_inet6.MIP6MH_BU].cksum = None
    assert bytes(rebuilt)[40:] == bytes(packet)[40:]


def test_timestamp_and_alignment_by_hand() -> None:
    ts = timestamp_from_ns(1_700_000_000_500_000_000)
    pbu = PBU(
        sequence=0x0102,
        lifetime_s=8,
        mn_id="a",
        hnps=(HNP,),
        handoff=3,
        access_tech=4,
        timestamp=ts,
    )
    expected = (
        bytes([59, 7, 5, 0, 0, 0])  # payload proto, 64 bytes = (7 + 1) * 8, PBU, checksum 0
        + bytes([0x01, 0x02, 0x82, 0x00, 0x00, 0x02])  # seq, flags A|P, lifetime 2 units
        + bytes([8, 2, 1])
        + b"a"  # MN-ID at 12..15
        + bytes([1, 2, 0, 0])  # PadN: HNP must start at 8n+4 -> 20
        + bytes([22, 18, 0, 64])
        + HNP.network_address.packed  # HNP at 20..39
        + bytes([23, 2, 0, 3])  # Handoff Indicator: between MAGs
        + bytes([24, 2, 0, 4])  # Access Technology Type: IEEE 802.11a/b/g
        + bytes([1, 0])  # PadN: Timestamp must start at 8n+2 -> 50
        + bytes([27, 8])
        + struct.pack("!Q", (1_700_000_000 << 16) | 0x8000)
        + bytes([1, 2, 0, 0])  # PadN to a multiple of 8 octets
    )
    assert encode_pbu(pbu) == expected
    assert decode_mh(expected) == pbu


def test_timestamp_keeps_seconds_and_1_65536_fractions() -> None:
    t_ns = 1_700_000_000_123_456_789
    back = timestamp_to_ns(timestamp_from_ns(t_ns))
    assert 0 <= t_ns - back < 1_000_000_000 / 65536
    assert timestamp_from_ns(t_ns) >> 16 == 1_700_000_000


def test_lifetime_travels_in_4_second_units() -> None:
    mh = encode_pbu(PBU(sequence=1, lifetime_s=3600, mn_id="m", hnps=(HNP,)))
    assert struct.unpack_from("!H", mh, 10)[0] == 900
    assert decode_mh(mh).lifetime_s == 3600
    for bad in (3601, 0x10000 * 4, -4):
        with pytest.raises(ValueError, match="multiple of 4"):
            encode_pbu(PBU(sequence=1, lifetime_s=bad, mn_id="m"))


def test_round_trip_keeps_every_field() -> None:
    pbu = PBU(
        sequence=65535,
        lifetime_s=0,
        mn_id="mn7@pmip.example",
        hnps=(HNP, IPv6Network("2001:db8:200::/56")),
        handoff=Handoff.UNKNOWN,
        access_tech=8,
        timestamp=timestamp_from_ns(1_800_000_000_000_000_000),
        flags=BuFlags.A | BuFlags.H | BuFlags.P,
    )
    assert decode_mh(encode_pbu(pbu, MAG, LMA), MAG, LMA) == pbu
    pba = PBA(sequence=3, status=157, lifetime_s=0, flags=BaFlags.P | BaFlags.K)
    decoded = decode_mh(encode_pba(pba, LMA, MAG), LMA, MAG)
    assert decoded == pba and not decoded.accepted


def _valid() -> bytes:
    return encode_pbu(
        PBU(sequence=1, lifetime_s=4, mn_id="mn", hnps=(HNP,), handoff=1, access_tech=3)
    )


def _with_option(option: bytes) -> bytes:
    """A PBU whose only option is ``option``, padded with PadN to a multiple of 8."""
    body = bytes([0, 1, 0x82, 0, 0, 1]) + option
    pad = -(6 + len(body)) % 8
    body += b"" if pad == 0 else bytes([0]) if pad == 1 else bytes([1, pad - 2]) + bytes(pad - 2)
    return bytes([59, (6 + len(body)) // 8 - 1, 5, 0, 0, 0]) + body


def test_reserved_bits_are_ignored_and_unknown_options_skipped() -> None:
    options = bytes([0]) + bytes([99, 3, 1, 2, 3]) + bytes([8, 2, 1, 109, 23, 2, 0, 1])
    mh = bytearray(_with_option(options + bytes([24, 2, 0, 3])))
    mh[9] |= 0x1F  # reserved flag bits
    pbu = decode_mh(bytes(mh))
    assert pbu.flags == BuFlags.A | BuFlags.P
    assert (pbu.mn_id, pbu.handoff, pbu.access_tech) == ("m", 1, 3)


def test_checksum_covers_the_pseudo_header() -> None:
    mh = encode_pbu(PBU(sequence=1, lifetime_s=4, mn_id="m", hnps=(HNP,)), MAG, LMA)
    assert mh_checksum(MAG, LMA, mh) == 0
    with pytest.raises(MhError, match="checksum") as info:
        decode_mh(mh, MAG, IPv6Address("2001:db8:ff::2"))
    assert info.value.reason == "checksum"
    corrupted = mh[:20] + bytes([mh[20] ^ 1]) + mh[21:]
    with pytest.raises(MhError, match="checksum"):
        decode_mh(corrupted, MAG, LMA)


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (_valid()[:8], "short", "8 bytes"),
        (_valid() + bytes(8), "length", "header length"),
        (bytes([6]) + _valid()[1:], "proto", "payload proto is 6"),
        (_valid()[:2] + bytes([7]) + _valid()[3:], "unknown-type", "type 7"),
        (_with_option(bytes([23, 9, 0, 1])), "option", "runs past the end"),
        (_with_option(bytes([23, 3, 0, 1, 0])), "option", "HANDOFF_INDICATOR option has length 3"),
        (_with_option(bytes([22, 18, 0, 129]) + bytes(16)), "option", "prefix length 129"),
        (_with_option(bytes([8, 2, 2, 65])), "option", "subtype 2"),
        (_with_option(bytes([8, 3, 1, 0xFF, 0xFE])), "option", "UTF-8"),
        (_with_option(bytes([23, 2, 0, 1, 23, 2, 0, 3])), "option", "appears twice"),
    ],
    ids=["short", "length", "proto", "type", "overrun", "hi-len", "plen", "subtype", "utf8", "dup"],
)
def test_malformed_input_raises_a_clear_error(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(MhError, match=words) as info:
        decode_mh(data)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_encoder_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="sequence 65536"):
        encode_pbu(PBU(sequence=65536, lifetime_s=4))
    with pytest.raises(ValueError, match="MN identifier"):
        encode_pbu(PBU(sequence=1, lifetime_s=4, mn_id="x" * 255))
    with pytest.raises(ValueError, match="handoff_indicator 256"):
        encode_pbu(PBU(sequence=1, lifetime_s=4, handoff=256))


# --------------------------------------------------------------------------- LMA decisions

MAG1 = IPv6Address("2001:db8:a1::2")
MAG2 = IPv6Address("2001:db8:a2::2")
MN = "mn1@pmip.example"


class FakeRoutes:
    """Stands in for ``ip -6 route``: prefix -> (via, dev)."""

    def __init__(self) -> None:
        self.table: dict[IPv6Network, tuple[IPv6Address | None, str]] = {}

    def replace(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        self.table[prefix] = (via, dev)

    def delete(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        assert self.table.pop(prefix) == (via, dev)


@pytest.fixture
def lma() -> LmaAgent:
    return LmaAgent(
        LMA, tunnel_ifs=["tun1", "tun2"], events=EventLog(None, "lma"), routes=FakeRoutes()
    )


def _pbu(at_s: float = 1.0, **changes: object) -> PBU:
    fields: dict = dict(
        sequence=1,
        lifetime_s=3600,
        mn_id=MN,
        hnps=(HNP,),
        handoff=1,
        access_tech=3,
        timestamp=timestamp_from_ns(int((1_700_000_000 + at_s) * 1e9)),
    )
    fields.update(changes)
    return PBU(**fields)


def test_lma_binds_the_hnp_to_the_first_mag_and_moves_it_to_the_second(lma: LmaAgent) -> None:
    first = lma.handle_pbu(_pbu(1), MAG1, "tun1")
    assert first is not None and first.accepted and first.lifetime_s == 3600
    assert lma.routes.table == {HNP: (MAG1, "tun1")}
    second = lma.handle_pbu(_pbu(2, handoff=3), MAG2, "tun2")
    assert second is not None and second.accepted
    assert lma.routes.table == {HNP: (MAG2, "tun2")}
    assert lma.bindings[MN].proxy_coa == MAG2
    assert [row[1] for row in lma.events.rows] == [
        "pbu_received",
        "bce_updated",
        "route_added",
        "pbu_received",
        "bce_updated",
        "route_moved",
    ]


def test_lma_routes_into_an_ip6ip6_tunnel_without_a_gateway() -> None:
    """A Proxy-CoA pinned to a tunnel device: the PBU came on the transport link (eth0), the
    HNP route points into the tunnel with no next hop, and moves to the other MAG's tunnel."""
    lma = LmaAgent(
        LMA,
        coa_tunnels={MAG1: "t-mag1", MAG2: "t-mag2"},
        events=EventLog(None, "lma"),
        routes=FakeRoutes(),
    )
    assert lma.handle_pbu(_pbu(1), MAG1, "eth0").accepted
    assert lma.routes.table == {HNP: (None, "t-mag1")}
    assert lma.handle_pbu(_pbu(2, handoff=3), MAG2, "eth0").accepted
    assert lma.routes.table == {HNP: (None, "t-mag2")}
    lma._delete(MN, "test")  # FakeRoutes.delete asserts the same (via, dev) as installed
    assert lma.routes.table == {}


@pytest.mark.parametrize(
    ("changes", "ifname", "status"),
    [
        ({"flags": BuFlags.A}, "tun1", Status.PROXY_REG_NOT_ENABLED),
        ({"mn_id": None}, "tun1", Status.MISSING_MN_IDENTIFIER_OPTION),
        ({}, "eth0", Status.MAG_NOT_AUTHORIZED_FOR_PROXY_REG),
        ({"hnps": ()}, "tun1", Status.MISSING_HOME_NETWORK_PREFIX_OPTION),
        ({"handoff": None}, "tun1", Status.MISSING_HANDOFF_INDICATOR_OPTION),
        ({"access_tech": None}, "tun1", Status.MISSING_ACCESS_TECH_TYPE_OPTION),
        ({"lifetime_s": 0}, "tun1", Status.NOT_LMA_FOR_THIS_MOBILE_NODE),
    ],
    ids=["no-P", "no-mnid", "not-a-tunnel", "no-hnp", "no-hi", "no-att", "dereg-unknown"],
)
def test_lma_refuses_an_invalid_pbu_with_the_rfc5213_status(
    lma: LmaAgent, changes: dict, ifname: str, status: int
) -> None:
    reply = lma.handle_pbu(_pbu(**changes), MAG1, ifname)
    assert reply is not None and reply.status == status and reply.lifetime_s == 0
    assert lma.bindings == {} and lma.routes.table == {}


def test_lma_refuses_stale_timestamps_foreign_prefixes_and_changed_prefix_sets(
    lma: LmaAgent,
) -> None:
    lma.handle_pbu(_pbu(5), MAG1, "tun1")
    cases = [
        (_pbu(4), Status.TIMESTAMP_LOWER_THAN_PREV_ACCEPTED),
        (_pbu(6, mn_id="mn2@pmip.example"), Status.NOT_AUTHORIZED_FOR_HOME_NETWORK_PREFIX),
        (_pbu(6, hnps=(IPv6Network("2001:db8:101::/64"),)), Status.BCE_PBU_PREFIX_SET_DO_NOT_MATCH),
    ]
    for pbu, status in cases:
        reply = lma.handle_pbu(pbu, MAG2, "tun2")
        assert reply is not None and reply.status == status
    assert lma.routes.table == {HNP: (MAG1, "tun1")}


def test_lma_orders_pbus_of_one_mag_by_sequence_without_timestamps(lma: LmaAgent) -> None:
    lma.handle_pbu(_pbu(sequence=100, timestamp=None), MAG1, "tun1")
    reply = lma.handle_pbu(_pbu(sequence=99, timestamp=None), MAG1, "tun1")
    assert reply is not None and reply.status == Status.SEQUENCE_OUT_OF_WINDOW
    assert reply.sequence == 100  # the last accepted one, as RFC 6275 §9.5.1 asks
    wrapped = lma.handle_pbu(_pbu(sequence=100 + 0x7FFF, timestamp=None), MAG1, "tun1")
    assert wrapped is not None and wrapped.accepted


def test_lma_ignores_deregistration_from_a_mag_that_no_longer_serves_the_mn(
    lma: LmaAgent,
) -> None:
    lma.handle_pbu(_pbu(1), MAG1, "tun1")
    lma.handle_pbu(_pbu(2, handoff=3), MAG2, "tun2")
    assert lma.handle_pbu(_pbu(3, lifetime_s=0), MAG1, "tun1") is None
    assert lma.events.rows[-1][1] == "pbu_ignored"
    assert not lma.bindings[MN].deregistering
    assert lma.routes.table == {HNP: (MAG2, "tun2")}


def test_lma_keeps_a_deregistered_binding_until_its_timer_fires(lma: LmaAgent) -> None:
    lma.handle_pbu(_pbu(1), MAG1, "tun1")
    reply = lma.handle_pbu(_pbu(2, lifetime_s=0), MAG1, "tun1")
    assert reply is not None and reply.accepted and reply.lifetime_s == 0
    assert lma.bindings[MN].deregistering
    assert lma.routes.table == {HNP: (MAG1, "tun1")}
    back = lma.handle_pbu(_pbu(3, handoff=3), MAG2, "tun2")
    assert back is not None and back.accepted and not lma.bindings[MN].deregistering
    assert lma.routes.table == {HNP: (MAG2, "tun2")}


def test_event_log_shares_one_file_and_one_header_between_writers(tmp_path) -> None:
    path = tmp_path / "events.csv"
    first, second = EventLog(path, "lma"), EventLog(path, "mag1")
    first.emit("pbu_received", "mn=a, b", t_ns=2)
    second.emit("pbu_sent", t_ns=1)
    first.close()
    second.close()
    assert path.read_text().splitlines() == [
        "t_ns,event,node,detail",
        '2,pbu_received,lma,"mn=a, b"',
        "1,pbu_sent,mag1,",
    ]
