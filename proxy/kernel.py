"""Kernel multicast routing: MRT/MRT6 sockets, vifs/mifs, MFC entries, upcalls, counters, mrules.

One ``MrouteTable`` is one kernel multicast routing table (``MRT_TABLE``/``MRT6_TABLE``)
owned by one proxy instance. The kernel does the forwarding; this module only tells it
what to do and reads back what it reports (upcalls and counters).
"""

from __future__ import annotations

import ctypes
import enum
import fcntl
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from proxy.messages import Address

# linux/mroute.h and linux/mroute6.h share numbering (MRT_BASE = MRT6_BASE = 200).
MRT_INIT, MRT_DONE, MRT_ADD_VIF, MRT_DEL_VIF, MRT_ADD_MFC, MRT_DEL_MFC = range(200, 206)
MRT_ASSERT, MRT_TABLE = 207, 209
SIOCGETSGCNT = 0x89E0 + 1  # SIOCPROTOPRIVATE + 1, same value for IPv4 and IPv6
VIFF_USE_IFINDEX = 0x8
MAXVIFS = 32  # per table, IPv4 and IPv6 alike
ICMP6_FILTER = 1
IPV6_RECVPKTINFO = 49
IPV6_RECVHOPLIMIT = 51
IPV6_RECVHOPOPTS = 53
IPV6_HOPOPTS = 54
IP_PKTINFO = 8
IP_RECVOPTS = 6
IP_RECVTTL = 12
MLD_TYPES = (130, 131, 132, 143)

_LIBC = ctypes.CDLL(None, use_errno=True)


class KernelError(RuntimeError):
    """A kernel feature the proxy needs is missing or refused the request."""


class UpcallType(enum.IntEnum):
    NOCACHE = 1
    WRONGVIF = 2
    WHOLEPKT = 3


@dataclass(frozen=True)
class Upcall:
    kind: UpcallType
    vif: int
    source: Address
    group: Address


@dataclass
class MfcEntry:
    source: Address
    group: Address
    parent: int
    oifs: frozenset[int] = frozenset()
    packets: int = 0
    bytes: int = 0
    wrong_if: int = 0
    idle_polls: int = 0


@dataclass
class Vif:
    index: int
    ifname: str
    ifindex: int


