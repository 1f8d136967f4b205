"""PMIPv6 topologies: they build, route, carry multicast through the MAG proxies, and clean up."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from lab import clean
from lab.netns import wait_for
from lab.paths import PY
from topologies.network import Network
from topologies.spec import multi_lma, single_lma

GROUP = "ff0e::db8:77"


@pytest.fixture
def network(tmp_path):
    """Builds and starts a Network on demand; always stops it and checks nothing is left."""
    made: list[Network] = []

    def make(spec, **kw) -> Network:
        prefix = "pmlt" + uuid.uuid4().hex[:4]
        net = Network(spec, tmp_path / prefix, prefix=prefix, **kw)
        made.append(net)
        net.build()
        net.start()
        return net

    yield make
    for net in made:
        net.stop()
        assert clean.list_netns(net.prefix) == [], "namespaces left behind"
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert net.prefix not in links, "root-namespace links left behind"
        for proc in net.procs.values():
            assert proc.poll() is not None


def ping_all(net: Network) -> dict[tuple[str, str], bool]:
    """Every end node pings every other end node's home address (in parallel per node)."""
    nodes = net.spec.end_nodes()
    result = {}
    for a in nodes:
        targets = [b for b in nodes if b.name != a.name and net.attached.get(b.name)]
        script = " ".join(
            f"(ping -6 -c1 -W3 {b.address} >/dev/null && echo ok {b.name}) &" for b in targets
        )
        out = net.sh(a.name, script + " wait", check=False)
        for b in targets:
            result[(a.name, b.name)] = f"ok {b.name}" in out
    return result


@pytest.mark.parametrize("builder", [single_lma, multi_lma], ids=["single-lma", "multi-lma"])
def test_every_node_reaches_every_other_over_ipv6(network, builder):
    net = network(builder(access="lte", peering=True))
    reach = ping_all(net)
    failed = [pair for pair, ok in reach.items() if not ok]
    assert reach and not failed, f"unreachable: {failed}\n{net.spec.to_json()}"


def rtt_ms(net: Network, node: str, target: str, count: int = 40) -> float:
    net.sh(node, f"ping -6 -q -c 1 -W 3 {target}")  # neighbour discovery first: not a sample
    out = net.sh(node, f"ping -6 -q -c {count} -i 0.02 {target}")
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def drawn_delay(net: Network, a_if: str, b_if: str) -> float:
    for link in net.backend.describe()["links"]:
        names = {link["a"].split("/")[1], link["b"].split("/")[1]}
        if names == {a_if, b_if}:
            return link["delay_ms"]
    raise AssertionError(f"no link {a_if} <-> {b_if}")


def assert_delay(measured: float, expected: float, tol: float, what: str) -> None:
    assert abs(measured - expected) <= tol, (
        f"{what}: measured {measured:.2f} ms, expected {expected:.2f} ± {tol} ms"
    )


def test_link_round_trip_times_follow_table_i(network):
    net = network(multi_lma(access="lte", peering=True))
    # LTE access: 2 x 5 ms; the mean of 40 samples of +-3 ms uniform jitter has sd 0.4 ms.
    assert_delay(rtt_ms(net, "n11", "fe80::1%eth0"), 10.0, 1.5, "LTE access RTT")
    tunnel = drawn_delay(net, "t-lma1", "t-mag1")
    assert 20 <= tunnel <= 40
    assert_delay(rtt_ms(net, "mag1", "2001:db8:1:11::1", 20), 2 * tunnel, 3.0, "tunnel RTT")
    peering = drawn_delay(net, "p1m2l1", "p1m1l1")
    assert 5 <= peering <= 15
    assert_delay(rtt_ms(net, "mag1", "fe80::10:21%p1m2l1", 30), 2 * peering, 1.5, "peering RTT")
    backbone = drawn_delay(net, "bb-lma2", "bb-lma1")
    assert 40 <= backbone <= 60
    assert_delay(rtt_ms(net, "lma1", "2001:db8:2::2", 15), 2 * backbone, 6.0, "backbone RTT")


def test_umts_access_round_trip(network):
    net = network(single_lma(access="umts", peering=False, fixed_per_mag=1, mobile_per_mag=0))
    # 2 x 200 ms, +-50 ms uniform each way: sd of the mean of 20 samples is about 9 ms.
    assert_delay(rtt_ms(net, "n11", "fe80::1%eth0", 20), 400.0, 30.0, "UMTS access RTT")


@pytest.mark.parametrize("builder", [single_lma, multi_lma], ids=["single-lma", "multi-lma"])
def test_multicast_reaches_subscribed_mn_only(network, builder, tmp_path):
    net = network(builder(access="lte", peering=False))
    out = net.run_dir
    # mn21 (on MAG2) subscribes, n21 (also MAG2) does not; the source is n11 on MAG1.
    rx = net.popen(
        "mn21",
        [
            PY,
            "-m",
            "experiments.probe",
            "recv",
            "--group",
            GROUP,
            "--port",
            "5002",
            "--iface",
            "eth0",
            "--out",
            str(out / "mn21.csv"),
        ],
        "rx-mn21.log",
    )
    idle = net.popen(
        "n21",
        [
            PY,
            "-m",
            "experiments.probe",
            "recv",
            "--group",
            "ff0e::db8:78",
            "--port",
            "5002",
            "--iface",
            "eth0",
            "--out",
            str(out / "n21.csv"),
        ],
        "rx-n21.log",
    )
    spec = net.spec

    def subscribed() -> bool:
        inst = next(
            i for i in net.show("mag2")["instances"] if i["name"] == spec.instance_name(2, 1)
        )
        lma = net.show("lma1")["instances"][0]
        return (
            GROUP in inst["queriers"]["a-mn21"]["groups"]
            and GROUP in lma["queriers"]["t-mag2"]["groups"]
        )

    assert wait_for(subscribed, 10), net.show("mag2")
    tx = net.popen(
        "n11",
        [
            PY,
            "-m",
            "experiments.probe",
            "send",
            "--group",
            GROUP,
            "--port",
            "5002",
            "--source-if",
            "eth0",
            "--count",
            "50",
            "--rate",
            "100",
            "--out",
            str(out / "tx.csv"),
        ],
        "tx.log",
    )
    tx.wait(20)
    time.sleep(0.5)
    for proc in (rx, idle):
        proc.terminate()
        proc.wait(10)
    got = (out / "mn21.csv").read_text().splitlines()[1:]
    assert len(got) >= 49, f"mn21 got {len(got)} of 50"
    assert (out / "n21.csv").read_text().splitlines()[1:] == []
    # Through MAG1 (source's), the LMA, and MAG2: three router hops from a hop limit of 16.
    assert {int(line.split(",")[3]) for line in got} == {13}
