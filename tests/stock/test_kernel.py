"""What the lab needs from a stock kernel: netem shapes, ip6tnl carries IPv6, the queueing
disciplines, classifiers and devices exist, and (custom kernel) multicast routing tables."""

from __future__ import annotations

import ctypes
import socket
import statistics
import struct
import sys

import pytest

from tests.stock.conftest import KERNEL
from tests.stock.netns import lab, ping_rtts, sh


def test_netem_delay_shapes_a_veth():
    """netem delay 20ms on both ends of a veth: every ping takes 40-60 ms round trip."""
    with lab() as lb:
        a, b = lb.ns("a"), lb.ns("b")
        lb.veth(a, "eth0", b, "eth0")
        sh("ip", "addr", "add", "198.18.0.1/24", "dev", "eth0", ns=a)
        sh("ip", "addr", "add", "198.18.0.2/24", "dev", "eth0", ns=b)
        before = ping_rtts(a, "198.18.0.2", count=3)
        assert max(before) < 20, f"unshaped veth already slow: {before}"
        for ns in (a, b):
            sh("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "20ms", ns=ns)
        assert "netem" in sh("tc", "qdisc", "show", "dev", "eth0", ns=a)
        rtts = ping_rtts(a, "198.18.0.2", count=10)
        assert len(rtts) == 10, f"lost pings: {rtts}"
        assert min(rtts) >= 40, rtts
        assert statistics.mean(rtts) < 60, rtts


def test_ip6tnl_carries_ipv6_between_namespaces():
    """An ip6ip6 tunnel (RFC 5213 §6.10 style) over a veth: inner pings cross the tunnel."""
    with lab() as lb:
        mag, lma = lb.ns("mag"), lb.ns("lma")
        lb.veth(mag, "eth0", lma, "eth0")
        ends = {
            mag: ("2001:db8:ff::1", "2001:db8:ff::2", "2001:db8:fe::1"),
            lma: ("2001:db8:ff::2", "2001:db8:ff::1", "2001:db8:fe::2"),
        }
        for ns, (local, remote, inner) in ends.items():
            sh("ip", "-6", "addr", "add", f"{local}/64", "dev", "eth0", "nodad", ns=ns)
            sh(
                "ip",
                "-6",
                "tunnel",
                "add",
                "tnl0",
                "mode",
                "ip6ip6",
                "local",
                local,
                "remote",
                remote,
                ns=ns,
            )
            sh("ip", "link", "set", "tnl0", "up", ns=ns)
            sh("ip", "-6", "addr", "add", f"{inner}/64", "dev", "tnl0", "nodad", ns=ns)
        assert "ip6tnl" in sh("ip", "-d", "link", "show", "tnl0", ns=mag)
        assert len(ping_rtts(mag, "2001:db8:fe::2", count=3)) == 3
        stats = sh("ip", "-s", "link", "show", "tnl0", ns=lma).split("\n")
        rx_packets = int(stats[stats.index(next(x for x in stats if "RX:" in x)) + 1].split()[1])
        assert rx_packets >= 3, "\n".join(stats)


@pytest.mark.parametrize(
    "qdisc",
    [
        ["htb", "default", "1"],
        ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "50ms"],
        ["fq"],
        ["fq_codel"],
        ["prio"],
        ["netem", "delay", "5ms", "3ms", "loss", "1%"],
    ],
)
def test_qdisc_exists(qdisc):
    with lab() as lb:
        a, b = lb.ns("a"), lb.ns("b")
        lb.veth(a, "eth0", b, "eth0")
        sh("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", *qdisc, ns=a)
        assert qdisc[0] in sh("tc", "qdisc", "show", "dev", "eth0", ns=a)