def ifindex(name: str) -> int:
    """Interface index of ``name`` in this namespace (0 when it does not exist)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _sockaddr_in6(addr: IPv6Address) -> bytes:
    return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, addr.packed, 0)


def icmp6_filter_pass(types: tuple[int, ...]) -> bytes:
    """struct icmp6_filter that passes only ``types`` (a set bit blocks in Linux)."""
    words = [0xFFFFFFFF] * 8
    for t in types:
        words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


@dataclass
class MrouteTable:
    """One kernel multicast routing table and the socket that owns it."""

    family: int
    table: int
    sock: socket.socket = field(init=False)
    vifs: dict[str, Vif] = field(default_factory=dict)
    mfc: dict[tuple[Address, Address], MfcEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family == 6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self._level = socket.IPPROTO_IPV6
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
            self._level = socket.IPPROTO_IP
        try:
            self.sock.setsockopt(self._level, MRT_TABLE, self.table)
            self.sock.setsockopt(self._level, MRT_INIT, 1)
            self.sock.setsockopt(self._level, MRT_ASSERT, 1)
        except OSError as exc:
            self.sock.close()
            what = "IPv6" if self.family == 6 else "IPv4"
            raise KernelError(
                f"kernel refused {what} multicast routing table {self.table}: {exc.strerror} "
                "(needs CONFIG_IP(V6)_MROUTE_MULTIPLE_TABLES, root, and no other daemon "
                "owning this table)"
            ) from exc
        self.sock.setblocking(False)
        if self.family == 6:
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, icmp6_filter_pass(MLD_TYPES))
            for opt in (IPV6_RECVPKTINFO, IPV6_RECVHOPLIMIT, IPV6_RECVHOPOPTS):
                self.sock.setsockopt(socket.IPPROTO_IPV6, opt, 1)
        else:
            for opt in (IP_PKTINFO, IP_RECVOPTS, IP_RECVTTL):
                self.sock.setsockopt(socket.IPPROTO_IP, opt, 1)

    # --- vifs -------------------------------------------------------------------------

    def free_vif_index(self) -> int:
        used = {v.index for v in self.vifs.values()}
        for i in range(MAXVIFS):
            if i not in used:
                return i
        raise KernelError(f"table {self.table}: all {MAXVIFS} vifs are in use")

    def add_vif(self, ifname: str) -> Vif:
        """Add ``ifname`` as a vif/mif (idempotent)."""
        idx = ifindex(ifname)
        old = self.vifs.get(ifname)
        if old and old.ifindex == idx:
            return old
        if old:
            self.del_vif(ifname)
        if not idx:
            raise KernelError(f"interface {ifname} does not exist")
        vif = Vif(self.free_vif_index(), ifname, idx)
        if self.family == 6:
            data = struct.pack("=HBBHxxI", vif.index, 0, 1, idx, 0)
        else:
            data = struct.pack("=HBBIiI", vif.index, VIFF_USE_IFINDEX, 1, 0, idx, 0)
        try:
            self.sock.setsockopt(self._level, MRT_ADD_VIF, data)
        except OSError as exc:
            raise KernelError(f"adding vif for {ifname}: {exc.strerror}") from exc
        self.vifs[ifname] = vif
        return vif

    def del_vif(self, ifname: str) -> None:
        vif = self.vifs.pop(ifname, None)
        if vif is None:
            return
        for key, entry in list(self.mfc.items()):
            if entry.parent == vif.index:
                self.del_mfc(*key)
            elif vif.index in entry.oifs:
                self.set_mfc(entry.source, entry.group, entry.parent, entry.oifs - {vif.index})
        if self.family == 6:
            data = struct.pack("=HBBHxxI", vif.index, 0, 1, vif.ifindex, 0)
        else:
            data = struct.pack("=HBBIiI", vif.index, VIFF_USE_IFINDEX, 1, 0, vif.ifindex, 0)
        try:
            self.sock.setsockopt(self._level, MRT_DEL_VIF, data)
        except OSError:
            pass  # the kernel already dropped it with the device

    def vif_by_index(self, index: int) -> Vif | None:
        return next((v for v in self.vifs.values() if v.index == index), None)

    def vif_by_ifindex(self, idx: int) -> Vif | None:
        return next((v for v in self.vifs.values() if v.ifindex == idx), None)

    # --- MFC ----------------------------------------------------------------------------

    def _mfc_struct(self, source: Address, group: Address, parent: int, oifs: frozenset) -> bytes:
        if self.family == 6:
            bits = [0] * 8
            for i in oifs:
                bits[i >> 5] |= 1 << (i & 31)
            return (
                _sockaddr_in6(source) + _sockaddr_in6(group) + struct.pack("=Hxx8I", parent, *bits)
            )
        ttls = bytes(1 if i in oifs else 255 for i in range(MAXVIFS))
        return struct.pack("=4s4sH32sxxIIIi", source.packed, group.packed, parent, ttls, 0, 0, 0, 0)

    def set_mfc(self, source: Address, group: Address, parent: int, oifs: frozenset[int]) -> None:
        """Install or replace the (S,G) entry; ``oifs`` never contains ``parent``."""
        oifs = frozenset(oifs) - {parent}
        try:
            self.sock.setsockopt(
                self._level, MRT_ADD_MFC, self._mfc_struct(source, group, parent, oifs)
            )
        except OSError as exc:
            raise KernelError(f"adding MFC ({source}, {group}): {exc.strerror}") from exc
        entry = self.mfc.get((source, group))
        if entry is None or entry.parent != parent:
            self.mfc[(source, group)] = MfcEntry(source, group, parent, oifs)
        else:
            entry.oifs = oifs

    def del_mfc(self, source: Address, group: Address) -> None:
        entry = self.mfc.pop((source, group), None)
        if entry is None:
            return
        try:
            self.sock.setsockopt(
                self._level, MRT_DEL_MFC, self._mfc_struct(source, group, entry.parent, frozenset())
            )
        except OSError:
            pass  # gone already (interface removal flushes it)

    def counters(self, source: Address, group: Address) -> tuple[int, int, int]:
        """(packets, bytes, wrong_if) of the kernel's (S,G) entry."""
        if self.family == 6:
            req = bytearray(_sockaddr_in6(source) + _sockaddr_in6(group) + bytes(3 * 8))
            fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, req)
            return struct.unpack_from("=QQQ", req, 56)
        req = bytearray(source.packed + group.packed + bytes(3 * 8))
        fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, req)
        return struct.unpack_from("=QQQ", req, 8)

    def refresh_counters(self) -> None:
        for entry in self.mfc.values():
            try:
                pkts, nbytes, wrong = self.counters(entry.source, entry.group)
            except OSError:
                continue
            entry.idle_polls = entry.idle_polls + 1 if pkts == entry.packets else 0
            entry.packets, entry.bytes, entry.wrong_if = pkts, nbytes, wrong

    # --- receiving -----------------------------------------------------------------------

    def parse_upcall(self, data: bytes) -> Upcall | None:
        """Decode a kernel upcall; ``None`` when ``data`` is an ordinary packet."""
        if self.family == 6:
            # struct mrt6msg: mbz(1) type(1) mif(2) pad(4) src(16) dst(16); mbz==0 never
            # starts an ICMPv6 message.
            if len(data) < 40 or data[0] != 0:
                return None
            kind, mif = struct.unpack_from("=BH", data, 1)
            src, dst = IPv6Address(data[8:24]), IPv6Address(data[24:40])
        else:
            # struct igmpmsg overlays an IP header whose protocol byte (im_mbz) is 0.
            if len(data) < 20 or data[9] != 0:
                return None
            kind, vif, vif_hi = data[8], data[10], data[11]
            mif = vif | (vif_hi << 8)
            src, dst = IPv4Address(data[12:16]), IPv4Address(data[16:20])
        try:
            return Upcall(UpcallType(kind), mif, src, dst)
        except ValueError:
            return None

    def close(self) -> None:
        """Remove every MFC entry and vif, then leave multicast routing (MRT_DONE)."""
        for key in list(self.mfc):
            self.del_mfc(*key)
        for name in list(self.vifs):
            self.del_vif(name)
        try:
            self.sock.setsockopt(self._level, MRT_DONE, 1)
        except OSError:
            pass
        self.sock.close()


# --- mrules: which table a packet arriving on an interface is looked up in -------------


def _ip(family: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", f"-{family}", *args], capture_output=True, text=True, check=check)


def mrule_add(family: int, ifname: str, table: int) -> None:
    """Send multicast arriving on ``ifname`` to ``table`` (idempotent)."""
    mrule_del(family, ifname, table)
    res = _ip(family, "mrule", "add", "iif", ifname, "lookup", str(table), check=False)
    if res.returncode:
        raise KernelError(f"ip -{family} mrule add iif {ifname}: {res.stderr.strip()}")


def mrule_del(family: int, ifname: str, table: int) -> None:
    while (
        _ip(family, "mrule", "del", "iif", ifname, "lookup", str(table), check=False).returncode
        == 0
    ):
        pass


def set_mc_forwarding_sysctls(family: int) -> None:
    """Unicast forwarding is not needed for multicast; only check the kernel has mroute."""
    path = "/proc/net/ip6_mr_vif" if family == 6 else "/proc/net/ip_mr_vif"
    try:
        open(path).close()
    except OSError as exc:
        raise KernelError(
            f"this kernel has no IPv{family} multicast routing ({path} missing)"
        ) from exc


def parse_address(text: str) -> Address:
    return ip_address(text)
