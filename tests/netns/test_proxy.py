"""The proxy with real Linux hosts: kernel MLD/IGMP listeners and senders in namespaces."""

from __future__ import annotations

import subprocess
import time

import pytest

from lab.netns import NetLab as Lab
from proxy.ctl import request
from tests.netns.helpers import dump, receiver, rows, sender, start_proxy, wait_for
from topologies.daemons import ProxyDaemon

FAST_TIMERS = (
    "timers query-interval 20 query-response-interval 1 last-listener-query-interval 100ms "
    "last-listener-query-count 2 startup-query-interval 1 startup-query-count 2"
)
G1, G2 = "ff0e::4242", "ff0e::4343"


def upstream_segment(
    lab: Lab, proxy_ns: str, proxy_if: str, senders: int, v4: bool = False
) -> list[str]:
    """A bridge in namespace ``up`` joining the proxy's upstream and ``senders`` sender hosts."""
    up = lab.ns("up")
    lab.sh(up, "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 up")
    lab.link(up, "bp", proxy_ns, proxy_if)
    lab.sh(up, "ip link set bp master br0")
    lab.addr(proxy_ns, proxy_if, "198.18.0.1/24" if v4 else "2001:db8:ff::1/64")
    names = []
    for i in range(1, senders + 1):
        s = lab.ns(f"s{i}")
        lab.link(up, f"b{i}", s, "e0")
        lab.sh(up, f"ip link set b{i} master br0")
        lab.addr(s, "e0", f"198.18.0.{10 + i}/24" if v4 else f"2001:db8:ff::{10 + i}/64")
        if v4:
            lab.sh(s, "ip route add default dev e0")
        names.append(s)
    return names


def access(lab: Lab, proxy_ns: str, n: int, v4: bool = False) -> str:
    """Listener host ``l<n>`` behind downstream ``d<n>`` of the proxy."""
    host = lab.ns(f"l{n}")
    lab.link(proxy_ns, f"d{n}", host, "e0")
    if v4:
        lab.addr(proxy_ns, f"d{n}", f"198.19.{n}.1/24")
        lab.addr(host, "e0", f"198.19.{n}.2/24")
    else:
        lab.addr(proxy_ns, f"d{n}", f"2001:db8:{n}::1/64")
        lab.addr(host, "e0", f"2001:db8:{n}::2/64")
    return host


def received_seqs(lab: Lab, name: str) -> list[int]:
    """Sequence numbers a receiver logged; stops it first so that its CSV is flushed."""
    return [int(r["seq"]) for r in finished_rows(lab, name)]


def finished_rows(lab: Lab, name: str) -> list[dict]:
    for proc in lab.procs:
        if f"{name}.csv" in " ".join(proc.args):
            lab.stop(proc)
    return rows(lab, name)


def has_group(proxy: ProxyDaemon, inst: str, ifname: str, group: str) -> bool:
    q = proxy.instance(inst)["queriers"].get(ifname, {})
    return group in q.get("groups", {})


@pytest.fixture
def basic(lab: Lab):
    """Proxy ``px`` with upstream ``up0`` (two senders behind it) and downstreams d1, d2."""
    px = lab.ns("px")
    senders = upstream_segment(lab, px, "up0", 2)
    hosts = [access(lab, px, 1), access(lab, px, 2)]
    conf = f"protocol MLDv2;\npinstance px(10): up0 ==> d1 d2;\npinstance px {FAST_TIMERS};\n"
    proxy = start_proxy(lab, px, conf)
    return px, proxy, senders, hosts


