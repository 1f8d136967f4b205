"""mcproxy files that used to be refused, run with real kernel listeners and senders.

A querier-only instance (mcproxy's PMIPv6 ``lma.conf``), a downstream shared by two
instances, an interface that is upstream and downstream of one instance (OpenWrt's
default file), and the exact SSM range (RFC 3306 groups are any-source multicast).
"""

from __future__ import annotations

import time

from lab.netns import NetLab as Lab
from tests.netns.helpers import dump, receiver, rows, sender, start_proxy, wait_for
from tests.netns.test_proxy import FAST_TIMERS, access, has_group, received_seqs

# Forwarded: at least this many of a sender's 100 packets (the first ones race the MFC entry,
# more of them on a loaded machine); not forwarded: none.
ENOUGH = 90


def point_to_point(lab: Lab, proxy_ns: str, ifname: str, net: int) -> str:
    """A sender host ``h<net>`` on its own link to the proxy's ``ifname``."""
    host = lab.ns(f"h{net}")
    lab.link(proxy_ns, ifname, host, "e0")
    lab.addr(proxy_ns, ifname, f"2001:db8:a{net}::1/64")
    lab.addr(host, "e0", f"2001:db8:a{net}::2/64")
    return host


def test_querier_only_instance_queries_learns_and_forwards_between_downstreams(lab):
    px = lab.ns("px")
    l1, l2 = access(lab, px, 1), access(lab, px, 2)
    conf = f"protocol MLDv2;\npinstance lma(1): ==> d1 d2;\npinstance lma {FAST_TIMERS};\n"
    proxy = start_proxy(lab, px, conf)
    receiver(lab, l1, "e0", "ff0e::4242", "r1")
    assert wait_for(lambda: has_group(proxy, "lma", "d1", "ff0e::4242"), 5), dump(proxy.show())
    snd = sender(lab, l2, "e0", "ff0e::4242", "snd", duration=1.0)
    snd.wait(10)
    time.sleep(0.3)
    inst = proxy.instance("lma")
    assert inst["table"] == 1
    assert {n: i["role"] for n, i in inst["interfaces"].items()} == {
        "d1": "downstream",
        "d2": "downstream",
    }
    assert inst["queriers"]["d1"]["is_querier"] and inst["queriers"]["d2"]["is_querier"]
    assert inst["counters"]["queries_sent"] >= 2  # startup queries on both links
    assert inst["upstream"] == []  # nothing to join: there is no upstream
    entry = next(e for e in inst["mfc"] if e["group"] == "ff0e::4242")
    assert entry["iif"] == "d2" and entry["oifs"] == ["d1"], dump(inst)
    assert len(rows(lab, "snd")) == 100
    assert len(set(received_seqs(lab, "r1"))) >= ENOUGH, dump(inst)