def test_ingress_u32_mirred_ifb_matchall():
    """Ingress shaping the Mininet way: ingress qdisc, u32 and matchall filters, mirred to ifb."""
    with lab() as lb:
        a, b = lb.ns("a"), lb.ns("b")
        lb.veth(a, "eth0", b, "eth0")
        sh("ip", "link", "add", "ifb0", "type", "ifb", ns=b)
        sh("ip", "link", "set", "ifb0", "up", ns=b)
        sh("tc", "qdisc", "add", "dev", "eth0", "ingress", ns=b)
        sh(
            "tc",
            "filter",
            "add",
            "dev",
            "eth0",
            "parent",
            "ffff:",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            "ifb0",
            ns=b,
        )
        sh("tc", "qdisc", "add", "dev", "ifb0", "root", "netem", "delay", "30ms", ns=b)
        sh(
            "tc",
            "filter",
            "add",
            "dev",
            "eth0",
            "parent",
            "ffff:",
            "protocol",
            "ipv6",
            "prio",
            "2",
            "matchall",
            "action",
            "pass",
            ns=b,
        )
        sh("ip", "addr", "add", "198.18.1.1/24", "dev", "eth0", ns=a)
        sh("ip", "addr", "add", "198.18.1.2/24", "dev", "eth0", ns=b)
        rtts = ping_rtts(a, "198.18.1.2", count=5)
        assert len(rtts) == 5 and min(rtts) >= 30, rtts


def test_devices_bridge_tap_dummy_macvlan():
    with lab() as lb:
        a = lb.ns("a")
        for args in (
            ["br0", "type", "bridge"],
            ["dum0", "type", "dummy"],
            ["mv0", "link", "dum0", "type", "macvlan"],
        ):
            sh("ip", "link", "add", *args, ns=a)
        sh("ip", "tuntap", "add", "dev", "tap0", "mode", "tap", ns=a)
        sh("ip", "link", "set", "tap0", "master", "br0", ns=a)
        assert "master br0" in sh("ip", "link", "show", "tap0", ns=a)


def test_classic_bpf_socket_filter():
    """SO_ATTACH_FILTER with a classic BPF program that accepts nothing."""
    reject_all = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0
    buf = ctypes.create_string_buffer(reject_all)
    prog = struct.pack("HL", 1, ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, 26, prog)  # SO_ATTACH_FILTER


# Multicast routing, as pymcproxy uses it: one kernel table per proxy instance.
MRT_INIT, MRT_TABLE = 200, 209  # MRT_BASE + 0, MRT_BASE + 9 (linux/mroute.h)
MRT6_INIT, MRT6_TABLE, MRT6_ADD_MIF = 200, 209, 202  # linux/mroute6.h
needs_custom = pytest.mark.skipif(
    KERNEL != "custom",
    reason="Debian's UML kernel lacks CONFIG_IPV6_MROUTE and IP_MROUTE_MULTIPLE_TABLES; "
    "`make uml-kernel` builds one that has them",
)


def run_py(ns: str, code: str) -> str:
    """Run Python code in namespace ns (a fresh process: no namespace switch in pytest)."""
    return sh(sys.executable, "-c", code, ns=ns)


@needs_custom
def test_mrt6_multiple_tables():
    """MRT6_TABLE then MRT6_INIT on two ICMPv6 raw sockets (two IPv6 multicast tables), each
    with a MIF on a dummy device: what every pymcproxy instance does."""
    with lab() as lb:
        a = lb.ns("a")
        sh("ip", "link", "add", "dum0", "type", "dummy", ns=a)
        sh("ip", "link", "set", "dum0", "up", ns=a)
        out = run_py(
            a,
            f"""
import socket, struct
socks = []
for table in (10, 11):
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    socks.append(s)
    s.setsockopt(socket.IPPROTO_IPV6, {MRT6_TABLE}, struct.pack("I", table))
    s.setsockopt(socket.IPPROTO_IPV6, {MRT6_INIT}, struct.pack("i", 1))
    # struct mif6ctl: mifi, flags, threshold, pifi, rate_limit
    mif = struct.pack("HBBHI", 0, 0, 1, socket.if_nametoindex("dum0"), 0)
    s.setsockopt(socket.IPPROTO_IPV6, {MRT6_ADD_MIF}, mif)
print("ok", len(socks))
""",
        )
        assert out.split() == ["ok", "2"]


@needs_custom
def test_mrt4_multiple_tables():
    """MRT_TABLE then MRT_INIT on two IGMP raw sockets: two IPv4 multicast tables at once."""
    with lab() as lb:
        a = lb.ns("a")
        out = run_py(
            a,
            f"""
import socket, struct
socks = []
for table in (10, 11):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    socks.append(s)
    s.setsockopt(socket.IPPROTO_IP, {MRT_TABLE}, struct.pack("I", table))
    s.setsockopt(socket.IPPROTO_IP, {MRT_INIT}, struct.pack("i", 1))
print("ok", len(socks))
""",
        )
        assert out.split() == ["ok", "2"]