def test_forwards_only_to_subscribed_downstream(lab, basic):
    px, proxy, (s1, _s2), (l1, l2) = basic
    receiver(lab, l1, "e0", G1, "r1")
    receiver(lab, l2, "e0", G2, "r2")  # listens, but to another group
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5), dump(proxy.show())
    snd = sender(lab, s1, "e0", G1, "snd", duration=1.0)
    snd.wait(10)
    time.sleep(0.3)
    sent = len(rows(lab, "snd"))
    got1, got2 = received_seqs(lab, "r1"), received_seqs(lab, "r2")
    assert sent == 100
    assert len(set(got1)) >= 98, dump(proxy.show())  # the first packet may race the MFC install
    assert got2 == []
    inst = proxy.instance("px")
    entry = next(e for e in inst["mfc"] if e["group"] == G1)
    assert entry["iif"] == "up0" and entry["oifs"] == ["d1"]
    joined = {(m["interface"], m["group"]) for m in inst["upstream"]}
    assert ("up0", G1) in joined and ("up0", G2) in joined


def test_ssm_listener_receives_only_its_source(lab, basic):
    px, proxy, (s1, s2), (l1, _l2) = basic
    receiver(lab, l1, "e0", "ff3e::5", "r1", sources=["2001:db8:ff::11"])
    assert wait_for(lambda: has_group(proxy, "px", "d1", "ff3e::5"), 5)
    a = sender(lab, s1, "e0", "ff3e::5", "a", duration=1.0)
    b = sender(lab, s2, "e0", "ff3e::5", "b", duration=1.0)
    a.wait(10), b.wait(10)
    time.sleep(0.3)
    inst = proxy.instance("px")
    up = next(m for m in inst["upstream"] if m["group"] == "ff3e::5")
    assert up["state"] == "IN{2001:db8:ff::11}"
    entries = {e["source"]: e["oifs"] for e in inst["mfc"] if e["group"] == "ff3e::5"}
    assert entries.get("2001:db8:ff::11") == ["d1"]
    assert entries.get("2001:db8:ff::12", []) == []
    assert len(received_seqs(lab, "r1")) >= 98  # only sender a's 100 packets can arrive
    assert len(received_seqs(lab, "r1")) <= 100


