"""The testbed's proxy configurations are typed values from the spec, rendered once.

The peering flag is a field of the spec, the peering interfaces are the peering links'
ends each instance owns, and the timers (with the scenario's QRI) are a ``Timers`` value:
nothing travels as a name prefix or a string that is parsed back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.config import parse, render
from topologies.network import TESTBED_TIMERS, Network, ProxySettings
from topologies.spec import multi_lma, single_lma


def configs(spec, **proxy):
    net = Network(spec, Path("/nonexistent"), proxy=ProxySettings(**proxy))
    return {n.name: net.proxy_config(n.name) for n in spec.by_role("mag") + spec.by_role("lma")}


@pytest.mark.parametrize("peering", [False, True])
def test_peering_flag_decides_the_peering_interfaces(peering):
    cfg = configs(multi_lma(access="lte", peering=peering))
    mag1 = cfg["mag1"]
    assert [i.name for i in mag1.instances] == ["mag1_lma1", "mag1_lma2"]
    assert [i.table_id for i in mag1.instances] == [11, 12]
    if peering:
        # LMA1's instance on MAG1 peers with both instances of MAG2 and with MAG1's other one.
        assert mag1.instance("mag1_lma1").peerings == ("p1m1l2", "p1m2l1", "p1m2l2")
        assert mag1.instance("mag1_lma2").peerings == ("p2m1l1", "p2m2l1", "p2m2l2")
    else:
        assert all(i.peerings == () for i in mag1.instances)
    assert cfg["lma1"].instance("lma1").upstreams == ("core",)
    assert cfg["lma2"].instance("lma2").upstreams == ("bb-lma1",)


def test_rendered_config_reads_back_equal_with_the_scenario_qri():
    timers = replace(TESTBED_TIMERS, query_response_interval=0.1)
    for cfg in configs(single_lma(access="lte", peering=True), timers=timers).values():
        back = parse(render(cfg), "x")
        assert back == cfg
        assert {i.timers.query_response_interval for i in back.instances} == {0.1}
        assert back.protocol == "MLDv2"


def test_testbed_timers_are_rfc6636_with_a_near_zero_qri():
    assert TESTBED_TIMERS.query_response_interval == pytest.approx(0.010)
    assert TESTBED_TIMERS.query_interval == 60
    assert TESTBED_TIMERS.lmqt == pytest.approx(0.1)