def test_downstream_shared_by_two_instances_gets_the_groups_of_both(lab):
    px = lab.ns("px")
    ha, hb = point_to_point(lab, px, "upa", 1), point_to_point(lab, px, "upb", 2)
    (shared,) = (access(lab, px, 1),)  # listener host behind d1
    conf = (
        "protocol MLDv2;\n"
        "pinstance a: upa ==> d1;\npinstance b: upb ==> d1;\n"
        f"pinstance a {FAST_TIMERS};\npinstance b {FAST_TIMERS};\n"
    )
    proxy = start_proxy(lab, px, conf)
    tables = {i["name"]: i["table"] for i in proxy.show()["instances"]}
    assert tables == {"a": 1, "b": 2}  # mcproxy's numbering, by name
    receiver(lab, shared, "e0", "ff0e::a1", "ra")
    receiver(lab, shared, "e0", "ff0e::b1", "rb", port=5002)
    for inst in ("a", "b"):
        for g in ("ff0e::a1", "ff0e::b1"):
            assert wait_for(lambda i=inst, g=g: has_group(proxy, i, "d1", g), 5), dump(proxy.show())
    sa = sender(lab, ha, "e0", "ff0e::a1", "sa", duration=1.0)
    sb = sender(lab, hb, "e0", "ff0e::b1", "sb", duration=1.0, port=5002)
    sa.wait(10), sb.wait(10)
    time.sleep(0.3)
    a, b = proxy.instance("a"), proxy.instance("b")
    joined = {(i["name"], m["interface"], m["group"]) for i in (a, b) for m in i["upstream"]}
    assert {("a", "upa", "ff0e::a1"), ("b", "upb", "ff0e::b1")} <= joined, dump(joined)
    ea = next(e for e in a["mfc"] if e["group"] == "ff0e::a1")
    eb = next(e for e in b["mfc"] if e["group"] == "ff0e::b1")
    assert (ea["iif"], ea["oifs"], eb["iif"], eb["oifs"]) == ("upa", ["d1"], "upb", ["d1"])
    mroutes = lab.sh(px, "ip -6 mroute show table 1; ip -6 mroute show table 2")
    assert "ff0e::a1" in mroutes and "ff0e::b1" in mroutes, mroutes
    assert len(set(received_seqs(lab, "ra"))) >= ENOUGH, dump(a)
    assert len(set(received_seqs(lab, "rb"))) >= ENOUGH, dump(b)


def test_interface_both_upstream_and_downstream_is_one_vif_with_both_roles(lab):
    px = lab.ns("px")
    ha = point_to_point(lab, px, "a1", 1)  # the upstream side
    lap, la2 = access(lab, px, 3), access(lab, px, 2)  # listeners on d3 ("ap") and d2
    conf = (
        "protocol MLDv2;\npinstance A: d3 a1 ==> d3 d2;\n"
        f"pinstance A {FAST_TIMERS};\n"
        "pinstance A upstream * in rulematching mutex 10;\n"  # as OpenWrt's file
        "pinstance A upstream d3 out blacklist table {(*|*)};\n"
    )
    proxy = start_proxy(lab, px, conf)
    receiver(lab, lap, "e0", "ff0e::c1", "rap")
    receiver(lab, la2, "e0", "ff0e::c2", "ra2", port=5002)
    assert wait_for(lambda: has_group(proxy, "A", "d3", "ff0e::c1"), 5), dump(proxy.show())
    assert wait_for(lambda: has_group(proxy, "A", "d2", "ff0e::c2"), 5), dump(proxy.show())
    inst = proxy.instance("A")
    assert inst["interfaces"]["d3"]["role"] == "upstream+downstream"
    vifs = {n: i["vif"] for n, i in inst["interfaces"].items()}
    assert len(set(vifs.values())) == 3, vifs  # one vif each, d3 too
    joined = {(m["interface"], m["group"]) for m in inst["upstream"]}
    # d3 is an upstream too: under mutex every upstream holds every downstream's groups.
    assert {("a1", "ff0e::c2"), ("d3", "ff0e::c2"), ("a1", "ff0e::c1")} <= joined, joined
    # Data from the upstream a1 reaches the listener on d3 (its downstream role).
    s1 = sender(lab, ha, "e0", "ff0e::c1", "s1", duration=1.0)
    # A source on d3 is a downstream's source: forwarded to d2, and up a1 but not back.
    s3 = sender(lab, lap, "e0", "ff0e::c2", "s3", duration=1.0, port=5002)
    s1.wait(10), s3.wait(10)
    time.sleep(0.3)
    inst = proxy.instance("A")
    e1 = next(e for e in inst["mfc"] if e["group"] == "ff0e::c1")
    e3 = next(e for e in inst["mfc"] if e["group"] == "ff0e::c2")
    assert (e1["iif"], e1["oifs"]) == ("a1", ["d3"]), dump(inst)
    assert (e3["iif"], e3["oifs"]) == ("d3", ["a1", "d2"]), dump(inst)
    assert len(set(received_seqs(lab, "rap"))) >= ENOUGH, dump(inst)
    assert len(set(received_seqs(lab, "ra2"))) >= ENOUGH, dump(inst)


