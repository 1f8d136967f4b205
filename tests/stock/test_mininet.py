"""Mininet's own machinery carries the proxy's multicast: TCLink (netem) and an OVS switch.

``topologies.mnshared.SharedAccessTopo``: a source, a MAG host running ``pymcproxy`` and
two receivers on one shared access segment (Open vSwitch, standalone). Mininet's hosts are
unnamed namespaces; ``NetLab.adopt`` names them ``pmlm<hex>-<host>`` so that the proxy and
the probes start there exactly as in the namespace tests. Mininet's links, switch and
hosts are removed by ``net.stop()``, the names by ``lab.close()``, whatever happens.
"""

from __future__ import annotations

import statistics
import time

import pytest
from mininet.log import setLogLevel
from mininet.node import OVSSwitch

from lab.netns import NetLab, wait_for
from tests.netns.helpers import dump, receiver, rows, sender, start_proxy
from topologies.links import profile_from
from topologies.mnshared import SharedAccessTopo, shared_access_net

GROUP = "ff0e::db8:77"  # ASM: ff3x::/32 is SSM (RFC 4607)
SOURCE = "2001:db8:5::1"


@pytest.fixture
def mininet_lab(ovs, tmp_path):
    setLogLevel("warning")
    net = shared_access_net(SharedAccessTopo(receivers=2))
    lab = NetLab(tmp_path, prefix=f"pmlm{time.time_ns() % 0xFFFFF:05x}")
    try:
        net.build()
        net.start()
        for host in net.hosts:
            lab.adopt(host.name, host.pid)
        yield net, lab
    finally:
        lab.close()
        net.stop()


def _settled(lab: NetLab, host: str) -> bool:
    """No tentative (DAD) address left on the host's interfaces."""
    return "tentative" not in lab.sh(lab.name(host), "ip -6 addr show")


def test_proxy_forwards_over_tclink_and_a_standalone_ovs_segment(mininet_lab):
    net, lab = mininet_lab
    assert isinstance(net["s1"], OVSSwitch) and net["s1"].failMode == "standalone"
    tc = net["mag"].cmd("tc qdisc show dev mag-up")
    assert "netem" in tc and "delay 30ms" in tc, tc  # Table I tunnel delay, Mininet's TCLink
    src, mag = lab.name("src"), lab.name("mag")
    lab.addr(src, "src-eth0", f"{SOURCE}/64")
    lab.addr(mag, "mag-up", "2001:db8:5::2/64")
    lab.sh(mag, "sysctl -qw net.ipv6.conf.all.forwarding=1")
    assert wait_for(lambda: all(_settled(lab, h) for h in ("src", "mag", "r1", "r2")), 10)
    proxy = start_proxy(
        lab,
        mag,
        "protocol MLDv2;\npinstance mag: mag-up ==> mag-down;\n"
        "pinstance mag timers query-response-interval 1 startup-query-interval 1;\n",
    )
    for r in ("r1", "r2"):
        receiver(lab, lab.name(r), f"{r}-eth0", GROUP, r)

    def joined() -> bool:
        groups = proxy.instance("mag")["queriers"].get("mag-down", {}).get("groups", {})
        return GROUP in groups

    assert wait_for(joined, 15), dump(proxy.show())
    sender(lab, src, "src-eth0", GROUP, "snd", duration=2.0).wait(30)
    time.sleep(0.5)  # the last packets' one-way delay
    sent = len(rows(lab, "snd"))
    assert sent == 200
    for proc in list(lab.procs):
        if "recv" in proc.args:
            lab.stop(proc)  # flushes the receivers' CSVs
    tunnel, access = profile_from("tunnel"), profile_from("lte")
    floor_ms = tunnel.delay_ms + access.delay_ms - tunnel.jitter_ms - access.jitter_ms
    for r in ("r1", "r2"):
        got = rows(lab, r)
        seqs = {int(row["seq"]) for row in got}
        assert len(seqs) >= 195, (r, len(seqs), dump(proxy.show()))
        delays = [(int(row["recv_ns"]) - int(row["send_ns"])) / 1e6 for row in got]
        # Both TCLinks are on the path: no packet is faster than their smallest delays.
        assert min(delays) >= floor_ms - 1, (r, min(delays))
        mean = tunnel.delay_ms + access.delay_ms
        assert abs(statistics.mean(delays) - mean) < 5, (r, statistics.mean(delays))
    entry = next(e for e in proxy.instance("mag")["mfc"] if e["group"] == GROUP)
    assert entry["source"] == SOURCE and entry["iif"] == "mag-up"
    assert entry["oifs"] == ["mag-down"]
