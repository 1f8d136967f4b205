"""MLDv2 and IGMPv3 report frames of many listeners, as hosts joining many groups send them.

Reports carry CHANGE_TO_EXCLUDE({}) records (ASM joins), ``V6_PER_PACKET`` records per
MLDv2 packet and ``V4_PER_PACKET`` per IGMPv3 packet. scapy builds one template per block of
groups (it is imported only then: the other benchmarks do without it); each listener's
frames are the templates stamped with its own MAC and source address (``fe80::100:<j>``,
``198.19.<d>.<10+j>``) and checksum.
"""

from __future__ import annotations

import logging
import socket
import struct

V6_PER_PACKET = 64
V4_PER_PACKET = 128


def _csum_words(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class ReportFactory:
    """Report frames for listeners on one link: scapy templates, per-listener stamping."""

    def __init__(self, family: int, groups: list[str]) -> None:
        logging.getLogger("scapy").setLevel(logging.ERROR)
        self.family = family
        per = V6_PER_PACKET if family == 6 else V4_PER_PACKET
        chunks = [groups[i : i + per] for i in range(0, len(groups), per)]
        self.templates = [self._template(c) for c in chunks]
        self.records_per_packet = [len(c) for c in chunks]

    def _template(self, groups: list[str]) -> tuple[bytes, int]:
        if self.family == 6:
            from scapy.layers.inet6 import (
                ICMPv6MLDMultAddrRec,
                ICMPv6MLReport2,
                IPv6,
                IPv6ExtHdrHopByHop,
                RouterAlert,
            )
            from scapy.layers.l2 import Ether

            recs = [ICMPv6MLDMultAddrRec(rtype=4, dst=g) for g in groups]
            pkt = (
                Ether(src="02:00:00:00:00:01", dst="33:33:00:00:00:16")
                / IPv6(src="fe80::1", dst="ff02::16", hlim=1)
                / IPv6ExtHdrHopByHop(options=[RouterAlert()])
                / ICMPv6MLReport2(records=recs)
            )
            raw = bytearray(bytes(pkt))
            raw[64:66] = b"\0\0"
            icmp = bytes(raw[62:])
            # Pseudo-header without the source: destination, length, next header 58.
            partial = _csum_words(bytes(raw[38:54])) + len(icmp) + 58 + _csum_words(icmp)
            return bytes(raw), partial
        from scapy.contrib.igmpv3 import IGMPv3, IGMPv3gr, IGMPv3mr
        from scapy.layers.inet import IP, IPOption_Router_Alert
        from scapy.layers.l2 import Ether

        recs = [IGMPv3gr(rtype=4, maddr=g) for g in groups]
        pkt = (
            Ether(src="02:00:00:00:00:01", dst="01:00:5e:00:00:16")
            / IP(
                src="198.19.1.10",
                dst="224.0.0.22",
                ttl=1,
                tos=0xC0,
                options=[IPOption_Router_Alert()],
            )
            / IGMPv3(type=0x22)
            / IGMPv3mr(records=recs)
        )
        return bytes(pkt), 0

    def frames(self, downstream: int, listener: int) -> list[bytes]:
        mac = bytes([2, 0, 0, 1, downstream & 255, listener & 255])
        out = []
        if self.family == 6:
            src = socket.inet_pton(socket.AF_INET6, f"fe80::100:{listener:x}")
            for raw, partial in self.templates:
                f = bytearray(raw)
                f[6:12] = mac
                f[22:38] = src
                f[64:66] = struct.pack("!H", _fold(partial + _csum_words(src)))
                out.append(bytes(f))
        else:
            src = socket.inet_aton(f"198.19.{downstream}.{10 + listener}")
            for raw, _ in self.templates:
                f = bytearray(raw)
                f[6:12] = mac
                f[26:30] = src
                f[24:26] = b"\0\0"
                f[24:26] = struct.pack("!H", _fold(_csum_words(bytes(f[14:38]))))
                out.append(bytes(f))
        return out