def test_rfc3306_asm_group_is_forwarded_and_ff3e_96_any_source_join_ignored(lab):
    px = lab.ns("px")
    h = point_to_point(lab, px, "up0", 1)
    l1 = access(lab, px, 1)
    conf = f"protocol MLDv2;\npinstance px: up0 ==> d1;\npinstance px {FAST_TIMERS};\n"
    proxy = start_proxy(lab, px, conf)
    asm, ssm = "ff3e:40:2001:db8:12::4244", "ff3e::4246"
    receiver(lab, l1, "e0", asm, "rasm")
    receiver(lab, l1, "e0", ssm, "rssm", port=5002)  # any source: SSM says ignore it
    assert wait_for(lambda: has_group(proxy, "px", "d1", asm), 5), dump(proxy.show())
    # MLDv2 hosts ask with TO_EX{} (RFC 4604 §2.2.1 says SSM routers ignore it).
    assert wait_for(
        lambda: proxy.instance("px")["queriers"]["d1"]["counters"].get("ignored.ssm-exclude"),
        5,
    ), dump(proxy.show())
    s1 = sender(lab, h, "e0", asm, "sasm", duration=1.0)
    s2 = sender(lab, h, "e0", ssm, "sssm", duration=1.0, port=5002)
    s1.wait(10), s2.wait(10)
    time.sleep(0.3)
    inst = proxy.instance("px")
    assert ssm not in inst["queriers"]["d1"]["groups"]
    joined = {m["group"]: m["state"] for m in inst["upstream"]}
    assert joined.get(asm) == "EX{}" and ssm not in joined, joined
    assert len(set(received_seqs(lab, "rasm"))) >= ENOUGH, dump(inst)
    assert received_seqs(lab, "rssm") == [], dump(inst)


def test_wildcard_downstream_appears_and_disappears_at_runtime(lab):
    px = lab.ns("px")
    h = point_to_point(lab, px, "up0", 1)
    conf = f"protocol MLDv2;\npinstance w(4): up0 ==> acc+;\npinstance w {FAST_TIMERS};\n"
    proxy = start_proxy(lab, px, conf)
    assert set(proxy.instance("w")["interfaces"]) == {"up0"}
    # The access link is made after the daemon started, as a PPP or tunnel link would be.
    listener = lab.ns("l9")
    lab.link(px, "acc9", listener, "e0")
    lab.addr(px, "acc9", "2001:db8:9::1/64")
    lab.addr(listener, "e0", "2001:db8:9::2/64")
    assert wait_for(lambda: "acc9" in proxy.instance("w")["interfaces"], 5), dump(proxy.show())
    assert "iif acc9 lookup 4" in lab.sh(px, "ip -6 mrule show")
    receiver(lab, listener, "e0", "ff0e::99", "r9")
    assert wait_for(lambda: has_group(proxy, "w", "acc9", "ff0e::99"), 5), dump(proxy.show())
    snd = sender(lab, h, "e0", "ff0e::99", "s9", duration=1.0)
    snd.wait(10)
    time.sleep(0.3)
    inst = proxy.instance("w")
    assert inst["interfaces"]["acc9"]["role"] == "downstream"
    assert ("up0", "ff0e::99") in {(m["interface"], m["group"]) for m in inst["upstream"]}
    assert len(set(received_seqs(lab, "r9"))) >= ENOUGH, dump(inst)
    lab.sh(px, "ip link del acc9")
    assert wait_for(lambda: "acc9" not in proxy.instance("w")["interfaces"], 5), dump(proxy.show())
    inst = proxy.instance("w")
    assert "acc9" not in inst["queriers"] and inst["upstream"] == [], dump(inst)
    assert "acc9" not in lab.sh(px, "ip -6 mrule show")