def test_leave_stops_forwarding_within_last_listener_query_time(lab, basic):
    px, proxy, (s1, _), (l1, _) = basic
    rcv = receiver(lab, l1, "e0", G1, "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5)
    snd = sender(lab, s1, "e0", G1, "snd", duration=3.0)
    time.sleep(1.0)
    t_leave = time.time_ns()
    lab.stop(rcv)  # closing the socket leaves: the kernel sends TO_IN{} (MLDv2 "Done")
    # Observe forwarding stop on the downstream wire, from the listener's namespace.
    cap = subprocess.Popen(
        ["ip", "netns", "exec", l1, "tcpdump", "-i", "e0", "-nn", "-tt", "-l", "udp port 5001"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lab.procs.append(cap)
    snd.wait(10)
    lab.stop(cap)
    stamps = [float(line.split()[0]) for line in cap.stdout.read().splitlines() if line.strip()]
    last = max(stamps) if stamps else t_leave / 1e9
    lmqt = 0.1 * 2
    assert last - t_leave / 1e9 <= lmqt + 0.25, f"forwarding went on {last - t_leave / 1e9:.3f} s"
    assert not has_group(proxy, "px", "d1", G1)


def test_mldv1_listener_is_served(lab, basic):
    px, proxy, (s1, _), (l1, _) = basic
    lab.sh(l1, "sysctl -qw net.ipv6.conf.e0.force_mld_version=1")
    receiver(lab, l1, "e0", G1, "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5)
    q = proxy.instance("px")["queriers"]["d1"]
    assert q["groups"][G1]["compat_version"] == 1, dump(q)
    sender(lab, s1, "e0", G1, "snd", duration=0.5).wait(10)
    time.sleep(0.3)
    assert len(received_seqs(lab, "r1")) >= 48


def test_lower_addressed_querier_silences_the_proxy(lab, basic):
    px, proxy, _senders, (l1, _) = basic
    assert proxy.instance("px")["queriers"]["d1"]["is_querier"]
    # A second router on d1's link with the lowest possible link-local address.
    lab.sh(l1, "ip addr add fe80::1/64 dev e0 nodad")
    script = (
        "from scapy.all import *;"
        "p=IPv6(src='fe80::1',dst='ff02::1',hlim=1)/IPv6ExtHdrHopByHop(options=[RouterAlert()])"
        "/ICMPv6MLQuery2(mrd=1000);"
        "[sendp(Ether(dst='33:33:00:00:00:01')/p,iface='e0',verbose=0) or time.sleep(0.3) for _ in range(5)]"
    )
    lab.sh(l1, f'{lab_py()} -c "{script}"')
    q = proxy.instance("px")["queriers"]["d1"]
    assert not q["is_querier"], dump(q)
    assert q["other_querier"] == "fe80::1"
    sent = proxy.instance("px")["counters"].get("queries_sent", 0)
    time.sleep(2.5)  # longer than the startup query interval: a querier would have sent more
    q_after = proxy.instance("px")
    assert q_after["queriers"]["d1"]["counters"].get("queries_sent", 0) == q["counters"].get(
        "queries_sent", 0
    )
    assert q_after["counters"].get("queries_sent", 0) >= sent  # d2 still queries


def lab_py() -> str:
    """The running interpreter, quoted for a shell command line (the path may hold spaces)."""
    import shlex
    import sys

    return shlex.quote(sys.executable)


def test_malformed_packets_are_dropped_counted_and_forwarding_continues(lab, basic):
    px, proxy, (s1, _), (l1, _) = basic
    receiver(lab, l1, "e0", G1, "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5)
    snd = sender(lab, s1, "e0", G1, "snd", duration=2.0)
    script = (
        "from scapy.all import *;import random;random.seed(7);"
        "ra=IPv6ExtHdrHopByHop(options=[RouterAlert()]);"
        "bad=[IPv6(dst='ff02::16',hlim=1)/ra/ICMPv6MLReport2()/Raw(b'\\\\xff'*7),"  # truncated record
        "IPv6(dst='ff02::16',hlim=1)/ra/Raw(bytes([143,0,0,0,0,0,0,9])),"  # 9 records promised, none there
        "IPv6(dst='ff02::16',hlim=5)/ra/ICMPv6MLReport2(),"  # hop limit not 1
        "IPv6(dst='ff02::16',hlim=1)/ICMPv6MLReport2(),"  # no router alert
        "IPv6(dst='ff02::1',hlim=1)/ra/ICMPv6MLQuery2()/Raw(b'\\\\x01')]+"  # odd-size query
        "[IPv6(dst='ff02::16',hlim=1)/ra/ICMPv6MLReport2(type=143)/Raw(bytes(random.randrange(256) for _ in range(random.randrange(1,60)))) for _ in range(200)];"
        "[sendp(Ether(dst='33:33:00:00:00:16')/p,iface='e0',verbose=0) for p in bad]"
    )
    lab.sh(l1, f'{lab_py()} -c "{script}"')
    snd.wait(10)
    time.sleep(0.3)
    show = proxy.show()
    assert proxy.proc.poll() is None, lab.log(proxy.log_name)
    assert sum(show["drops"].values()) >= 5, dump(show["drops"])
    assert {"hoplimit", "no-router-alert"} <= set(show["drops"]), dump(show["drops"])
    assert len(set(received_seqs(lab, "r1"))) >= 195


def test_two_instances_on_one_host_use_separate_tables(lab):
    px = lab.ns("px")
    (sa,) = upstream_segment(lab, px, "upa", 1)
    # A second, separate upstream segment for instance b.
    sb = lab.ns("sb")
    lab.link(sb, "e0", px, "upb")
    lab.addr(sb, "e0", "2001:db8:fe::11/64")
    lab.addr(px, "upb", "2001:db8:fe::1/64")
    la, lb = access(lab, px, 1), access(lab, px, 2)
    conf = (
        "protocol MLDv2;\npinstance a(11): upa ==> d1;\npinstance b(12): upb ==> d2;\n"
        f"pinstance a {FAST_TIMERS};\npinstance b {FAST_TIMERS};\n"
    )
    proxy = start_proxy(lab, px, conf)
    receiver(lab, la, "e0", G1, "ra")
    receiver(lab, lb, "e0", G1, "rb")
    assert wait_for(lambda: has_group(proxy, "a", "d1", G1) and has_group(proxy, "b", "d2", G1), 5)
    s1 = sender(lab, sa, "e0", G1, "sa", duration=1.0)
    s2 = sender(lab, sb, "e0", G1, "sb", duration=0.5, rate=100)
    s1.wait(10), s2.wait(10)
    time.sleep(0.3)
    ra, rb = finished_rows(lab, "ra"), finished_rows(lab, "rb")
    # Each listener gets exactly its own instance's stream: 100 vs 50 packets.
    assert 98 <= len(ra) <= 100 and 48 <= len(rb) <= 50, (len(ra), len(rb))
    tables = lab.sh(px, "ip -6 mroute show table 11") + lab.sh(px, "ip -6 mroute show table 12")
    assert "Iif: upa" in tables and "Iif: upb" in tables, tables
    rules = lab.sh(px, "ip -6 mrule show")
    assert "iif upa lookup 11" in rules and "iif upb lookup 12" in rules, rules


def test_peering_carries_only_local_sources(lab):
    """Proxy p1 has a local source and an upstream source; only the local one crosses the peering."""
    p1, p2 = lab.ns("p1"), lab.ns("p2")
    (s_up,) = upstream_segment(lab, p1, "up0", 1)
    up2 = lab.ns("up2")
    lab.link(up2, "e0", p2, "up0")
    lab.addr(p2, "up0", "2001:db8:fd::1/64")
    lab.link(p1, "peer", p2, "peer")
    src = lab.ns("src")  # a local source on p1's downstream
    lab.link(p1, "d1", src, "e0")
    lab.addr(p1, "d1", "2001:db8:1::1/64")
    lab.addr(src, "e0", "2001:db8:1::2/64")
    lst = lab.ns("lst")  # a listener on p2's downstream
    lab.link(p2, "d1", lst, "e0")
    lab.addr(p2, "d1", "2001:db8:2::1/64")
    lab.addr(lst, "e0", "2001:db8:2::2/64")
    conf = (
        "protocol MLDv2;\npinstance {n}(20): up0 ==> d1;\npinstance {n} peering peer;\npinstance {n} "
        + FAST_TIMERS
        + ";\n"
    )
    prox1 = start_proxy(lab, p1, conf.format(n="p1"), name="p1")
    prox2 = start_proxy(lab, p2, conf.format(n="p2"), name="p2")
    receiver(lab, lst, "e0", G1, "r")
    assert wait_for(lambda: has_group(prox2, "p2", "d1", G1), 5)
    # p2 subscribes on its peering; p1's router side on the peering learns it.
    assert wait_for(lambda: has_group(prox1, "p1", "peer", G1), 5), dump(prox1.show())
    local = sender(lab, src, "e0", G1, "local", duration=1.0)
    remote = sender(lab, s_up, "e0", G1, "remote", duration=1.0, port=5001)
    time.sleep(0.6)
    inst2 = prox2.instance("p2")  # while the stream runs: peering entries time out after it
    local.wait(10), remote.wait(10)
    time.sleep(0.3)
    got = finished_rows(lab, "r")
    assert 98 <= len(got) <= 100, len(got)  # the local stream only: the upstream one stays
    inst1 = prox1.instance("p1")
    oifs = {e["source"]: (e["iif"], e["oifs"]) for e in inst1["mfc"]}
    assert oifs["2001:db8:1::2"] == ("d1", ["peer", "up0"]), dump(inst1["mfc"])
    assert oifs.get("2001:db8:ff::11", ("up0", []))[1] == [], dump(inst1["mfc"])
    entry = next(e for e in inst2["mfc"] if e["source"] == "2001:db8:1::2")
    assert entry["iif"] == "peer" and entry["oifs"] == ["d1"]
    # RFC 7287 §5.4: a source arriving on the peering is blocked upstream.
    up = next(m for m in inst2["upstream"] if m["interface"] == "up0" and m["group"] == G1)
    assert up["state"] in ("EX{2001:db8:1::2}", "EX{}"), dump(inst2["upstream"])


def test_link_down_flushes_and_link_up_queries_again(lab, basic):
    px, proxy, (s1, _), (l1, _) = basic
    receiver(lab, l1, "e0", G1, "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5)
    lab.sh(px, "ip link set d1 down")
    assert wait_for(lambda: not has_group(proxy, "px", "d1", G1), 2), dump(proxy.show())
    inst = proxy.instance("px")
    assert not any(m["group"] == G1 for m in inst["upstream"])  # d2 has no listener for G1
    t_up = time.monotonic()
    lab.sh(px, "ip link set d1 up")
    # The startup General Query makes the listener report again within its response time.
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 3), dump(proxy.show())
    assert time.monotonic() - t_up < 2.5


def test_sigterm_removes_kernel_state_and_leaves_groups(lab, basic):
    px, proxy, (s1, _), (l1, _) = basic
    receiver(lab, l1, "e0", G1, "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", G1), 5)
    sender(lab, s1, "e0", G1, "snd", duration=0.5).wait(10)
    assert "table 10" in lab.sh(px, "ip -6 mrule show").replace("lookup", "table")
    assert proxy.stop() == 0
    assert lab.sh(px, "ip -6 mroute show table 10").strip() == ""
    assert "lookup 10" not in lab.sh(px, "ip -6 mrule show")
    assert lab.sh(px, "cat /proc/net/ip6_mr_vif").count("\n") <= 1
    assert G1.replace(":", "") not in lab.sh(px, "cat /proc/net/igmp6").replace(":", "")


def test_control_socket_adds_and_removes_a_downstream(lab):
    px = lab.ns("px")
    (s1,) = upstream_segment(lab, px, "up0", 1)
    _l1, l2 = access(lab, px, 1), access(lab, px, 2)
    proxy = start_proxy(
        lab, px, f"protocol MLDv2;\npinstance px(10): up0 ==> d1;\npinstance px {FAST_TIMERS};\n"
    )
    receiver(lab, l2, "e0", G1, "r2")
    assert request(proxy.ctl, {"cmd": "add-downstream", "instance": "px", "interface": "d2"})["ok"]
    assert wait_for(lambda: has_group(proxy, "px", "d2", G1), 3), dump(proxy.show())
    sender(lab, s1, "e0", G1, "snd", duration=0.5).wait(10)
    time.sleep(0.3)
    assert len(finished_rows(lab, "r2")) >= 48
    assert request(proxy.ctl, {"cmd": "remove-downstream", "instance": "px", "interface": "d2"})[
        "ok"
    ]
    assert "d2" not in proxy.instance("px")["interfaces"]


def test_igmpv3_proxy_forwards_ipv4(lab):
    px = lab.ns("px")
    (s1,) = upstream_segment(lab, px, "up0", 1, v4=True)
    l1, _l2 = access(lab, px, 1, v4=True), access(lab, px, 2, v4=True)
    conf = f"protocol IGMPv3;\npinstance px(10): up0 ==> d1 d2;\npinstance px {FAST_TIMERS};\n"
    proxy = start_proxy(lab, px, conf)
    receiver(lab, l1, "e0", "239.1.2.3", "r1")
    assert wait_for(lambda: has_group(proxy, "px", "d1", "239.1.2.3"), 5), dump(proxy.show())
    sender(lab, s1, "e0", "239.1.2.3", "snd", duration=1.0).wait(10)
    time.sleep(0.3)
    assert len(finished_rows(lab, "r1")) >= 98
    inst = proxy.instance("px")
    assert inst["queriers"]["d2"]["groups"] == {}
